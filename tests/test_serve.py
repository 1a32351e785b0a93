"""`abharness serve` (SPEC §16) in process: the official `openai` client against the
gateway's ASGI app (Starlette's TestClient is an httpx client), the loopback fake as
the upstream. The real uvicorn process, SIGTERM and kill -9 are in
tests/test_serve_process.py."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import duckdb
import openai
import pytest
from starlette.testclient import TestClient

from abharness.errors import TemplateError
from abharness.run.assign import Assigner, SubjectKey
from abharness.run.online import OnlineSession
from abharness.serve.app import Gateway, create_app
from abharness.serve.keys import ClientKeys, RateLimiter
from abharness.spec.load import load_spec

from .fake_server import FakeServer, Fault

KEY = "k1-secret-never-stored"


def serve_spec(root: Path, upstream: str, serve: str, *, shadow_url: str | None = None) -> Path:
    (root / "prompts").mkdir(parents=True, exist_ok=True)
    text = (
        "name: live\nprompts_dir: prompts\nproviders:\n"
        f"  up: {{type: openai, base_url: '{upstream}/v1', api_key_env: FAKE_KEY,\n"
        "       price: {input_per_mtok: 1, output_per_mtok: 2}}\n"
        f"  side: {{type: openai, base_url: '{shadow_url or upstream}/v1', api_key_env: FAKE_KEY}}\n"
        "arms:\n"
        "  - {id: control, provider: up, model: model-a}\n"
        "  - {id: treatment, provider: up, model: model-b}\n"
        "  - {id: candidate, provider: side, model: model-c}\n"
        "scorers:\n"
        "  - {type: regex, pattern: 'Lima|Paris'}\n"
        f"serve:\n{serve}"
    )
    (root / "live.yaml").write_text(text, encoding="utf-8")
    return root / "live.yaml"


@pytest.fixture(autouse=True)
def env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_KEY", "upstream-key")
    monkeypatch.setenv("SERVE_KEYS", f"{KEY},another-key")


@pytest.fixture
def upstream() -> Iterator[FakeServer]:
    with FakeServer() as s:
        yield s


class Served:
    def __init__(self, spec: Path, db: Path) -> None:
        loaded = load_spec(spec)
        assert loaded.experiment.serve is not None
        self.session = OnlineSession(loaded, db)
        self.gateway = Gateway(self.session, ClientKeys.from_env(loaded.experiment.serve.keys_env))
        self.http = TestClient(create_app(self.gateway))
        self.db = db

    def openai(self, key: str = KEY) -> openai.OpenAI:
        return openai.OpenAI(
            base_url="http://testserver/v1", api_key=key, http_client=self.http, max_retries=0
        )

    def rows(self, sql: str) -> list[tuple]:
        con = duckdb.connect(str(self.db), read_only=True)
        try:
            return con.execute(sql).fetchall()
        finally:
            con.close()


@pytest.fixture
def served(tmp_path: Path, upstream: FakeServer) -> Iterator[Served]:
    spec = serve_spec(
        tmp_path,
        upstream.url,
        "  split: {control: 50, treatment: 50}\n  shadow: [candidate]\n  fallback: [control]\n"
        "  keys_env: SERVE_KEYS\n  rate_limit: {rpm: 600}\n  max_body_bytes: 4096\n",
    )
    s = Served(spec, tmp_path / "results/ab.duckdb")
    with s.http:
        yield s


CHAT = [{"role": "user", "content": "What is the capital of Peru?"}]


def test_the_openai_client_gets_an_answer_with_the_call_id_and_the_arm(served: Served) -> None:
    client = served.openai()
    raw = client.chat.completions.with_raw_response.create(model="live", messages=CHAT, user="u1")
    reply = raw.parse()
    arm = raw.headers["x-abharness-arm"]
    assert arm in ("control", "treatment")
    assert reply.choices[0].message.content == "Lima"
    assert reply.usage is not None and reply.usage.completion_tokens == 1
    assert client.models.list().data[0].id == "live"
    text = client.completions.create(model="live", prompt="Once upon", user="u1")
    assert text.choices[0].text == "Hello from the fake server"
    served.http.__exit__(None, None, None)  # stop: written and merged
    calls = served.rows(
        "SELECT call_id, arm_id, assignment, status, subject_hash FROM calls ORDER BY started_at"
    )
    mine = [c for c in calls if c[0] == reply.id]
    assert mine and mine[0][1] == arm and mine[0][2] == "assigned"
    assert {c[2] for c in calls} == {"assigned", "shadow"}
    assert all(c[4] == SubjectKey.for_db(served.db).hash("u1") != "u1" for c in calls)
    (kind, status) = served.rows("SELECT kind, status FROM runs")[0]
    assert (kind, status) == ("online", "completed")


def test_streaming_through_the_openai_client(served: Served) -> None:
    stream = served.openai().chat.completions.create(
        model="live",
        messages=CHAT,
        stream=True,
        stream_options={"include_usage": True},
        user="u2",
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Lima"
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0
    assert len({c.id for c in chunks}) == 1


def test_refusals_are_openai_shaped_with_the_right_status(served: Served) -> None:
    with pytest.raises(openai.AuthenticationError) as no_key:
        served.openai("wrong-key").chat.completions.create(model="live", messages=CHAT)
    assert no_key.value.status_code == 401
    assert no_key.value.body["code"] == "invalid_api_key"  # type: ignore[index]
    assert served.http.get("/v1/models").status_code == 401
    auth = {"Authorization": f"Bearer {KEY}"}
    bad = served.http.post("/v1/chat/completions", content=b"{not json", headers=auth)
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_json"
    big = served.http.post("/v1/chat/completions", content=b"x" * 5000, headers=auth)
    assert big.status_code == 413 and big.json()["error"]["type"] == "invalid_request_error"
    empty = served.http.post("/v1/chat/completions", json={"model": "live"}, headers=auth)
    assert empty.status_code == 400 and "'messages'" in empty.json()["error"]["message"]
    image = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]
    parts = served.http.post("/v1/chat/completions", json={"messages": image}, headers=auth)
    assert parts.status_code == 400 and "only text" in parts.json()["error"]["message"]


def test_a_key_past_its_rate_gets_429_with_retry_after(
    tmp_path: Path, upstream: FakeServer
) -> None:
    spec = serve_spec(
        tmp_path,
        upstream.url,
        "  split: {control: 1}\n  keys_env: SERVE_KEYS\n  rate_limit: {rpm: 2}\n",
    )
    s = Served(spec, tmp_path / "ab.duckdb")
    with s.http:
        client = s.openai()
        for _ in range(2):
            client.chat.completions.create(model="live", messages=CHAT)
        with pytest.raises(openai.RateLimitError) as limited:
            client.chat.completions.create(model="live", messages=CHAT)
        assert int(limited.value.response.headers["retry-after"]) >= 1
        # another key has its own budget
        s.openai("another-key").chat.completions.create(model="live", messages=CHAT)


def test_feedback_lands_in_scores_and_in_the_metrics(served: Served) -> None:
    client = served.openai()
    reply = client.chat.completions.create(model="live", messages=CHAT, user="u3")
    auth = {"Authorization": f"Bearer {KEY}"}
    ok = served.http.post(
        "/v1/feedback", json={"id": reply.id, "score": 0.25, "comment": "terse"}, headers=auth
    )
    assert ok.status_code == 200
    again = served.http.post("/v1/feedback", json={"id": reply.id, "score": 1}, headers=auth)
    assert again.status_code == 200  # the latest replaces the earlier one
    assert (
        served.http.post("/v1/feedback", json={"id": "nope", "score": 1}, headers=auth).status_code
        == 404
    )
    out_of_range = served.http.post("/v1/feedback", json={"id": reply.id, "score": 2}, headers=auth)
    assert out_of_range.status_code == 400
    shadow = 'abharness_serve_calls_total{arm="candidate",assignment="shadow",status="ok"}'
    deadline = time.monotonic() + 10
    while shadow not in (metrics := served.http.get("/metrics").text):  # the shadow goes on
        assert time.monotonic() < deadline, metrics
        time.sleep(0.05)
    assert 'abharness_serve_feedback_total{status="200"} 2.0' in metrics
    assert 'abharness_serve_requests_total{endpoint="chat",status="200"} 1.0' in metrics
    assert "abharness_serve_call_latency_seconds_bucket" in metrics
    served.http.__exit__(None, None, None)
    assert served.rows("SELECT call_id, value, detail FROM scores WHERE scorer = 'feedback'") == [
        (reply.id, 1.0, "")
    ]


@pytest.mark.parametrize("stream", [False, True])
def test_the_assigned_arm_failing_the_fallback_answers(
    tmp_path: Path, upstream: FakeServer, stream: bool
) -> None:
    dead = FakeServer()
    dead_url = dead.url
    dead.stop()  # nothing listens there: every call to it fails to connect
    spec = serve_spec(
        tmp_path,
        upstream.url,
        "  split: {candidate: 1}\n  fallback: [control]\n",
        shadow_url=dead_url,
    )
    s = Served(spec, tmp_path / "ab.duckdb")
    with s.http:
        raw = s.openai().chat.completions.with_raw_response.create(
            model="live", messages=CHAT, stream=stream
        )
        assert raw.headers["x-abharness-arm"] == "control"
        if stream:  # failed before its first piece: the fallback's stream, from the start
            chunks = list(raw.parse())
            assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Lima"
            answered_id = chunks[0].id
        else:
            assert raw.parse().choices[0].message.content == "Lima"
            answered_id = raw.parse().id
    rows = s.rows(
        "SELECT arm_id, assignment, status, error_type, parent_call_id, call_id FROM calls"
    )
    failed = next(r for r in rows if r[1] == "assigned")
    fallback = next(r for r in rows if r[1] == "fallback")
    assert failed[:4] == ("candidate", "assigned", "error", "connection")
    assert fallback[:3] == ("control", "fallback", "ok") and fallback[4] == failed[5]
    assert answered_id == fallback[5]


@pytest.mark.slow
def test_a_failing_or_slow_shadow_never_reaches_the_client(
    tmp_path: Path, upstream: FakeServer
) -> None:
    with FakeServer() as side:
        side.fault_fn = lambda entry: Fault(status=400, delay_s=1.5)  # not retried
        spec = serve_spec(
            tmp_path,
            upstream.url,
            "  split: {control: 1}\n  shadow: [candidate]\n",
            shadow_url=side.url,
        )
        s = Served(spec, tmp_path / "ab.duckdb")
        with s.http:
            began = time.perf_counter()
            raw = s.openai().chat.completions.with_raw_response.create(model="live", messages=CHAT)
            took = time.perf_counter() - began
            assert raw.headers["x-abharness-arm"] == "control" and took < 1.0
        rows = s.rows("SELECT arm_id, assignment, status FROM calls ORDER BY arm_id")
        assert rows == [("candidate", "shadow", "error"), ("control", "assigned", "ok")]


def test_a_subject_keeps_its_arm_and_the_split_follows_the_weights() -> None:
    a = Assigner("live", {"control": 70, "treatment": 30})
    b = Assigner("live", {"control": 70, "treatment": 30})  # a restart
    arms = [a.arm_for(f"user-{i}") for i in range(4000)]
    assert arms == [b.arm_for(f"user-{i}") for i in range(4000)]
    assert 0.67 < arms.count("control") / 4000 < 0.73
    other = Assigner("another-experiment", {"control": 70, "treatment": 30})
    assert arms != [other.arm_for(f"user-{i}") for i in range(4000)]  # independent draws
    per_request = Assigner("live", {"control": 1, "treatment": 1}, sticky="none")
    assert len({per_request.arm_for("same-user") for _ in range(200)}) == 2


def test_the_subject_hash_is_keyed_and_stable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    one = SubjectKey.for_db(tmp_path / "ab.duckdb")
    assert (tmp_path / "subject.key").stat().st_mode & 0o777 == 0o600
    assert one.hash("alice") == SubjectKey.for_db(tmp_path / "ab.duckdb").hash("alice")
    monkeypatch.setenv("ABHARNESS_SUBJECT_KEY", "another key")
    assert SubjectKey.for_db(tmp_path / "ab.duckdb").hash("alice") != one.hash("alice")
    assert one.hash(None) is None


@pytest.mark.parametrize(
    ("ticks", "expected"),
    [([0, 0, 0], [0.0, 0.0, 30.0]), ([0, 0, 30], [0.0, 0.0, 0.0]), ([0, 0, 15], [0.0, 0.0, 15.0])],
)
def test_the_rate_limiter_is_a_token_bucket(ticks: list[float], expected: list[float]) -> None:
    limiter = RateLimiter(2)  # 2 a minute: one token every 30 s
    assert [limiter.admit(b"k", now=t) for t in ticks] == pytest.approx(expected)


def test_serve_refuses_bad_input_in_one_line_before_listening(
    tmp_path: Path, upstream: FakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from abharness.entry import cli

    spec = serve_spec(tmp_path, upstream.url, "  split: {control: 1}\n  keys_env: NO_SUCH_KEYS\n")
    monkeypatch.delenv("NO_SUCH_KEYS", raising=False)
    out = CliRunner().invoke(cli, ["serve", str(spec), "--db", str(tmp_path / "ab.duckdb")])
    assert out.exit_code == 1
    assert "serve.keys_env: the environment variable NO_SUCH_KEYS holds no keys" in out.output
    plain = tmp_path / "plain.yaml"
    plain.write_text(
        spec.read_text().split("serve:")[0] + "cases: [{id: a, x: 1}]\nprompt: p\n",
        encoding="utf-8",
    )
    out = CliRunner().invoke(cli, ["serve", str(plain), "--db", str(tmp_path / "ab.duckdb")])
    assert out.exit_code == 1 and "no serve: section" in out.output
    assert not (tmp_path / "ab.duckdb").exists() and not (tmp_path / "staging").exists()


@pytest.mark.slow
def test_stopping_during_a_periodic_merge_still_ends_the_run_completed(
    tmp_path: Path, upstream: FakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A periodic merge runs in the writer's thread. The stop used to cancel its wait for
    it and go on, so a merge could run beside the final update on the same connection
    (seen once in the full suite: the 1,000-request session merged as 'running'). This
    stops in the middle of a slowed merge; the race itself is timing-dependent, so this
    guards the outcome rather than reproducing it every time."""
    from abharness.run.writer import WRITE_INTERVAL_S
    from abharness.store.db import Store

    slow = Store.flush_into

    def flush_slowly(self: Store, main: Path) -> dict[str, int]:
        time.sleep(0.5)
        return slow(self, main)

    monkeypatch.setattr(Store, "flush_into", flush_slowly)
    spec = serve_spec(
        tmp_path, upstream.url, "  split: {control: 50, treatment: 50}\n  merge_every_s: 0.1\n"
    )
    s = Served(spec, tmp_path / "results/ab.duckdb")
    with s.http:
        s.openai().chat.completions.create(model="live", messages=CHAT, user="u1")
        # the call's rows written (nothing left for the writer to do at the stop, which
        # is what let the stop pass a merge still running), and a merge under way
        time.sleep(WRITE_INTERVAL_S + 0.3)
    assert s.rows("SELECT status, total_calls, finished_at IS NOT NULL FROM runs") == [
        ("completed", 1, True)
    ]


def test_an_llm_judge_grades_live_answers_in_the_background(tmp_path: Path) -> None:
    """The spec's llm_judge grades every answered call (assigned and shadow) with a call
    of its own, after the answer went out; the report never counts it as an arm's; a
    rubric that needs a dataset's column is refused before serving."""
    with (
        FakeServer() as up,
        FakeServer(latency_s=1.0) as slow,
        FakeServer(lambda body: "Score: 8", latency_s=0.5) as judge,
    ):
        # the shadow ends after the gateway began to stop: its grading is still waited for
        spec = serve_spec(
            tmp_path, up.url, "  split: {control: 1}\n  shadow: [candidate]\n", shadow_url=slow.url
        )
        text = spec.read_text().replace(
            "providers:\n",
            f"providers:\n  judge: {{type: openai, base_url: '{judge.url}/v1', "
            "api_key_env: FAKE_KEY}\n",
        )
        rubric = "  - {type: llm_judge, provider: judge, model: j-1, rubric: rubric@1}\n"
        spec.write_text(text.replace("scorers:\n", "scorers:\n" + rubric))
        (tmp_path / "prompts/rubric").mkdir(parents=True)
        (tmp_path / "prompts/rubric/v1.j2").write_text(
            "{% block user %}Asked: {{ prompt }}. Grade: {{ response }}{% endblock %}\n"
        )
        s = Served(spec, tmp_path / "ab.duckdb")
        with s.http:
            began = time.perf_counter()
            reply = s.openai().chat.completions.create(model="live", messages=CHAT, user="u9")
            assert time.perf_counter() - began < 0.5  # the judge's 0.5 s is not the client's
        graded = s.rows(
            "SELECT c.assignment, s.value, j.arm_id, j.assignment, j.subject_hash = c.subject_hash "
            "FROM calls c JOIN scores s ON s.call_id = c.call_id AND s.scorer = 'llm_judge' "
            "JOIN calls j ON j.judged_call_id = c.call_id ORDER BY c.assignment"
        )
        assert graded == [
            ("assigned", 0.8, "judge-llm_judge", None, True),
            ("shadow", 0.8, "judge-llm_judge", None, True),
        ]
        assert (
            "Asked: What is the capital of Peru?. Grade: Lima"
            in judge.log[0].body["messages"][0]["content"]
        )
        assert s.rows("SELECT call_id FROM calls WHERE assignment = 'assigned'") == [(reply.id,)]
        judged = (
            'abharness_serve_calls_total{arm="judge-llm_judge",assignment="judge",status="ok"} 2.0'
        )
        assert judged in s.gateway.metrics.exposition().decode()

        (tmp_path / "prompts/rubric/v1.j2").write_text(
            "{% block user %}Expected {{ answer }}; got {{ response }}{% endblock %}\n"
        )
        with pytest.raises(TemplateError, match="cannot grade live traffic.*answer"):
            Served(spec, tmp_path / "ab.duckdb")


def test_a_route_moves_on_only_while_nothing_has_reached_the_client(tmp_path: Path) -> None:
    """A route's first model cuts its stream after its pieces: a client that did not ask
    for a stream gets the second model's answer; one that streams already holds the
    first model's pieces, so the route stops there and the stream ends in an error."""
    with FakeServer(lambda body: "one two three", chunk_delay_s=0.05) as up:
        up.fault_fn = lambda entry: Fault(stream="cut") if entry.body["model"] == "m-a" else None
        (tmp_path / "prompts").mkdir()
        spec = tmp_path / "live.yaml"
        spec.write_text(
            "name: live\nprompts_dir: prompts\nproviders:\n"
            f"  up: {{type: openai, base_url: '{up.url}/v1', api_key_env: FAKE_KEY}}\n"
            "arms:\n  - id: robust\n    route:\n"
            "      - {provider: up, model: m-a}\n      - {provider: up, model: m-b}\n"
            "serve:\n  split: {robust: 1}\n",
            encoding="utf-8",
        )
        s = Served(spec, tmp_path / "ab.duckdb")
        with s.http:
            client = s.openai()
            whole = client.chat.completions.create(model="live", messages=CHAT)
            assert whole.choices[0].message.content == "one two three"
            got = ""
            with pytest.raises(openai.APIError, match="stream ended before the final chunk"):
                for chunk in client.chat.completions.create(
                    model="live", messages=CHAT, stream=True
                ):
                    got += (chunk.choices[0].delta.content or "") if chunk.choices else ""
            assert got == "one two three"
        assert [e.body["model"] for e in up.log] == ["m-a", "m-b", "m-a"]
    calls = s.rows("SELECT status, served_by, attempts FROM calls ORDER BY started_at")
    assert calls == [("ok", "up:m-b", 2), ("error", None, 1)]


def test_the_days_cost_cap_refuses_with_429_naming_it(tmp_path: Path, upstream: FakeServer) -> None:
    """Each call reserves its worst case (its prompt and 256 output tokens at 1 and 2 USD
    per million: 0.000526) and then costs 0.000015: under 0.00055 a day the third one
    no longer fits, and is refused before it is sent."""
    spec = serve_spec(tmp_path, upstream.url, "  split: {control: 1}\n")
    spec.write_text(spec.read_text().replace("serve:\n", "max_cost_usd: 0.00055\nserve:\n"))
    s = Served(spec, tmp_path / "ab.duckdb")
    with s.http:
        client = s.openai()
        for _ in range(2):
            client.chat.completions.create(model="live", messages=CHAT)
        with pytest.raises(openai.RateLimitError, match="max_cost_usd=0.00055 would be") as refused:
            client.chat.completions.create(model="live", messages=CHAT)
        assert refused.value.code == "daily_cost_cap_reached"
    assert len(upstream.log) == 2  # the refused call was never sent
    assert s.rows("SELECT status, error_type FROM calls ORDER BY started_at")[2] == (
        "error",
        "budget",
    )
