"""Endpoints and models that fail, over real loopback HTTP: a server that accepts
connections and never answers ends its arm in seconds, a broken model never stops a
healthy one on the same base URL, and a refused port is a `connection` error to the
last call."""

from __future__ import annotations

import json
import socket
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest

from abharness.run.experiment import run_experiment

from .conftest import write
from .fake_server import FakeServer, Fault, Logged


@pytest.fixture(autouse=True)
def keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_KEY", "test-key")


@pytest.fixture
def black_hole() -> Iterator[str]:
    """A port that completes the TCP handshake (the kernel's backlog) and never answers:
    nothing ever calls accept(), so no byte comes back."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1024)
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/v1"
    finally:
        listener.close()


def spec(root: Path, arms: str, providers: str, cases: int, defaults: str = "") -> Path:
    write(root / "prompts/q/v1.j2", "{% block user %}Question {{ id }}?{% endblock %}\n")
    lines = "\n".join(f"  - {{id: c{i:03d}}}" for i in range(cases))
    return write(
        root / "spec.yaml",
        f"""
name: circuits
prompts_dir: prompts
prompt: q@1
defaults: {{temperature: 0, max_tokens: 8, timeout_s: 0.5{defaults}}}
providers:
{providers}
arms:
{arms}
cases:
{lines}
max_error_rate: 1
""",
    )


def calls(db: Path) -> list[dict]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        cur = con.execute("SELECT * FROM calls ORDER BY arm_id, case_id")
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
    finally:
        con.close()


@pytest.mark.slow
def test_a_black_hole_endpoint_ends_its_arm_in_seconds(tmp_path: Path, black_hole: str) -> None:
    """Before: a timeout cleared the breaker and kept calls one at a time, so 200 calls
    with timeout_s 10 made 0 progress in 600 s. Now five silent calls open the circuit
    and the failed probe fails the rest: about 6 × timeout_s, whatever the count."""
    path = spec(
        tmp_path,
        "  - {id: a, provider: hole, model: m}",
        f'  hole: {{type: openai, base_url: "{black_hole}", api_key_env: FAKE_KEY}}',
        cases=200,
    )
    started = time.monotonic()
    out = run_experiment(path, db=tmp_path / "r.duckdb", use_cache=False)
    took = time.monotonic() - started
    assert took < 20, took  # 6 × 0.5 s of silence, the cool-down, and set-up
    rows = calls(tmp_path / "r.duckdb")
    assert len(rows) == 200 and {r["error_type"] for r in rows} == {"timeout"}
    silent = f"no answer in 0.5 s from {black_hole}"
    assert sum(r["attempts"] for r in rows) <= 8  # five, the probe, and retries in flight
    assert all(silent in r["error_message"] for r in rows)
    assert sum(r["attempts"] == 0 for r in rows) >= 190
    assert out.failures and f"endpoint {black_hole} down" in out.failures[0]


@pytest.mark.slow
def test_a_broken_model_never_stops_a_healthy_one_on_the_same_endpoint(tmp_path: Path) -> None:
    """Before: five cut streams from one model opened the circuit of the whole base URL
    and the healthy model's calls were not made."""

    def cut_the_broken_model(entry: Logged) -> Fault | None:
        return Fault(stream="cut") if entry.body.get("model") == "broken" else None

    with FakeServer() as server:
        server.fault_fn = cut_the_broken_model
        path = spec(
            tmp_path,
            "  - {id: healthy, provider: gw, model: good}\n  - {id: sick, provider: gw, model: broken}",
            f'  gw: {{type: openai, base_url: "{server.url}/v1", api_key_env: FAKE_KEY}}',
            cases=40,
        )
        out = run_experiment(path, db=tmp_path / "r.duckdb", use_cache=False)
    rows = calls(tmp_path / "r.duckdb")
    by_arm = Counter((r["arm_id"], r["status"]) for r in rows)
    assert by_arm[("healthy", "ok")] == 40
    assert by_arm[("sick", "error")] == 40
    sick = [r for r in rows if r["arm_id"] == "sick"]
    assert {r["error_type"] for r in sick} == {"server"}
    # its concurrency was halved down to 1 first (cut streams in company may be overload),
    # then five failing alone opened its circuit: stopped, not retried 40 × 5 times
    assert sum(r["attempts"] == 0 for r in sick) >= 15
    assert sum(r["attempts"] for r in sick) < 80
    assert any(
        line.startswith("model broken on") and "→ 1 in force" in line for line in out.concurrency
    )
    down = f"model broken on {server.url}/v1 down"
    assert [line for line in out.failures if down in line and line.startswith("sick:")]
    assert not [line for line in out.failures if line.startswith("healthy")]


def test_a_refused_port_is_a_connection_error_to_the_last_call(tmp_path: Path) -> None:
    """Before: once the breaker tripped, the calls not made were typed 'server'."""
    port = socket.socket()
    port.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{port.getsockname()[1]}/v1"
    port.close()  # nothing listens: connections are refused
    path = spec(
        tmp_path,
        "  - {id: a, provider: gone, model: m}",
        f'  gone: {{type: openai, base_url: "{url}", api_key_env: FAKE_KEY}}',
        cases=30,
    )
    run_experiment(path, db=tmp_path / "r.duckdb", use_cache=False)
    rows = calls(tmp_path / "r.duckdb")
    assert {r["error_type"] for r in rows} == {"connection"}
    not_made = [r for r in rows if r["attempts"] == 0]
    assert not_made and all("connection refused" in r["error_message"] for r in not_made)
    errors = [json.loads(r["attempt_errors_json"]) for r in rows if r["attempts"]]
    assert all(e["error_type"] == "connection" for es in errors for e in es)


@pytest.mark.slow
def test_a_server_killed_mid_run_ends_incomplete_and_resume_finishes_it(tmp_path: Path) -> None:
    """Before: the run was 'completed' with 133 of 196 calls never made, those counted
    as '134 × server' errors, and the exit was 2 as if the model had failed."""
    from click.testing import CliRunner

    from abharness.cli.main import cli

    server = FakeServer(latency_s=0.02).start()
    port = int(server.url.rsplit(":", 1)[1])
    path = spec(
        tmp_path,
        "  - {id: a, provider: srv, model: m}\n  - {id: b, provider: srv, model: n}",
        f'  srv: {{type: openai, base_url: "{server.url}/v1", api_key_env: FAKE_KEY, concurrency: 4}}',
        cases=100,
        defaults=", seed: 1",
    ).read_text()
    (tmp_path / "spec.yaml").write_text(path.replace("max_error_rate: 1", "max_error_rate: 0"))

    def stop_after(entry: Logged) -> Fault | None:
        if len(server.log) == 60:
            import threading

            threading.Thread(target=server.kill, daemon=True).start()  # the server dies
        # nothing after the 60th is answered, however long the kill takes under load
        return Fault(hang=True) if len(server.log) > 60 else None

    server.fault_fn = stop_after
    db = tmp_path / "r.duckdb"
    result = CliRunner().invoke(cli, ["run", str(tmp_path / "spec.yaml"), "--db", str(db)])
    text = " ".join(result.output.split())
    assert result.exit_code == 4, result.output  # incomplete: its own code, not 2
    assert "incomplete" in text and "never made" in text and "--resume" in text
    rows = calls(db)
    con = duckdb.connect(str(db), read_only=True)
    status, errors, not_made = con.execute(
        "SELECT status, error_calls, not_made_calls FROM runs"
    ).fetchone()
    con.close()
    assert status == "incomplete"
    assert errors == 0  # the calls the dead server never answered are not errors
    assert not_made == sum(1 for r in rows if r["status"] == "error") > 100
    assert {r["error_type"] for r in rows if r["status"] == "error"} <= {"connection", "timeout"}
    with FakeServer(port=port) as again:
        out = run_experiment(None, db=db, resume="last", use_cache=False)
        assert out.status == "completed" and out.errors == 0 and out.not_made == 0
        assert len(again.log) == not_made
    assert len(calls(db)) == 200 and all(r["status"] == "ok" for r in calls(db))


@pytest.mark.slow
def test_a_nightly_whose_endpoint_is_gone_exits_4_and_says_how_to_resume(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from abharness.cli.main import cli

    port = socket.socket()
    port.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{port.getsockname()[1]}/v1"
    port.close()
    (tmp_path / "nightly").mkdir()
    path = spec(
        tmp_path,
        "  - {id: a, provider: gone, model: m}",
        f'  gone: {{type: openai, base_url: "{url}", api_key_env: FAKE_KEY}}',
        cases=20,
    )
    path.rename(tmp_path / "nightly/gone.yaml")
    (tmp_path / "nightly/gone.yaml").write_text(
        (tmp_path / "nightly/gone.yaml")
        .read_text()
        .replace("prompts_dir: prompts", "prompts_dir: ../prompts")
    )
    result = CliRunner().invoke(
        cli, ["nightly", str(tmp_path / "nightly"), "--db", str(tmp_path / "r.duckdb")]
    )
    text = " ".join(result.output.split())
    assert result.exit_code == 4, result.output
    assert "incomplete: 20 calls never made" in text and "abharness run --resume" in text
    assert "a run is incomplete" in text
