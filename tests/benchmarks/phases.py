"""Peak RSS of `abharness run` by phase: the calls, the merge, the report.

Each size runs `abharness run` in a fresh process on a two-arm spec against the
loopback fake server (1 ms, concurrency 256), with the run's phases wrapped to read the
process's peak RSS (`getrusage`) at each boundary. ``--tree PATH/src`` runs another
checkout's package the same way, to put a change beside what it replaced:

    git worktree add /tmp/old 11bec72
    .venv/bin/python -m tests.benchmarks.phases [--calls 10000 100000] [--tree /tmp/old/src]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from .common import REPO, TWO_ARMS, Server, write_spec

PHASES = ("calls", "merge", "report")

# Run in the child: wraps the phases, runs the CLI, prints {phase: peak MB so far}.
CHILD = """
import json, resource, sys
peaks = {}
def mark(name):
    peaks[name] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
import abharness.run.runner as runner, abharness.store.recorder as recorder
import abharness.report.build as build
calls = runner.Runner.run
async def run(self):
    try:
        return await calls(self)
    finally:
        mark("calls")
runner.Runner.run = run
def wrap(module, name, phase):
    inner = getattr(module, name)
    def wrapped(*a, **k):
        try:
            return inner(*a, **k)
        finally:
            mark(phase)
    setattr(module, name, wrapped)
wrap(recorder.Recorder, "merge", "merge")
wrap(build, "write_report", "report")
from abharness.entry import main
sys.argv = ["abharness", "run", *sys.argv[1:]]
try:
    main()
except SystemExit:
    pass
print("PEAKS", json.dumps(peaks))
"""


def phases(calls: int, tree: Path | None) -> dict[str, float]:
    server = Server(1)
    env = {**os.environ, "BENCH_KEY": "k"}
    if tree is not None:
        env["PYTHONPATH"] = str(tree)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            spec = write_spec(folder, server.url, calls // 2, 256, TWO_ARMS)
            out = subprocess.run(
                [sys.executable, "-c", CHILD, str(spec), "--no-cache", "--db",
                 str(folder / "r.duckdb"), "--reports-dir", str(folder / "reports")],
                cwd=REPO, env=env, capture_output=True, text=True, check=True,
            )  # fmt: skip
    finally:
        server.stop()
    line = next(x for x in out.stdout.splitlines() if x.startswith("PEAKS "))
    peaks: dict[str, float] = json.loads(line.removeprefix("PEAKS "))
    return peaks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--tree", type=Path, help="another checkout's src/ directory")
    args = parser.parse_args()
    results = {calls: phases(calls, args.tree) for calls in args.calls}
    print(f"peak RSS so far, MB ({args.tree or 'this tree'})")
    print("| phase | " + " | ".join(f"{c:,} calls" for c in args.calls) + " |")
    print("|---|" + "--:|" * len(args.calls))
    for phase in PHASES:
        cells = " | ".join(f"{results[c].get(phase, float('nan')):.0f}" for c in args.calls)
        print(f"| {phase} | {cells} |")
    lo, hi = args.calls[0], args.calls[-1]
    if hi != lo:
        ratio = max(results[hi].values()) / max(results[lo].values())
        print(f"| {hi:,} ÷ {lo:,}, whole run | | {ratio:.2f} |")


if __name__ == "__main__":
    main()
