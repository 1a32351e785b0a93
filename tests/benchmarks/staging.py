"""Memory of a staging file as it grows: calls and their scores appended through
`Store`, as many at a time as the run's writer batches (`WRITE_BATCH`, cases and
calls: half of it calls), with call ids as random as the real ones; DuckDB's own memory
(`duckdb_memory()`) and the process's peak RSS every 100k calls.

    .venv/bin/python -m tests.benchmarks.staging [--calls 1000000]
"""

from __future__ import annotations

import argparse
import resource
import tempfile
from pathlib import Path

from abharness.hashing import content_hash
from abharness.run.writer import WRITE_BATCH
from abharness.store.db import STAGING_CONFIG, Store
from abharness.store.records import CallRecord, ScoreRecord

BATCH = WRITE_BATCH // 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1_000_000)
    args = parser.parse_args()
    print(f"staging memory_limit {STAGING_CONFIG['memory_limit']}")
    print("| calls staged | DuckDB MB | peak RSS MB |")
    print("|--:|--:|--:|")
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "r.duckdb")
        for start in range(0, args.calls, BATCH):
            ids = [content_hash(["r", i], 24) for i in range(start, start + BATCH)]
            store.insert_calls(
                [
                    CallRecord(
                        c,
                        "r",
                        "ab"[i % 2],
                        f"c{i // 2}",
                        0,
                        status="ok",
                        attempts=1,
                        latency_ms=20.0,
                        response_text="Paris is the capital.",
                    )
                    for i, c in enumerate(ids, start)
                ]  # fmt: skip
            )
            store.insert_scores([ScoreRecord(c, "r", "contains", 1.0, True, "") for c in ids])
            done = start + BATCH
            if done % 100_000 < BATCH:
                sql = "SELECT sum(memory_usage_bytes) FROM duckdb_memory()"
                ((used,),) = store.con.execute(sql).fetchall()
                duck = used / 2**20
                peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
                print(f"| {done:,} | {duck:.0f} | {peak:.0f} |", flush=True)
        store.close()


if __name__ == "__main__":
    main()
