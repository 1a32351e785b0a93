"""Time `abharness --help` (a fresh interpreter each time), optionally beside another
checkout of the package: ``--compare PATH/src`` runs both interleaved, medians."""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"
CODE = "import sys; sys.argv = ['abharness', '--help']; from abharness.entry import main; main()"


def once(src: Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(src)}
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", CODE], env=env, capture_output=True, check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--compare", type=Path, help="another checkout's src/ directory")
    args = parser.parse_args()
    trees = {"this tree": SRC, **({str(args.compare): args.compare} if args.compare else {})}
    times: dict[str, list[float]] = {name: [] for name in trees}
    for _ in range(args.rounds):
        for name, src in trees.items():
            times[name].append(once(src))
    print("| tree | `abharness --help` median s | min s |")
    print("|---|--:|--:|")
    for name, ts in times.items():
        print(f"| {name} | {statistics.median(ts):.2f} | {min(ts):.2f} |")


if __name__ == "__main__":
    main()
