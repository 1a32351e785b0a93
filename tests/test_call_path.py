"""Every call, arm or judge, through one path with a truthful record, against the
loopback fake server speaking the real protocols (issue: one call path).

Each test here failed before its fix: empty and cut streams stored as ``ok``; a judge
on its own endpoint crashing the run or ignoring its concurrency; raw prompts sent to
chat; request ids, served models and attempt errors dropped; misleading connection
errors; a dead endpoint taking minutes to give up.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from abharness.cli.main import cli
from abharness.errors import ConnectionError_, OtherCallError, ServerError
from abharness.providers.base import ProviderRequest
from abharness.run.experiment import run_experiment

from .conftest import dict_rows, make_provider, write
from .fake_server import FakeServer, Fault


@pytest.fixture
def server() -> Iterator[FakeServer]:
    with FakeServer() as s:
        yield s


@pytest.fixture(autouse=True)
def keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_KEY", "test-key")


def rows(db: Path, sql: str = "SELECT * FROM calls ORDER BY arm_id, case_id") -> list[dict]:
    return dict_rows(db, sql)


def provider(kind: str, url: str, **options) -> object:
    """`kind` "openai-direct": the OpenAI provider with ``transport: direct``."""
    if kind == "openai-direct":
        kind, options = "openai", {**options, "transport": "direct"}
    base = f"{url}/v1" if kind == "openai" else url
    return make_provider(kind, "fake", base_url=base, **options)


CHAT = ProviderRequest(model="m", messages=({"role": "user", "content": "capital of Peru?"},))


@pytest.mark.parametrize("kind", ["openai", "openai-direct", "anthropic"])
@pytest.mark.parametrize("mode", ["empty", "cut"])
async def test_an_empty_or_cut_stream_is_a_server_error(
    server: FakeServer, kind: str, mode: str
) -> None:
    server.faults.append(Fault(stream=mode))
    p = provider(kind, server.url)
    try:
        with pytest.raises(ServerError, match="stream ended before the final chunk"):
            await p.generate(CHAT)
        assert (await p.generate(CHAT)).text == "Lima"  # the next, whole stream is fine
    finally:
        await p.aclose()


@pytest.mark.parametrize("kind", ["openai", "openai-direct"])
async def test_an_error_event_in_a_stream_is_the_servers_message(
    server: FakeServer, kind: str
) -> None:
    """Both transports read OpenAI's error event the same way: its message, after the
    pieces that came before it were handed on."""
    server.faults.append(Fault(stream="error"))
    p = provider(kind, server.url)
    try:
        with pytest.raises(OtherCallError, match="APIError: the model is overloaded"):
            await p.generate(CHAT)
    finally:
        await p.aclose()


def spec(root: Path, server: FakeServer, body: str, cases: int = 4) -> Path:
    write(
        root / "prompts/cap/v1.j2",
        "{% block user %}What is the capital of {{ country }}?{% endblock %}\n",
    )
    write(
        root / "prompts/raw/v1.j2",
        "{% block prompt %}Q: What is the capital of {{ country }}?\nA:{% endblock %}\n",
    )
    write(
        root / "prompts/rubric/v1.j2",
        "{% block user %}Grade this answer: {{ response }}. Score: ?{% endblock %}\n",
    )
    countries = ["France", "Japan", "Peru", "Chile", "Spain", "Italy"][:cases]
    write(
        root / "data.jsonl",
        "".join(json.dumps({"id": c, "country": c, "answer": c}) + "\n" for c in countries),
    )
    return write(
        root / "spec.yaml",
        f"""
        name: call-path
        dataset: data.jsonl
        prompts_dir: prompts
        defaults: {{temperature: 0, seed: 1, max_tokens: 8, timeout_s: 5}}
        providers:
          arms-ep: {{type: openai, base_url: "{server.url}/v1", api_key_env: FAKE_KEY, price: {{input_per_mtok: 1, output_per_mtok: 2}}}}
          judge-ep: {{type: anthropic, base_url: "{server.url}", api_key_env: FAKE_KEY, concurrency: 1, price: {{input_per_mtok: 3, output_per_mtok: 4}}}}
        {body}
        """,
    )


JUDGED = """
arms:
  - {id: a, provider: arms-ep, model: m1, prompt: cap@1}
  - {id: b, provider: arms-ep, model: m2, prompt: cap@1}
scorers:
  - {type: llm_judge, name: judge, provider: judge-ep, model: claude-haiku-4-5, rubric: rubric@1}
"""


@pytest.mark.slow
def test_a_judge_on_its_own_endpoint_keeps_its_concurrency_and_is_counted(
    tmp_path: Path, server: FakeServer
) -> None:
    server.latency_s = 0.02
    server.reply = lambda body: "Score: 8" if "Grade" in json.dumps(body) else "I think it is Paris"
    judge_failures = {"n": 0}

    def faults(entry):  # the judge's first two requests fail for good (400)
        if entry.path == "/v1/messages" and judge_failures["n"] < 2:
            judge_failures["n"] += 1
            return Fault(status=400)
        return None

    server.fault_fn = faults
    in_flight, peak = 0, 0
    import threading

    lock = threading.Lock()
    real = server.next_fault

    def counting(entry):  # track concurrent judge requests as the server sees them
        nonlocal in_flight, peak
        fault = real(entry)
        if entry.path == "/v1/messages":
            with lock:
                in_flight += 1
                peak = max(peak, in_flight)
            import time as _t

            _t.sleep(0.03)
            with lock:
                in_flight -= 1
        return fault

    server.next_fault = counting  # type: ignore[method-assign]
    path = spec(tmp_path, server, JUDGED.replace("\n", "\n        "), cases=6)
    result = CliRunner().invoke(cli, ["run", str(path), "--db", str(tmp_path / "r.duckdb")])
    out = result.output
    assert "24 calls (12 by judges)" in out.replace("\n", " "), out
    assert "2 errors" in out and "2 × bad_request" in out
    assert result.exit_code == 2  # judge failures count against max_error_rate (0)
    assert peak == 1  # the judge endpoint's concurrency: 1, though 12 arm calls wanted it
    calls = rows(tmp_path / "r.duckdb")
    assert sum(r["judged_call_id"] is not None for r in calls) == 12
    stored = sum(r["cost_usd"] or 0 for r in calls)  # judges' calls cost too
    judged = sum(r["cost_usd"] or 0 for r in calls if r["judged_call_id"] is not None)
    assert judged > 0 and f"{stored:.4f} USD" in out  # the summary prints what was stored
    scores = rows(tmp_path / "r.duckdb", "SELECT * FROM scores")
    assert sum(s["detail"].startswith("scorer error: judge call failed") for s in scores) == 2


@pytest.mark.slow
def test_a_judge_on_the_arms_own_endpoint_does_not_deadlock(
    tmp_path: Path, server: FakeServer
) -> None:
    server.reply = lambda body: "Score: 9" if "Grade" in json.dumps(body) else "Paris"
    body = JUDGED.replace(
        "provider: judge-ep, model: claude-haiku-4-5", "provider: arms-ep, model: m1"
    )
    path = spec(tmp_path, server, body.replace("\n", "\n        "), cases=6)
    text = path.read_text().replace(
        "api_key_env: FAKE_KEY, price", "api_key_env: FAKE_KEY, concurrency: 1, price", 1
    )
    path.write_text(text)
    out = run_experiment(path, db=tmp_path / "r.duckdb", use_cache=False)
    assert out.stats.calls == 24 and out.stats.ok == 24


def test_a_raw_prompt_goes_to_completions_on_a_compatible_server(
    tmp_path: Path, server: FakeServer
) -> None:
    body = """
arms:
  - {id: raw, provider: arms-ep, model: base-model, prompt: raw@1}
  - {id: raw-plain, provider: arms-ep, model: base-model, prompt: raw@1, stream: false}
  - {id: chat, provider: arms-ep, model: base-model, prompt: cap@1}
"""
    path = spec(tmp_path, server, body.replace("\n", "\n        "))
    validate = CliRunner().invoke(cli, ["validate", str(path), "--db", str(tmp_path / "r.duckdb")])
    assert validate.exit_code == 0 and "completions" in validate.output, validate.output
    out = run_experiment(path, db=tmp_path / "r.duckdb")
    assert out.stats.ok == 12
    paths = {(e.body["model"], e.path, "prompt" in e.body) for e in server.log}
    assert paths == {
        ("base-model", "/v1/completions", True),
        ("base-model", "/v1/chat/completions", False),
    }
    by_arm = {r["arm_id"]: r for r in rows(tmp_path / "r.duckdb")}
    assert by_arm["raw"]["response_text"] in ("Paris", "Tokyo", "Lima", "I am not sure")
    assert by_arm["raw"]["finish_reason"] == "stop" and by_arm["raw"]["ttft_ms"] is not None
    assert by_arm["raw-plain"]["input_tokens"] is not None


def test_chat_only_option_keeps_raw_prompts_on_chat(server: FakeServer) -> None:
    p = provider("openai", server.url, api="chat")
    assert p.api_for(ProviderRequest(model="m", prompt="Q: x\nA:")) == "chat"
    official = make_provider("openai")
    assert official.api_for(ProviderRequest(model="gpt-4.1-mini", prompt="x")) == "chat"
    assert official.api_for(ProviderRequest(model="davinci-002", prompt="x")) == "completions"


def test_request_id_served_model_and_each_failed_attempt_are_stored(
    tmp_path: Path, server: FakeServer
) -> None:
    server.served_model = "default-model"  # a server that serves its default for any name
    server.faults.extend([Fault(status=500), Fault(stream="cut")])
    body = """
arms:
  - {id: a, provider: arms-ep, model: asked-model, prompt: cap@1}
"""
    path = spec(tmp_path, server, body.replace("\n", "\n        "), cases=1)
    out = run_experiment(path, db=tmp_path / "r.duckdb", use_cache=False)
    (r,) = rows(tmp_path / "r.duckdb")
    assert out.stats.ok == 1 and r["attempts"] == 3
    assert r["request_id"].startswith("req_chatcmpl-")
    assert r["served_model"] == "default-model"
    attempts = json.loads(r["attempt_errors_json"])
    assert [(a["attempt"], a["error_type"]) for a in attempts] == [(1, "server"), (2, "server")]
    assert attempts[0]["status_code"] == 500
    assert "stream ended before the final chunk" in attempts[1]["message"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("kind", ["openai", "openai-direct", "anthropic"])
async def test_a_refused_connection_says_so_and_where(kind: str) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    p = provider(kind, url)
    try:
        with pytest.raises(ConnectionError_) as caught:
            await p.generate(CHAT)
    finally:
        await p.aclose()
    assert str(caught.value).startswith(f"connection refused: {url}")


@pytest.mark.parametrize("transport", ["aiohttp", "direct"])
async def test_a_wrong_base_url_names_the_url_and_the_fix(
    server: FakeServer, transport: str
) -> None:
    p = make_provider("openai", "fake", base_url=f"{server.url}/wrong", transport=transport)
    try:
        with pytest.raises(Exception) as caught:
            await p.generate(CHAT)
    finally:
        await p.aclose()
    message = str(caught.value)
    assert "HTTP 404" in message and f"{server.url}/wrong/chat/completions" in message
    assert "check base_url" in message


@pytest.mark.parametrize("kind", ["openai", "openai-direct"])
async def test_a_reset_keep_alive_connection_is_a_connection_error(kind: str) -> None:
    """A server that accepts and closes without answering: 'connection', not 'timeout'."""
    import threading

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            conn.recv(65536)
            conn.close()  # drop the request: what a restarting server does

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    p = provider(kind, f"http://127.0.0.1:{listener.getsockname()[1]}")
    try:
        with pytest.raises(ConnectionError_, match="connection reset by the server"):
            await p.generate(CHAT)
    finally:
        await p.aclose()
        stop.set()
        thread.join(2)
        listener.close()


@pytest.mark.slow
def test_a_model_answering_500_fails_its_queued_calls_fast(
    tmp_path: Path, server: FakeServer
) -> None:
    server.fault_fn = lambda entry: Fault(status=500)
    body = """
arms:
  - {id: a, provider: arms-ep, model: m, prompt: cap@1}
  - {id: b, provider: arms-ep, model: m, prompt: cap@1, temperature: 0.5}
"""
    path = spec(tmp_path, server, body.replace("\n", "\n        "), cases=6)
    result = CliRunner().invoke(cli, ["run", str(path), "--db", str(tmp_path / "r.duckdb")])
    # every call ended because the model's circuit went down, none by using up its own
    # retries: the run is incomplete (exit 4), resumable, not "errors above the rate"
    assert result.exit_code == 4, result.output
    assert "incomplete: 12 calls were never made" in " ".join(result.output.split())
    calls = rows(tmp_path / "r.duckdb")
    assert len(calls) == 12 and all(r["error_type"] == "server" for r in calls)
    assert all(r["unfinished"] for r in calls)
    # threshold (5) failures open the circuit, one probe fails: the rest are not called
    assert len(server.log) <= 5 + 16 + 1  # at most what was already on the wire
    not_called = [r for r in calls if r["attempts"] == 0]
    down = f"not called: model m on {server.url}/v1 down: 5 calls in a row failed (HTTP 500"
    assert not_called and all(r["error_message"].startswith(down) for r in not_called)
    assert "further calls not made" in result.output
