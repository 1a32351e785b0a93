"""The runner under faults, against the loopback fake server: every call accounted for
exactly once, attempts equal to what the server saw, Retry-After honoured, the cost cap
never crossed, the cache, resume after kill -9 and after Ctrl-C, a locked database."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest
from click.testing import CliRunner

from abharness.cli.main import cli
from abharness.run.experiment import run_experiment
from abharness.store.db import Store
from abharness.store.journal import read_journal

from .conftest import write
from .fake_server import FakeServer, Fault, Logged

pytestmark = pytest.mark.slow  # subprocesses and full runs: the whole suite runs them
REPO = Path(__file__).resolve().parents[1]


def query(db: Path, sql: str, params: list | None = None) -> list[tuple]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(sql, params or []).fetchall()
    finally:
        con.close()


def key_of(entry: Logged) -> tuple[str, str]:
    """(arm, country) of a request the fake server saw."""
    text = entry.body["messages"][-1]["content"]
    country = text.rsplit("capital of ", 1)[1].split("?")[0]
    return ("few-shot" if "Portugal" in text else "zero-shot", country)


@pytest.fixture
def server() -> Iterator[FakeServer]:
    with FakeServer() as s:
        yield s


def make_spec(
    root: Path,
    server: FakeServer,
    n_cases: int,
    extra: str = "",
    provider: str = "",
    timeout_s: float = 2.0,
) -> Path:
    write(
        root / "prompts/cap/v1.j2",
        """
        {% block user %}{% block examples %}{% endblock %}What is the capital of {{ country }}?{% endblock %}
        """,
    )
    write(
        root / "prompts/cap/v2.j2",
        """
        {% extends "cap/v1.j2" %}{% block examples %}Lisbon is the capital of Portugal. {% endblock %}
        """,
    )
    write(
        root / "data.jsonl",
        "".join(
            json.dumps({"id": f"c{i:03d}", "country": f"Land{i}", "answer": "x"}) + "\n"
            for i in range(n_cases)
        ),
    )
    return write(
        root / "spec.yaml",
        f"""
        name: faults
        dataset: data.jsonl
        prompts_dir: prompts
        baseline: zero-shot
        defaults: {{temperature: 0, seed: 1, max_tokens: 8, timeout_s: {timeout_s}}}
        providers:
          fake: {{type: openai, base_url: "{server.url}/v1", api_key_env: FAKE_KEY, price_provider: openai, rpm: 60000, {provider}}}
        arms:
          - {{id: zero-shot, provider: fake, model: gpt-4.1-mini, prompt: cap@1}}
          - {{id: few-shot, provider: fake, model: gpt-4.1-mini, prompt: cap@2}}
        {extra}
        """,
    )


@pytest.fixture(autouse=True)
def fake_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_KEY", "test-key")


def test_fault_injected_run_accounts_for_every_call_exactly_once(
    tmp_path: Path, server: FakeServer
) -> None:
    rng = random.Random(7)
    hangs = 3

    def faults(entry: Logged) -> Fault | None:
        nonlocal hangs
        r = rng.random()
        if r < 0.2:
            return Fault(429, {"retry-after": "0.05"})
        if r < 0.3:
            return Fault(500)
        if r < 0.32 and hangs:
            hangs -= 1
            return Fault(hang=True)
        return None

    server.fault_fn = faults
    spec = make_spec(tmp_path, server, 60, extra="max_error_rate: 0.1")
    out = run_experiment(spec, db=tmp_path / "r.duckdb", use_cache=False)
    rows = query(out.db, "SELECT arm_id, case_id, status, error_type, attempts FROM calls")
    assert len(rows) == len({(r[0], r[1]) for r in rows}) == 120
    requests = Counter(key_of(e) for e in server.log)
    db_attempts = {(arm, f"Land{int(case[1:])}"): attempts for arm, case, _, _, attempts in rows}
    assert dict(requests) == db_attempts  # attempts equal the server's log, key by key
    answered = Counter(key_of(e) for e in server.log if e.status == 200 and e.text)
    assert max(answered.values()) == 1  # no key answered twice: no duplicate call
    assert sum(1 for r in rows if r[2] == "ok") == len(answered)
    by_key: dict[tuple[str, str], list[Logged]] = defaultdict(list)
    for e in server.log:
        by_key[key_of(e)].append(e)
    for entries in by_key.values():
        for before, after in zip(entries, entries[1:], strict=False):
            if before.status == 429:
                assert after.at - before.at >= 0.05  # never sooner than Retry-After
    assert hangs == 0 and out.stats.attempts == len(server.log)


def test_cost_cap_is_never_exceeded(tmp_path: Path, server: FakeServer) -> None:
    price = "price: {input_per_mtok: 1000, output_per_mtok: 1000}"  # $0.001 per token
    spec = make_spec(
        tmp_path, server, 20, extra="max_cost_usd: 0.15", provider=f"concurrency: 2, {price}"
    )
    out = run_experiment(spec, db=tmp_path / "r.duckdb", use_cache=False)
    spent = query(out.db, "SELECT sum(cost_usd) FROM calls")[0][0]
    assert spent <= 0.15
    assert out.status == "budget_exhausted"
    budget = query(out.db, "SELECT count(*), max(attempts) FROM calls WHERE error_type = 'budget'")[
        0
    ]
    assert budget[0] > 0 and budget[1] == 0
    made = query(out.db, "SELECT count(*) FROM calls WHERE attempts > 0")[0][0]
    assert made == len(server.log) and made + budget[0] == 40
    assert query(out.db, "SELECT status FROM runs") == [("budget_exhausted",)]


def test_cache_hits_cost_nothing_and_are_not_called(tmp_path: Path, server: FakeServer) -> None:
    spec = make_spec(tmp_path, server, 5)
    first = run_experiment(spec, db=tmp_path / "r.duckdb")
    assert first.stats.cache_hits == 0 and len(server.log) == 10
    second = run_experiment(spec, db=tmp_path / "r.duckdb")
    assert second.stats.cache_hits == 10 and len(server.log) == 10  # nothing called again
    hits = query(
        second.db,
        "SELECT count(*), sum(cost_usd), count(latency_ms), min(input_tokens) FROM calls "
        "WHERE run_id = ? AND cache_hit",
        [second.run_id],
    )
    assert hits == [(10, 0.0, 0, hits[0][3])] and hits[0][3] > 0
    assert query(second.db, "SELECT cached_calls FROM runs WHERE run_id = ?", [second.run_id]) == [
        (10,)
    ]
    summary = query(
        second.db,
        "SELECT latency_p50_ms, cache_hits FROM arm_summary WHERE run_id = ?",
        [second.run_id],
    )
    assert summary == [(None, 5), (None, 5)]  # latency statistics exclude hits
    run_experiment(spec, db=tmp_path / "r.duckdb", use_cache=False)
    assert len(server.log) == 20


def test_sampling_without_seed_is_not_cached(tmp_path: Path, server: FakeServer) -> None:
    spec = make_spec(tmp_path, server, 3)
    spec.write_text(spec.read_text().replace("temperature: 0, seed: 1,", "temperature: 0.7,"))
    run_experiment(spec, db=tmp_path / "r.duckdb")
    run_experiment(spec, db=tmp_path / "r.duckdb")
    assert len(server.log) == 12


def run_cli_subprocess(spec: Path, db: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "abharness", "run", str(spec), "--db", str(db), "--no-cache"],
        cwd=spec.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO / "src")},
    )


def wait_for_requests(server: FakeServer, n: int, limit_s: float = 30) -> None:
    deadline = time.monotonic() + limit_s
    while len(server.log) < n:
        assert time.monotonic() < deadline, "the run never got going"
        time.sleep(0.05)


def test_kill_9_then_resume_makes_every_key_exactly_once(tmp_path: Path) -> None:
    with FakeServer(latency_s=0.05) as server:
        spec = make_spec(tmp_path, server, 100, provider="concurrency: 2")  # ~5 s of calls
        db = tmp_path / "r.duckdb"
        proc = run_cli_subprocess(spec, db)
        wait_for_requests(server, 30)
        time.sleep(0.5)
        proc.kill()
        proc.wait()
        (staging,) = (tmp_path / "staging").glob("*.duckdb")
        journaled, _ = read_journal(staging)  # finished, and perhaps not yet in the store
        stored = query(staging, "SELECT call_id, arm_id, case_id FROM calls")
        finished = {(arm, f"Land{int(case[1:])}") for _, arm, case in stored} | {
            (c.arm_id, f"Land{int(c.case_id[1:])}") for c in journaled.values()
        }
        assert 0 < len(finished) < 200
        before = len(server.log)
        out = run_experiment(None, db=db, resume="last", use_cache=False)
        assert out.status == "completed" and out.run_id == staging.stem and not staging.exists()
        again = {key_of(e) for e in server.log[before:]}
        assert not again & finished  # no finished key requested again
        rows = query(db, "SELECT arm_id, case_id, count(*) FROM calls GROUP BY ALL")
        assert len(rows) == 200 and {r[2] for r in rows} == {1}
        assert query(db, "SELECT status, error_calls FROM runs") == [("completed", 0)]


def test_ctrl_c_stops_saves_and_resumes(tmp_path: Path) -> None:
    with FakeServer(latency_s=0.05) as server:
        spec = make_spec(tmp_path, server, 40, provider="concurrency: 2")
        db = tmp_path / "r.duckdb"
        proc = run_cli_subprocess(spec, db)
        wait_for_requests(server, 10)
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=30)
        assert proc.returncode == 130, output
        assert "abharness run --resume" in output
        ((status, run_id),) = query(db, "SELECT status, run_id FROM runs")
        done = query(db, "SELECT count(*) FROM calls")[0][0]
        assert status == "interrupted" and 0 < done < 80
        before = len(server.log)
        result = CliRunner().invoke(cli, ["run", "--resume", run_id, "--db", str(db), "--no-cache"])
        assert result.exit_code == 0, result.output
        assert len(server.log) - before == 80 - done
        assert query(db, "SELECT count(*), count(DISTINCT call_id) FROM calls") == [(80, 80)]
        assert query(db, "SELECT status FROM runs") == [("completed",)]


def test_a_store_that_cannot_be_written_stops_the_run_and_it_resumes(
    tmp_path: Path, server: FakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 1,400 calls and 700 cases: more records than the writer's queue holds, so a
    # writer that died quietly would leave the run waiting on that queue for ever.
    spec = make_spec(tmp_path, server, 700, provider="concurrency: 32")
    db = tmp_path / "r.duckdb"
    inserts = 0
    insert_calls = Store.insert_calls

    def disk_full_after_one_batch(self: Store, records: list) -> int:
        nonlocal inserts
        inserts += 1
        if inserts > 1:
            raise duckdb.IOException("could not write file: No space left on device")
        return insert_calls(self, records)

    monkeypatch.setattr(Store, "insert_calls", disk_full_after_one_batch)
    done: list = []
    thread = threading.Thread(
        target=lambda: done.append(
            CliRunner().invoke(cli, ["run", str(spec), "--db", str(db), "--no-cache"])
        ),
        daemon=True,
    )
    thread.start()
    thread.join(60)
    assert done, "the run hung after its store failed"
    (result,) = done
    assert result.exit_code == 5, result.output  # the machine refused: documented exit 5
    assert "could not write to the run's staging file" in result.output
    assert "the disk is full" in result.output
    assert "abharness run --resume" in result.output
    assert len(server.log) < 1400  # it stopped calling, rather than calling into the void
    (staging,) = (tmp_path / "staging").glob("*.duckdb")
    assert query(staging, "SELECT status FROM runs") == [("running",)]
    kept = query(staging, "SELECT count(*) FROM calls")[0][0]
    assert 0 < kept < 1400

    journaled, scored = read_journal(staging)
    saved = {i for i in journaled if i in scored}  # finished after the store failed
    assert len(saved) > kept

    monkeypatch.setattr(Store, "insert_calls", insert_calls)  # space freed
    out = run_experiment(None, db=db, resume="last", use_cache=False)
    assert out.status == "completed" and out.resumed_skipped == len(saved)
    assert query(db, "SELECT count(*), count(DISTINCT call_id) FROM calls") == [(1400, 1400)]
    answered = Counter(key_of(e) for e in server.log if e.status == 200 and e.text)
    assert sum(n - 1 for n in answered.values()) <= 32  # paid twice: only calls in flight


def test_an_analysts_open_database_does_not_break_the_run(
    tmp_path: Path, server: FakeServer
) -> None:
    spec = make_spec(tmp_path, server, 5)
    db = tmp_path / "r.duckdb"
    run_experiment(spec, db=db)  # the database exists, with one run
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import duckdb, time; c = duckdb.connect({str(db)!r}); "
            "print('open', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "open"
        out = run_experiment(spec, db=db, use_cache=False, merge_attempts=2)
        assert out.status == "completed" and out.stats.ok == 10
        assert not out.merge.merged and "abharness merge" in out.merge.message
        assert any("not checked" in w for w in out.warnings)
    finally:
        holder.kill()
        holder.wait()
    result = CliRunner().invoke(cli, ["merge", "--db", str(db)])
    assert result.exit_code == 0 and "merged" in result.output
    assert query(db, "SELECT count(*) FROM runs") == [(2,)]
    assert CliRunner().invoke(cli, ["merge", "--db", str(db)]).output.strip() == "nothing to merge"


def test_dry_run_projects_costs_and_calls_nothing(tmp_path: Path, server: FakeServer) -> None:
    spec = make_spec(tmp_path, server, 4)
    result = CliRunner().invoke(
        cli, ["run", str(spec), "--dry-run", "--db", str(tmp_path / "r.duckdb")]
    )
    assert result.exit_code == 0, result.output
    assert "no call made" in result.output and "total" in result.output
    assert server.log == [] and not (tmp_path / "r.duckdb").exists()
