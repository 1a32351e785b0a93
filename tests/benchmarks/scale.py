"""`abharness run` at scale, as a user runs it: a fresh process per measurement.

For each size, a spec with two arms (so the report compares them) runs through the CLI
(`abharness run --no-cache`, the report written at the end) against the loopback fake
server in its own process. Measured from outside: the peak RSS of the whole `abharness
run` process (``os.wait4``), its wall time, the time from its start to the server's
first request (median of 5 runs of `--first-cases`), and the time and peak RSS of
`abharness report` on the finished run.
The plain SDK loop's peak RSS at the same number of calls is the floor to compare with.

    .venv/bin/python -m tests.benchmarks.scale [--calls 10000 100000] [--first-cases 1000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

from .common import REPO, TWO_ARMS, Child, Server, run_child, write_spec

ABHARNESS = Path(sys.executable).with_name("abharness")
SDK_LOOP = """
import asyncio, sys
from tests.benchmarks.common import sdk_loop
asyncio.run(sdk_loop(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
"""


def abharness_run(calls: int, latency_ms: float, concurrency: int) -> dict[str, float]:
    """One `abharness run` of `calls` calls (two arms) and one `abharness report`."""
    server = Server(latency_ms)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            spec = write_spec(folder, server.url, calls // 2, concurrency, TWO_ARMS)
            db = folder / "results.duckdb"
            run = run_child(
                [
                    str(ABHARNESS),
                    "run",
                    str(spec),
                    "--db",
                    str(db),
                    "--no-cache",
                    "--reports-dir",
                    str(folder / "reports"),
                ]  # fmt: skip
            )
            first = server.first_request_at() - run.started_at
            report = run_child(
                [
                    str(ABHARNESS),
                    "report",
                    "--last",
                    "--db",
                    str(db),
                    "--reports-dir",
                    str(folder / "reports"),
                ]  # fmt: skip
            )
    finally:
        server.stop()
    return {
        "run_s": run.wall_s,
        "peak_mb": run.peak_mb,
        "first_s": first,
        "report_s": report.wall_s,
        "report_peak_mb": report.peak_mb,
    }


def sdk_run(calls: int, latency_ms: float, concurrency: int) -> Child:
    server = Server(latency_ms)
    try:
        return run_child(
            [sys.executable, "-c", SDK_LOOP, server.url, str(calls), str(concurrency)],
            cwd=REPO,
        )
    finally:
        server.stop()


def measure(
    sizes: list[int], first_cases: int, latency_ms: float, concurrency: int
) -> dict[str, dict[str, float]]:
    """Figures by row name, then by client (``sdk``, ``abharness``)."""
    os.environ.setdefault("BENCH_KEY", "k")
    rows: dict[str, dict[str, float]] = {}
    for calls in sizes:
        ours = abharness_run(calls, latency_ms, concurrency)
        theirs = sdk_run(calls, latency_ms, concurrency)
        rows[f"peak RSS at {calls:,} calls, MB"] = {
            "sdk": theirs.peak_mb,
            "abharness": ours["peak_mb"],
        }
        rows[f"wall time of {calls:,} calls, s"] = {
            "sdk": theirs.wall_s,
            "abharness": ours["run_s"],
        }
        rows[f"`abharness report` of {calls:,} calls, s"] = {"abharness": ours["report_s"]}
    if len(sizes) > 1:
        lo, hi = f"peak RSS at {sizes[0]:,} calls, MB", f"peak RSS at {sizes[-1]:,} calls, MB"
        rows[f"peak RSS {sizes[-1]:,} / {sizes[0]:,} calls"] = {
            who: rows[hi][who] / rows[lo][who] for who in ("sdk", "abharness")
        }
    firsts = [abharness_run(first_cases * 2, latency_ms, concurrency)["first_s"] for _ in range(5)]
    rows[f"`abharness run` start to first request, {first_cases:,} cases, median of 5, s"] = {
        "abharness": statistics.median(firsts)
    }
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--first-cases", type=int, default=1000)
    parser.add_argument("--latency-ms", type=float, default=1)
    parser.add_argument("--concurrency", type=int, default=256)
    args = parser.parse_args()
    rows = measure(args.calls, args.first_cases, args.latency_ms, args.concurrency)
    print("| measure | SDK loop | abharness |")
    print("|---|--:|--:|")
    for name, by in rows.items():
        cells = [f"{by[w]:.2f}" if w in by else "–" for w in ("sdk", "abharness")]
        print(f"| {name} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
