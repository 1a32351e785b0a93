"""A run that is stopped or killed loses nothing it paid for: SIGTERM is Ctrl-C (drain,
save, resume command, exit 130, nothing paid twice), and after ``kill -9`` the calls
paid twice on resume are at most the calls that were in flight (the journal)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import duckdb
import pytest

from abharness.run.experiment import run_experiment
from abharness.store.journal import journal_files, read_journal

from .conftest import write
from .fake_server import FakeServer, Fault, Logged, prompt_text

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def fake_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_KEY", "test-key")


def query(db: Path, sql: str) -> list[tuple]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def make_spec(
    root: Path, url: str, cases: int, concurrency: int, extra: str = "", timeout_s: float = 10
) -> Path:
    write(
        root / "prompts/q/v1.j2", "{% block user %}What is the capital of {{ id }}?{% endblock %}\n"
    )
    write(
        root / "data.jsonl", "".join(json.dumps({"id": f"c{i:03d}"}) + "\n" for i in range(cases))
    )
    return write(
        root / "spec.yaml",
        f"""
name: durability
dataset: data.jsonl
prompts_dir: prompts
prompt: q@1
defaults: {{temperature: 0, max_tokens: 8, timeout_s: {timeout_s}}}
providers:
  fake: {{type: openai, base_url: "{url}/v1", api_key_env: FAKE_KEY, concurrency: {concurrency}}}
arms:
  - {{id: a, provider: fake, model: m-a}}
  - {{id: b, provider: fake, model: m-b}}
{extra}
""",
    )


def start(spec: Path, db: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "abharness", "run", str(spec), "--db", str(db), "--no-cache"],
        cwd=spec.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO / "src")},
    )


def wait_for(server: FakeServer, n: int, limit_s: float = 60) -> None:
    deadline = time.monotonic() + limit_s
    while len(server.log) < n:
        assert time.monotonic() < deadline, "the run never got going"
        time.sleep(0.02)


def key(entry: Logged) -> tuple[str, str]:
    return entry.body["model"], prompt_text(entry.body)


def paid(server: FakeServer, model_prefix: str = "m-") -> Counter[tuple[str, str]]:
    """Requests the server answered in full, by (model, prompt)."""
    return Counter(
        key(e)
        for e in server.log
        if e.status == 200 and e.text and key(e)[0].startswith(model_prefix)
    )


def test_sigterm_drains_saves_and_resumes_with_nothing_paid_twice(tmp_path: Path) -> None:
    """Before: exit 143, nothing printed, staging left 'running', answered calls lost
    and paid again."""
    with FakeServer(latency_s=0.05) as server:
        spec = make_spec(tmp_path, server.url, 100, concurrency=4)
        db = tmp_path / "r.duckdb"
        proc = start(spec, db)
        wait_for(server, 30)
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
        assert proc.returncode == 130, output
        assert "Traceback" not in output
        assert "abharness run --resume" in output
        ((status, run_id),) = query(db, "SELECT status, run_id FROM runs")
        done = query(db, "SELECT count(*) FROM calls")[0][0]
        assert status == "interrupted" and 0 < done < 200
        out = run_experiment(None, db=db, resume=run_id, use_cache=False)
        assert out.status == "completed"
        assert query(db, "SELECT count(*), count(DISTINCT call_id) FROM calls") == [(200, 200)]
        assert max(paid(server).values()) == 1  # drained: nothing paid twice


def test_a_second_sigterm_stops_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # calls in flight would be given 60 s after the first signal, and take 120 s
    monkeypatch.setenv("ABHARNESS_STOP_GRACE_S", "60")
    with FakeServer() as server:
        # the first call answers at once (the endpoint is then trusted with more)
        server.fault_fn = lambda entry: Fault(delay_s=120) if len(server.log) > 1 else None
        spec = make_spec(tmp_path, server.url, 20, concurrency=4, timeout_s=300)
        proc = start(spec, tmp_path / "r.duckdb")
        wait_for(server, 5)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        stopped = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=120)
        assert proc.returncode == 130, output
        assert "second stop request: cancelling the calls in flight" in output
        # it waited neither for the calls nor for the first signal's 60 s of grace (what
        # it took is the merge and the report)
        assert time.monotonic() - stopped < 30, output
        assert "Traceback" not in output and "--resume" in output


@pytest.mark.parametrize("after", [25, 120])
def test_kill_9_pays_twice_at_most_the_calls_in_flight(tmp_path: Path, after: int) -> None:
    """Before: the writer held up to 256 rows or a second of them; 82 of 2,000 answered
    calls were paid again after kill -9."""
    concurrency = 8
    with FakeServer(latency_s=0.02) as server:
        spec = make_spec(tmp_path, server.url, 200, concurrency=concurrency)
        db = tmp_path / "r.duckdb"
        proc = start(spec, db)
        wait_for(server, after)
        proc.kill()
        proc.wait()
        (staging,) = (tmp_path / "staging").glob("*.duckdb")
        assert journal_files(staging)
        out = run_experiment(None, db=db, resume="last", use_cache=False)
        assert out.status == "completed"
        assert query(db, "SELECT count(*), count(DISTINCT call_id) FROM calls") == [(400, 400)]
        twice = sum(n - 1 for n in paid(server).values())
        assert twice <= concurrency, twice
        assert not journal_files(staging) and not staging.exists()


def test_a_call_answered_while_its_judge_was_grading_is_not_paid_again(tmp_path: Path) -> None:
    """The journal keeps an answered call before its judge answers; killed meanwhile,
    the resumed run scores that answer instead of paying for it again."""
    with FakeServer() as arms, FakeServer(lambda body: "Score: 9", latency_s=2.0) as judge:
        write(
            tmp_path / "prompts/rubric/v1.j2",
            "{% block user %}Grade: {{ response }}{% endblock %}\n",
        )
        extra = """
scorers:
  - {type: llm_judge, provider: judge, model: j-1, rubric: rubric@1, scale: [0, 10]}
"""
        spec = make_spec(tmp_path, arms.url, 6, concurrency=8, extra=extra)
        spec.write_text(
            spec.read_text().replace(
                "providers:\n",
                f'providers:\n  judge: {{type: openai, base_url: "{judge.url}/v1", api_key_env: FAKE_KEY, concurrency: 16}}\n',
            )
        )
        db = tmp_path / "r.duckdb"
        proc = start(spec, db)
        wait_for(judge, 12)  # every arm call answered; the judges grading (the first
        time.sleep(0.3)  # one alone until it answered: an endpoint's first answer opens it)
        proc.kill()
        proc.wait()
        (staging,) = (tmp_path / "staging").glob("*.duckdb")
        journaled, scored = read_journal(staging)
        waiting = [i for i, c in journaled.items() if i not in scored and c.judged_call_id is None]
        assert len(waiting) >= 10
        out = run_experiment(None, db=db, resume="last", use_cache=False)
        assert out.status == "completed"
    assert max(paid(arms).values()) == 1  # not one arm call paid twice
    rows = query(db, "SELECT count(*) FILTER (WHERE judged_call_id IS NULL), count(*) FROM calls")
    assert rows == [(12, 24)]
    assert query(db, "SELECT count(*), min(value) FROM scores") == [(12, 0.9)]
