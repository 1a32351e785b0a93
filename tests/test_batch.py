"""Batch mode (SPEC §13) against the loopback fake's batch APIs (`tests.fake_batches`):
OpenAI's files and batches and Anthropic's message batches, through the official SDKs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest
from click.testing import CliRunner

from abharness.cli.main import cli
from abharness.providers.pricing import call_cost
from abharness.report.build import build_report
from abharness.report.markdown import render_markdown
from abharness.run.experiment import run_experiment
from abharness.store.batches import read_snapshot
from abharness.store.export import export_parquet
from abharness.store.queries import Results
from abharness.store.records import Usage

from .conftest import dict_rows, write
from .fake_server import FakeServer

REPO = Path(__file__).resolve().parents[1]
COUNTRIES = ["France", "Japan", "Peru", "Chile", "Kenya", "Nepal", "Oman", "Fiji"]


@pytest.fixture(autouse=True)
def key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_KEY", "k")


@pytest.fixture
def server():
    with FakeServer() as s:
        yield s


def project(
    root: Path, url: str, *, cases: int = 8, mode: str = "mode: batch, ", extra: str = ""
) -> Path:
    write(
        root / "prompts/q/v1.j2",
        "{% block user %}What is the capital of {{ country }}?{% endblock %}\n",
    )
    rows = "\n".join(
        f"  - {{id: c{i}, country: {COUNTRIES[i % len(COUNTRIES)]}}}" for i in range(cases)
    )
    poll = "batch: {poll_s: 0.05, max_poll_s: 0.2}"
    return write(
        root / "spec.yaml",
        f"""
name: batched
prompts_dir: prompts
prompt: q@1
baseline: gpt
defaults: {{{mode}temperature: 0, max_tokens: 8}}
providers:
  oa: {{type: openai, base_url: "{url}/v1", api_key_env: FAKE_KEY, batch_api: true,
        price_provider: openai, {poll}}}
  an: {{type: anthropic, base_url: "{url}", api_key_env: FAKE_KEY, batch_api: true,
        price_provider: anthropic, {poll}}}
arms:
  - {{id: gpt, provider: oa, model: gpt-4.1-mini}}
  - {{id: claude, provider: an, model: claude-haiku-4-5}}
cases:
{rows}
scorers:
  - {{type: contains, expected: "Paris"}}
max_error_rate: 1
{extra}
""",
    )


def calls(db: Path) -> list[dict]:
    return dict_rows(db)


@pytest.mark.slow
def test_a_two_arm_batch_run_stores_every_call_once_with_exact_usage_at_half_price(
    tmp_path: Path, server: FakeServer
) -> None:
    spec = project(tmp_path, server.url)
    db = tmp_path / "results/abharness.duckdb"
    out = run_experiment(spec, db=db, use_cache=False)
    assert out.status == "completed", out.failures
    rows = calls(db)
    assert len(rows) == 16 and {r["status"] for r in rows} == {"ok"}
    assert len({r["call_id"] for r in rows}) == 16
    # one batch per arm, every call sent once, under its call id
    assert server.batches.per_request() == {r["call_id"]: 1 for r in rows}
    assert len(server.batches.created) == 2
    for r in rows:
        req = next(
            b
            for b in server.batches.batches.values()
            for q in b.requests
            if q["custom_id"] == r["call_id"]
        )
        assert (req.kind == "openai") == (r["arm_id"] == "gpt")
        assert r["latency_ms"] is None and r["ttft_ms"] is None
        assert r["input_tokens"] and r["output_tokens"] and r["usage_source"] == "body"
        assert r["request_id"] and r["finish_reason"] in ("stop", "end_turn")
        live, _ = call_cost(
            Usage(input_tokens=r["input_tokens"], output_tokens=r["output_tokens"]),
            None,
            local=False,
            model="gpt-4.1-mini" if r["arm_id"] == "gpt" else "claude-haiku-4-5",
            provider_id="openai" if r["arm_id"] == "gpt" else "anthropic",
        )
        assert r["cost_usd"] == pytest.approx(float(live) / 2, rel=1e-9)
        assert r["price_source"].endswith("batch price")
        batch = json.loads(r["provider_metrics_json"])["batch"]
        assert batch["id"] == req.id and batch["generation"] == 1
        assert batch["turnaround_s"] is not None
    paris = [r for r in rows if r["case_id"] == "c0"]
    assert all(r["response_text"] == "Paris" for r in paris)
    with duckdb.connect(str(db), read_only=True) as con:
        batches = con.execute(
            "SELECT arm_id, status, request_count, provider_batch_id, collected_at IS NOT NULL "
            "FROM batches ORDER BY arm_id"
        ).fetchall()
    assert [(b[0], b[1], b[2], b[4]) for b in batches] == [
        ("claude", "ended", 8, True),
        ("gpt", "ended", 8, True),
    ]
    # analysts' Parquet carries the batches with the calls
    with Results(db) as results:
        written = export_parquet(results, tmp_path / "parquet")
    assert (written["batches"], written["batch_calls"]) == (2, 16)
    # the report says so and compares no latency; the cost still is
    with Results(db) as results:
        report = build_report(results, out.run_id)
    md = render_markdown(report)
    assert "## Batch mode" in md and "`claude` ran in **batch mode**" in md
    latency = next(c for c in report.comparisons if c.metric == "latency")
    assert (
        not latency.compared and latency.reason == "latency not measured: claude ran in batch mode"
    )
    assert next(c for c in report.comparisons if c.metric == "cost").compared


@pytest.mark.slow
def test_expired_and_retryable_requests_go_into_new_batches_at_most_twice(
    tmp_path: Path, server: FakeServer
) -> None:
    spec = project(tmp_path, server.url, cases=6)
    db = tmp_path / "results/abharness.duckdb"
    ids: dict[str, str] = {}  # call id -> "arm case"

    def outcome(kind: str, line: dict, generation: int) -> str:
        params = line.get("body") or line.get("params")
        country = params["messages"][-1]["content"].split("capital of ")[1].rstrip("?")
        name = ids[line["custom_id"]] = (
            f"{'gpt' if kind == 'openai' else 'claude'} c{COUNTRIES.index(country)}"
        )
        script = {
            "gpt c1": ["expired"] * 3,  # expired in every batch: an error at the end
            "gpt c2": ["expired"],  # once, then answered
            "gpt c3": ["error:500"],  # retryable, then answered
            "gpt c4": ["error:400"],  # not retryable: an error at once
            "gpt c5": ["missing"],  # no result line: sent again
            "claude c1": ["error:529"] * 3,
            "claude c2": ["expired"],
        }.get(name, [])
        return script[generation - 1] if generation <= len(script) else "ok"

    server.batches.outcome = outcome
    out = run_experiment(spec, db=db, use_cache=False)
    rows = {f"{r['arm_id']} {r['case_id']}": r for r in calls(db)}
    sent = {ids[c]: n for c, n in server.batches.per_request().items()}
    assert sent == {
        **{f"{arm} c{i}": 1 for arm in ("gpt", "claude") for i in range(6)},
        "gpt c1": 3,
        "gpt c2": 2,
        "gpt c3": 2,
        "gpt c5": 2,
        "claude c1": 3,
        "claude c2": 2,
    }
    assert out.status == "completed"
    for name, r in rows.items():
        assert r["attempts"] == sent[name], name
    errors = {
        n: (r["error_type"], r["error_message"]) for n, r in rows.items() if r["status"] != "ok"
    }
    assert set(errors) == {"gpt c1", "gpt c4", "claude c1"}
    assert errors["gpt c1"][0] == "timeout" and "batch_expired" in errors["gpt c1"][1]
    assert errors["gpt c4"][0] == "bad_request" and "scripted 400" in errors["gpt c4"][1]
    assert errors["claude c1"][0] == "server" and "scripted 529" in errors["claude c1"][1]
    earlier = json.loads(rows["gpt c3"]["attempt_errors_json"])
    assert [e["error_type"] for e in earlier] == ["server"] and "scripted 500" in earlier[0][
        "message"
    ]
    assert json.loads(rows["gpt c2"]["provider_metrics_json"])["batch"]["generation"] == 2
    assert rows["gpt c4"]["request_id"]  # the failed request's own id, from the error file


@pytest.mark.slow
def test_a_batch_that_fails_validation_is_an_error_naming_its_first_bad_line(
    tmp_path: Path, server: FakeServer
) -> None:
    server.batches.bad_line = 2
    spec = project(tmp_path, server.url, cases=3)
    db = tmp_path / "results/abharness.duckdb"
    run_experiment(spec, db=db, use_cache=False)
    rows = calls(db)
    assert {r["status"] for r in rows} == {"error"} and len(rows) == 6
    gpt = {r["error_message"] for r in rows if r["arm_id"] == "gpt"}
    claude = {r["error_message"] for r in rows if r["arm_id"] == "claude"}
    assert len(gpt) == 1 and "failed validation: line 2:" in gpt.pop()
    assert len(claude) == 1 and "requests.1.params.model: Field required" in claude.pop()
    assert {r["error_type"] for r in rows} == {"bad_request"}
    with duckdb.connect(str(db), read_only=True) as con:
        states = dict(con.execute("SELECT arm_id, status FROM batches").fetchall())
    assert states == {"gpt": "failed", "claude": "failed"}


def start(spec: Path, db: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "abharness", "run", str(spec), "--db", str(db), "--no-cache", *args],
        cwd=spec.parent,
        env={**os.environ, "PYTHONPATH": str(REPO / "src")},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(condition, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def staged_batches(db: Path) -> list[tuple]:
    """The batch ids the killed run had committed to its staging file."""
    (staging,) = (db.parent / "staging").glob("*.duckdb")
    with duckdb.connect(str(staging), read_only=True) as con:
        return con.execute("SELECT arm_id, provider_batch_id, status FROM batches").fetchall()


@pytest.mark.slow
def test_killed_while_polling_and_resumed_it_sends_nothing_new_but_the_expired(
    tmp_path: Path, server: FakeServer
) -> None:
    """kill -9 while the batches run; the resumed run polls the same batches, collects
    them, and sends again only the requests that expired."""
    server.batches.run_s = 2.0
    expired: set[str] = set()

    def outcome(kind: str, line: dict, generation: int) -> str:
        if generation == 1 and len(expired) < 3 and kind == "openai":
            expired.add(line["custom_id"])
            return "expired"
        return "ok"

    server.batches.outcome = outcome
    spec = project(tmp_path, server.url)
    db = tmp_path / "results/abharness.duckdb"
    proc = start(spec, db)
    try:
        wait_for(lambda: server.batches.status_calls >= 4)  # both submitted, being polled
    finally:
        proc.kill()
        proc.communicate()
    assert proc.returncode == -9
    first = list(server.batches.created)
    assert len(first) == 2
    assert sorted(b[1] for b in staged_batches(db)) == sorted(first)  # the ids were kept
    out = run_experiment(resume="last", db=db, use_cache=False)
    assert out.status == "completed", (out.failures, out.batches_running, out.not_made)
    new = server.batches.created[2:]
    assert len(new) == 1  # the expired requests, in one new batch
    assert {c for b, c in server.batches.sent if b == new[0]} == expired
    assert server.batches.per_request() == {
        c: 2 if c in expired else 1 for _, c in server.batches.sent
    }
    rows = calls(db)
    assert len(rows) == 16 and {r["status"] for r in rows} == {"ok"}
    assert all(r["attempts"] == (2 if r["call_id"] in expired else 1) for r in rows)


@pytest.mark.slow
def test_killed_between_the_providers_answer_and_writing_its_id_it_finds_the_batch(
    tmp_path: Path, server: FakeServer
) -> None:
    """The provider created the batches but the process died before it wrote their ids:
    resume finds them (OpenAI by the metadata it sent, Anthropic by time and size) and
    submits nothing."""
    server.batches.hold_create_s = 3.0  # the create call answers late
    spec = project(tmp_path, server.url)
    db = tmp_path / "results/abharness.duckdb"
    proc = start(spec, db)
    try:
        wait_for(lambda: len(server.batches.created) == 2)
        time.sleep(0.2)
    finally:
        proc.kill()
        proc.communicate()
    assert {b[2] for b in staged_batches(db)} == {"submitting"}
    assert {b[1] for b in staged_batches(db)} == {None}
    server.batches.hold_create_s = 0
    out = run_experiment(resume="last", db=db, use_cache=False)
    assert out.status == "completed"
    assert len(server.batches.created) == 2  # nothing submitted again
    assert set(server.batches.per_request().values()) == {1}
    rows = calls(db)
    assert len(rows) == 16 and {r["status"] for r in rows} == {"ok"}


@pytest.mark.slow
def test_ctrl_c_while_polling_says_the_batches_run_on_and_are_billed(
    tmp_path: Path, server: FakeServer
) -> None:
    server.batches.run_s = 30.0
    spec = project(tmp_path, server.url)
    db = tmp_path / "results/abharness.duckdb"
    proc = start(spec, db)
    wait_for(lambda: server.batches.status_calls >= 2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    flat = " ".join(err.split())
    assert "2 batches are still running at the provider, and billed" in flat
    assert "resume collects their results (it never sends their calls again)" in flat
    assert "abharness run --resume" in flat
    assert "gpt batch 1 (batch_" in flat and "claude batch 2 (msgbatch_" in flat
    listing = CliRunner().invoke(cli, ["batches", "--db", str(db)])
    assert listing.exit_code == 0, listing.output
    for batch_id in server.batches.created:
        line = next(x for x in listing.output.splitlines() if batch_id in x)
        assert ("in_progress" in line or "validating" in line) and line.rstrip("│ ").endswith("no")
    server.batches.run_s = 0.0
    out = run_experiment(resume="last", db=db, use_cache=False)
    assert out.status == "completed" and len(server.batches.created) == 2
    assert len(calls(db)) == 16


@pytest.mark.slow
def test_batches_lists_a_running_run_and_cancel_stops_its_batches(
    tmp_path: Path, server: FakeServer
) -> None:
    """While a run polls, `abharness batches` reads its snapshot (the staging file is
    locked), and `batches cancel RUN_ID` cancels at the provider: the running run then
    collects the cancelled requests as errors and ends."""
    server.batches.run_s = 60.0
    spec = project(tmp_path, server.url, cases=3)
    db = tmp_path / "results/abharness.duckdb"
    proc = start(spec, db)
    try:
        wait_for(lambda: list((db.parent / "staging").glob("*.duckdb")))
        (staging,) = (db.parent / "staging").glob("*.duckdb")
        run_id = staging.stem
        wait_for(lambda: [r.status for r in read_snapshot(staging)] == ["in_progress"] * 2)
        listing = CliRunner(env={"COLUMNS": "250"}).invoke(
            cli, ["batches", run_id, "--db", str(db)]
        )
        assert listing.exit_code == 0, listing.output
        assert listing.output.count("(running)") == 2, listing.output  # from the snapshot
        assert listing.output.count("in_progress") == 2, listing.output
        cancel = CliRunner().invoke(cli, ["batches", "cancel", run_id, "--db", str(db)])
        assert cancel.exit_code == 0, cancel.output
        assert "cancelled" in cancel.output
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    rows = calls(db)
    assert len(rows) == 6 and {r["status"] for r in rows} == {"error"}
    assert all("cancel" in r["error_message"] for r in rows)
    assert set(server.batches.per_request().values()) == {1}  # cancelled: not sent again
    with duckdb.connect(str(db), read_only=True) as con:
        assert {r[0] for r in con.execute("SELECT status FROM batches").fetchall()} == {"cancelled"}


@pytest.mark.parametrize(
    ("provider", "why"),
    [
        ("ol", "ollama has no batch API"),
        ("gw", "is not openai's own API, and its entry does not say batch_api: true"),
    ],
)
def test_validate_refuses_mode_batch_on_a_provider_without_a_batch_api_naming_the_arm(
    tmp_path: Path, provider: str, why: str
) -> None:
    spec = project(
        tmp_path,
        "http://127.0.0.1:9",
        mode="",
        extra="",
    )
    text = spec.read_text().replace(
        "  - {id: claude, provider: an, model: claude-haiku-4-5}",
        f"  - {{id: claude, provider: an, model: claude-haiku-4-5}}\n"
        f"  - {{id: cheap, provider: {provider}, model: m, mode: batch}}",
    )
    text = text.replace(
        "providers:\n",
        'providers:\n  ol: {type: ollama, base_url: "http://127.0.0.1:9"}\n'
        '  gw: {type: openai, base_url: "http://127.0.0.1:9/v1", api_key_env: FAKE_KEY}\n',
    )
    spec.write_text(text)
    result = CliRunner().invoke(cli, ["validate", str(spec), "--db", str(tmp_path / "x.duckdb")])
    assert result.exit_code == 1
    flat = " ".join(result.output.split())
    line = text.splitlines().index(
        f"  - {{id: cheap, provider: {provider}, model: m, mode: batch}}"
    )
    assert f"spec.yaml:{line + 1}: arms[2].mode: " in flat
    assert "arm cheap: mode: batch, but" in flat and why in flat
    # --batch alone asks for batch mode where it can be had: that arm runs live
    spec.write_text(text.replace(", mode: batch}", "}"))
    result = CliRunner().invoke(
        cli, ["validate", str(spec), "--batch", "--db", str(tmp_path / "x.duckdb")]
    )
    flat = " ".join(result.output.split())
    assert "warning: cheap runs live: " in flat and why in flat
    assert flat.count("(batch)") == 2


def test_a_composite_arm_cannot_be_batched(tmp_path: Path) -> None:
    spec = project(tmp_path, "http://127.0.0.1:9", mode="")
    text = spec.read_text().replace(
        "  - {id: claude, provider: an, model: claude-haiku-4-5}",
        "  - id: robust\n    mode: batch\n    route:\n      - {provider: oa, model: a}\n"
        "      - {provider: an, model: b}",
    )
    spec.write_text(text)
    result = CliRunner().invoke(cli, ["validate", str(spec), "--db", str(tmp_path / "x.duckdb")])
    assert result.exit_code == 1
    assert "a route arm runs live" in " ".join(result.output.split())


@pytest.mark.slow
def test_the_cost_cap_reserves_every_batched_calls_worst_case_before_submitting(
    tmp_path: Path, server: FakeServer
) -> None:
    """With room for about half the calls' worst case, half are submitted and the rest
    are refused before anything is sent."""
    spec = project(tmp_path, server.url, mode="mode: batch, ", extra="max_cost_usd: 0.00009")
    db = tmp_path / "results/abharness.duckdb"
    out = run_experiment(spec, db=db, use_cache=False)
    assert out.status == "budget_exhausted"
    rows = calls(db)
    sent = server.batches.per_request()
    budget = [r for r in rows if r["error_type"] == "budget"]
    assert budget and len(sent) == 16 - len(budget)
    assert not {r["call_id"] for r in budget} & set(sent)  # refused before submission
    assert sum(r["cost_usd"] or 0 for r in rows) <= 0.00009


@pytest.mark.slow
def test_raw_completion_goes_to_the_completions_batch_endpoint_and_resumes_elsewhere(
    tmp_path: Path, server: FakeServer
) -> None:
    """A raw prompt template on a custom base URL goes to /v1/completions; a staging file
    carried to another machine (another folder) is resumed there."""
    spec = project(tmp_path, server.url, cases=2)
    write(
        tmp_path / "prompts/q/v1.j2",
        "{% block prompt %}Q: What is the capital of {{ country }}?\nA:{% endblock %}\n",
    )
    server.batches.run_s = 30.0
    db = tmp_path / "results/abharness.duckdb"
    proc = start(spec, db)
    try:
        wait_for(lambda: server.batches.status_calls >= 3)
    finally:
        proc.kill()
        proc.communicate()
    openai_batch = next(b for b in server.batches.batches.values() if b.kind == "openai")
    assert openai_batch.endpoint == "/v1/completions"
    assert {r["url"] for r in openai_batch.requests} == {"/v1/completions"}
    other = tmp_path / "elsewhere/results"
    other.mkdir(parents=True)
    (staging,) = (db.parent / "staging").glob("*.duckdb")
    (other / "staging").mkdir()
    for path in staging.parent.glob(staging.name + "*"):
        path.rename(other / "staging" / path.name)
    server.batches.run_s = 0.0
    out = run_experiment(resume="last", db=other / "abharness.duckdb", use_cache=False)
    assert out.status == "completed"
    assert len(server.batches.created) == 2
    rows = calls(other / "abharness.duckdb")
    assert len(rows) == 4 and {r["status"] for r in rows} == {"ok"}


@pytest.mark.slow
def test_make_nightly_with_batch_passes_and_its_page_says_latency_was_not_measured(
    tmp_path: Path, server: FakeServer
) -> None:
    """Two nights of a fake-backed nightly spec through `make nightly`: the first with
    NIGHTLY_ARGS=--batch, the second with `mode: batch` in the spec itself. Both pass;
    the latency gates are not evaluated for the batch arms, and the page says why."""
    folder = tmp_path / "nightly"
    spec = project(
        folder,
        server.url,
        mode="",
        extra="gates: {score_drop: significant, latency_p50_increase_pct: 25, "
        "cost_increase_pct: 10}",
    )
    env = {
        **os.environ,
        "ABHARNESS_DB": str(tmp_path / "results/abharness.duckdb"),
        "ABHARNESS_REPORTS": str(tmp_path / "reports"),
    }

    def night(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                "make",
                "-s",
                "-C",
                str(REPO),
                "-o",
                ".venv/.installed",
                "nightly",
                f"NIGHTLY={folder}",
                *args,
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )

    first = night("NIGHTLY_ARGS=--batch")
    assert first.returncode == 0, first.stdout + first.stderr
    spec.write_text(spec.read_text().replace("defaults: {", "defaults: {mode: batch, "))
    second = night()
    out = " ".join((second.stdout + second.stderr).split())
    assert second.returncode == 0, out
    assert "no regression" in out
    assert "NOT EVALUATED batched claude latency_p50_increase_pct: latency not measured: " in out
    assert "claude ran in batch mode" in out
    assert len(server.batches.created) == 4  # two batches a night, every call batched
    (page,) = (tmp_path / "reports/nightly").glob("*/index.html")
    text = " ".join(page.read_text().split())
    assert "batch mode: gpt, claude ran through the provider&#x27;s batch API" in text
    assert "latency is not measured for batch calls" in text
