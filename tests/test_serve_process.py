"""`abharness serve` as users run it: a real uvicorn process on 127.0.0.1 (a free port),
the official `openai` client, the loopback fake upstream; SIGTERM and kill -9."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import duckdb
import httpx
import openai
import pytest
from scipy.stats import binomtest

from .fake_server import FakeServer, Fault
from .test_serve import CHAT, KEY, serve_spec

pytestmark = pytest.mark.slow
ABHARNESS = str(Path(sys.executable).with_name("abharness"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Process:
    """`abharness serve` in a process of its own, up once /healthz answers."""

    def __init__(self, spec: Path, db: Path) -> None:
        self.port = free_port()
        self.db = db
        env = {**os.environ, "FAKE_KEY": "upstream-key", "SERVE_KEYS": f"{KEY},second-key"}
        env["ABHARNESS_STOP_GRACE_S"] = "5"
        self.log = db.parent / "serve.log"
        db.parent.mkdir(parents=True, exist_ok=True)
        self.out = self.log.open("w")
        self.proc = subprocess.Popen(
            [ABHARNESS, "serve", str(spec), "--port", str(self.port), "--db", str(db)],
            env=env,
            stdout=self.out,
            stderr=subprocess.STDOUT,
        )
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise AssertionError(f"serve did not come up: {self.log.read_text()}")

    def client(self, key: str = KEY) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=key, max_retries=0, timeout=30)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        finally:
            self.out.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.out.close()


@pytest.fixture
def upstream() -> Iterator[FakeServer]:
    with FakeServer() as s:
        yield s


def rows(db: Path, sql: str) -> list[tuple]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def test_done_when_a_thousand_requests_from_a_hundred_subjects(
    tmp_path: Path, upstream: FakeServer
) -> None:
    spec = serve_spec(
        tmp_path,
        upstream.url,
        "  split: {control: 50, treatment: 50}\n  shadow: [candidate]\n  fallback: [control]\n"
        "  keys_env: SERVE_KEYS\n  merge_every_s: 1\n",
    )
    served = Process(spec, tmp_path / "results/ab.duckdb")
    try:
        client = served.client()
        with pytest.raises(openai.AuthenticationError):
            served.client("no-such-key").chat.completions.create(model="live", messages=CHAT)

        def ask(i: int) -> tuple[str, str, str, str]:
            subject = f"subject-{i % 100:03d}"
            raw = client.chat.completions.with_raw_response.create(
                model="live", messages=CHAT, user=subject
            )
            reply = raw.parse()
            return (
                subject,
                raw.headers["x-abharness-arm"],
                reply.id,
                reply.choices[0].message.content or "",
            )

        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(ask, range(1000)))
        arms_of: dict[str, set[str]] = defaultdict(set)
        for subject, arm, _, text in answers:
            arms_of[subject].add(arm)
            assert text == "Lima"
        assert all(len(arms) == 1 for arms in arms_of.values())  # sticky
        per_subject = [next(iter(a)) for a in arms_of.values()]
        treated = per_subject.count("treatment")
        assert binomtest(treated, 100, 0.5).pvalue > 0.01, treated  # the split matches 50/50
        returned_arms = {arm for _, arm, _, _ in answers}
        assert returned_arms <= {"control", "treatment"}  # the shadow never answers
        ids = [cid for _, _, cid, _ in answers]
        for cid, score in zip(ids[:50], [0.0, 1.0] * 25, strict=True):
            r = httpx.post(
                f"{served.url}/v1/feedback",
                json={"id": cid, "score": score},
                headers={"Authorization": f"Bearer {KEY}"},
            )
            assert r.status_code == 200
        metrics = httpx.get(f"{served.url}/metrics").text
        assert 'abharness_serve_requests_total{endpoint="chat",status="200"} 1000.0' in metrics
        assert 'abharness_serve_requests_total{endpoint="chat",status="401"} 1.0' in metrics
        assert 'abharness_serve_feedback_total{status="200"} 50.0' in metrics
        shadow_done = 'abharness_serve_calls_total{arm="candidate",assignment="shadow",status="ok"}'
        assert shadow_done in metrics
        # analysts see the session while it serves (merged every second)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                seen = rows(served.db, "SELECT count(*) FROM calls WHERE assignment = 'assigned'")
            except duckdb.Error:  # the gateway merging at this moment
                seen = [(0,)]
            if seen[0][0] == 1000:
                break
            time.sleep(0.2)
        assert seen[0][0] == 1000
        assert served.stop() in (0, 130)
    finally:
        served.kill()
    db = served.db
    assert not list((db.parent / "staging").glob("*.duckdb"))  # merged on stop
    calls = rows(db, "SELECT call_id, arm_id, assignment, subject_hash FROM calls")
    assigned = {c[0]: c for c in calls if c[2] == "assigned"}
    shadows = [c for c in calls if c[2] == "shadow"]
    assert len(assigned) == 1000 and len(shadows) == 1000
    assert set(ids) == set(assigned)  # every answer is an assigned call; no shadow id returned
    assert not {c[0] for c in shadows} & set(ids)
    assert len({c[3] for c in calls}) == 100  # one hash per subject
    data = db.read_bytes() + (db.parent / "serve.log").read_bytes()
    assert b"subject-042" not in data and KEY.encode() not in data  # never stored or logged
    feedback = rows(db, "SELECT count(*), avg(value) FROM scores WHERE scorer = 'feedback'")
    assert feedback == [(50, 0.5)]
    assert rows(db, "SELECT kind, status, total_calls FROM runs") == [("online", "completed", 2000)]
    # the online report compares each arm with the control, the subject as the unit
    run_id = rows(db, "SELECT run_id FROM runs")[0][0]
    out = subprocess.run(
        [ABHARNESS, "report", run_id, "--db", str(db), "--format", "json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["kind"] == "online" and report["comparisons"] == []
    by = {(c["arm_id"], c["metric"]): c for c in report["online"]}
    assert {m for a, m in by if a == "treatment"} == {
        *("feedback", "pass_rate", "mean_score", "latency", "cost")
    }
    latency = by[("treatment", "latency")]
    # the unit is the subject: 100 subjects in the two arms, not 1,000 requests
    assert latency["n_units"] == 100 and latency["n_pairs"] == min(treated, 100 - treated)
    assert latency["compared"] and latency["ci_low"] < latency["diff"] < latency["ci_high"]
    assert latency["p_adjusted"] is not None
    # the shadow saw every subject; those of the control's are in both arms, and it says so
    shadow = by[("candidate", "latency")]
    assert shadow["n_units"] == 100 + (100 - treated)
    assert any("not independent" in c for c in shadow["caveats"])
    # identical upstream answers: no arm differs on the spec's scorer
    assert by[("treatment", "pass_rate")]["verdict"] != "better"


def test_sigterm_drains_the_requests_in_flight(tmp_path: Path, upstream: FakeServer) -> None:
    spec = serve_spec(tmp_path, upstream.url, "  split: {control: 1}\n  merge_every_s: 3600\n")
    served = Process(spec, tmp_path / "ab.duckdb")
    try:
        upstream.faults.extend(Fault(delay_s=1.5) for _ in range(3))
        results: list[str] = []

        def ask() -> None:
            reply = served.client().chat.completions.create(model="live", messages=CHAT)
            results.append(reply.id)

        threads = [threading.Thread(target=ask) for _ in range(3)]
        for t in threads:
            t.start()
        time.sleep(0.5)  # the three are at the upstream
        served.proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(30)
        code = served.proc.wait(30)
    finally:
        served.kill()
    assert len(results) == 3  # answered, not cut
    assert code in (0, 130)
    stored = {r[0] for r in rows(served.db, "SELECT call_id FROM calls WHERE status = 'ok'")}
    assert set(results) <= stored
    assert rows(served.db, "SELECT status FROM runs") == [("completed",)]


def test_after_kill_9_merge_finishes_what_was_acknowledged(
    tmp_path: Path, upstream: FakeServer
) -> None:
    spec = serve_spec(
        tmp_path, upstream.url, "  split: {control: 1, treatment: 1}\n  merge_every_s: 3600\n"
    )
    served = Process(spec, tmp_path / "ab.duckdb")
    try:
        client = served.client()
        acknowledged = [
            client.chat.completions.create(model="live", messages=CHAT, user=f"s{i}").id
            for i in range(40)
        ]
        # a merge while it serves leaves the live session's file alone, and says so
        busy = subprocess.run(
            [ABHARNESS, "merge", "--db", str(served.db)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert busy.returncode == 0, busy.stdout + busy.stderr
        assert "in use by a running process" in busy.stdout
        served.proc.send_signal(signal.SIGKILL)
        served.proc.wait(10)
    finally:
        served.kill()
    assert list((served.db.parent / "staging").glob("*.duckdb"))  # left behind
    merged = subprocess.run(
        [ABHARNESS, "merge", "--db", str(served.db)], capture_output=True, text=True, timeout=120
    )
    assert merged.returncode == 0, merged.stdout + merged.stderr
    stored = {r[0] for r in rows(served.db, "SELECT call_id FROM calls")}
    assert set(acknowledged) <= stored


def test_a_stream_passes_through_as_the_upstream_sends_it(tmp_path: Path) -> None:
    """The client's first piece comes when the upstream's does, not when the call ends;
    a failure before it is retried unseen; a stream cut after it ends the client's
    stream with an error, and is neither retried nor answered by the fallback."""
    with FakeServer(lambda body: "one two three four five", chunk_delay_s=0.3) as slow:
        spec = serve_spec(tmp_path, slow.url, "  split: {control: 1}\n  fallback: [treatment]\n")
        served = Process(spec, tmp_path / "results/ab.duckdb")
        try:
            client = served.client()

            def stream() -> tuple[float, float, str]:
                began = time.perf_counter()
                first, text = None, ""
                for chunk in client.chat.completions.create(
                    model="live", messages=CHAT, stream=True
                ):
                    piece = chunk.choices[0].delta.content if chunk.choices else None
                    if piece and first is None:
                        first = time.perf_counter() - began
                    text += piece or ""
                assert first is not None
                return first, time.perf_counter() - began, text

            first, whole, text = stream()
            assert text == "one two three four five"
            assert whole > 1.2 and first < whole / 2, (first, whole)  # 5 pieces, 0.3 s apart

            slow.faults.append(Fault(status=500))  # before any piece: retried, unseen
            assert stream()[2] == "one two three four five"

            slow.faults.append(Fault(stream="cut"))  # every piece, then no final chunk
            got = ""
            with pytest.raises(openai.APIError, match="stream ended before the final chunk"):
                for chunk in client.chat.completions.create(
                    model="live", messages=CHAT, stream=True
                ):
                    got += (chunk.choices[0].delta.content or "") if chunk.choices else ""
            assert got == "one two three four five"  # what it had, then the error
            assert served.stop() in (0, 130)
        finally:
            served.kill()
    calls = rows(
        served.db,
        "SELECT arm_id, assignment, status, error_type, attempts FROM calls ORDER BY started_at",
    )
    assert calls == [
        ("control", "assigned", "ok", None, 1),
        ("control", "assigned", "ok", None, 2),
        ("control", "assigned", "error", "server", 1),  # not retried, no fallback after it
    ]
