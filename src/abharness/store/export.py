"""Hive-partitioned Parquet of the results tables, for engines other than DuckDB.

``DIR/<table>/experiment=<name>/date=<YYYY-MM-DD>/data_0.parquet`` for runs, arms,
cases, calls, scores, batches and batch_calls; the date is the run's start (UTC). Readable without
abharness by DuckDB (``read_parquet('DIR/calls/**/*.parquet', hive_partitioning =
true)``), pyarrow/pandas (``pd.read_parquet('DIR/calls')``) and Spark. Each table is
written beside the old one and swapped in when complete, so re-exporting gives the
same files and a failed export leaves the previous one whole. An empty table (say
``batches``, where no run used batch mode) is an empty folder.
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

from .db import sql_string
from .migrations import TABLES
from .queries import Results


def export_parquet(results: Results, out: Path) -> dict[str, int]:
    """Write every table under `out`; return the rows written per table."""
    out.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    for table in TABLES:
        own = table == "runs"
        select = (
            "SELECT t.*, CAST(t.started_at AS DATE) AS date FROM runs t"
            if own
            else f"SELECT t.*, r.experiment, CAST(r.started_at AS DATE) AS date "
            f"FROM {table} t JOIN runs r USING (run_id)"
        )
        order = {
            "runs": "run_id",
            "arms": "run_id, arm_id",
            "cases": "run_id, case_id",
            "calls": "run_id, call_id",
            "scores": "run_id, call_id, scorer",
            "batches": "run_id, batch_key",
            "batch_calls": "run_id, batch_key, call_id",
        }[table]
        fresh = out / f".{table}-{uuid.uuid4().hex[:8]}"
        results.con.execute(
            f"COPY ({select} ORDER BY {order}) TO {sql_string(fresh)} "
            "(FORMAT PARQUET, PARTITION_BY (experiment, date))"
        )
        row = results.con.execute(f"SELECT count(*) FROM {table}").fetchone()
        counts[table] = int(row[0]) if row else 0
        target = out / table
        old = out / f".{table}-old-{uuid.uuid4().hex[:8]}"
        if target.exists():
            target.rename(old)
        if fresh.exists():
            fresh.rename(target)
        else:  # an empty table writes no partition
            target.mkdir()
        shutil.rmtree(old, ignore_errors=True)
    return counts
