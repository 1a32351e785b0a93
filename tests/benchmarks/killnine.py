"""Calls paid twice after ``kill -9`` and a resume, at concurrency 8 (issue 18's figure).

A run of 300 cases × 2 arms against the loopback fake server (20 ms per call) is killed
with SIGKILL after a random number of answered requests, then resumed; the fake server
counts the requests it answered in full more than once (paid twice). With the journal
this is at most the calls in flight; ``--old REF`` runs the same trials on an earlier
commit side by side (its code from ``git worktree``, same server, same kill points).

    .venv/bin/python -m tests.benchmarks.killnine [--trials 10] [--old REF]
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from tests.benchmarks.common import trees, write_spec
from tests.fake_server import FakeServer, prompt_text

CONCURRENCY = 8


def trial(src: Path, kill_after: int, cases: int) -> tuple[int, int, float]:
    """(paid twice, answered before the kill, seconds to resume) for one trial."""
    env = {**os.environ, "PYTHONPATH": str(src), "BENCH_KEY": "bench-key"}
    with tempfile.TemporaryDirectory() as tmp, FakeServer(latency_s=0.02) as server:
        spec = write_spec(Path(tmp), server.url, cases, CONCURRENCY, ("m-a", "m-b"))
        db = Path(tmp) / "r.duckdb"
        run = [sys.executable, "-m", "abharness", "run"]
        proc = subprocess.Popen(
            [*run, str(spec), "--db", str(db), "--no-cache"],
            cwd=tmp,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 120
        while len(server.log) < kill_after and time.monotonic() < deadline:
            time.sleep(0.005)
        proc.kill()
        proc.wait()
        answered_before = sum(1 for e in server.log if e.status == 200 and e.text)
        started = time.perf_counter()
        subprocess.run(
            [*run, "--resume", "last", "--db", str(db), "--no-cache"],
            cwd=tmp,
            env=env,
            check=False,
            capture_output=True,
        )
        resumed_s = time.perf_counter() - started
        answered = Counter(
            (e.body["model"], prompt_text(e.body)) for e in server.log if e.status == 200 and e.text
        )
        assert len(answered) == 2 * cases, f"the resume did not finish: {len(answered)}"
        return sum(n - 1 for n in answered.values()), answered_before, resumed_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--cases", type=int, default=300)
    parser.add_argument("--old", help="an earlier commit to run side by side")
    args = parser.parse_args()
    rng = random.Random(18)
    points = [rng.randrange(50, 2 * args.cases - 100) for _ in range(args.trials)]
    with trees(args.old) as sources:
        results = {
            name: [trial(src, k, args.cases) for k in points] for name, src in sources.items()
        }
    print(
        f"{2 * args.cases} calls, {CONCURRENCY} in flight, 20 ms each; SIGKILL after a random "
        f"number of requests, then `run --resume last`; {args.trials} trials"
    )
    print("| tree | paid twice per trial | max | mean | limit (calls in flight) |")
    print("|---|---|--:|--:|--:|")
    for name, rows in results.items():
        twice = [r[0] for r in rows]
        print(
            f"| {name} | {' '.join(map(str, twice))} | {max(twice)} | "
            f"{sum(twice) / len(twice):.1f} | {CONCURRENCY} |"
        )


if __name__ == "__main__":
    main()
