"""DuckDB storage (SPEC §8): per-run staging and a one-transaction merge.

A run never writes the main database while it runs. It writes its own staging file
(``<db dir>/staging/<run_id>.duckdb``), batching inserts, and at the end merges it
into the main file in one transaction, so an analyst holding the main file open
neither blocks nor breaks the run: a merge that cannot get the lock is retried, and
otherwise the staging file stays for ``abharness merge``. Merging is idempotent:
every table has a primary key and rows are upserted.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd

from .migrations import TABLES, migrate
from .records import CALL_COLUMNS, SCORE_COLUMNS, CallRecord, ScoreRecord, as_rows

FINISHED_SQL = "SELECT call_id FROM {calls} WHERE run_id = ? AND (attempts > 0 OR cache_hit)"


def sql_string(value: str | Path) -> str:
    """`value` as a SQL string literal (for ATTACH, which takes no parameters)."""
    return "'" + str(value).replace("'", "''") + "'"


class Store:
    """A read-write connection to one (staging) DuckDB file, migrated on open."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.con = duckdb.connect(str(self.path))
        migrate(self.con)

    def insert(self, table: str, rows: Iterable[dict[str, Any]]) -> int:
        """Upsert a batch of rows in one statement; columns matched by name."""
        return self._upsert(table, pd.DataFrame(list(rows)))

    def insert_calls(self, records: list[CallRecord]) -> int:
        return self._upsert("calls", pd.DataFrame(as_rows(records), columns=CALL_COLUMNS))

    def insert_scores(self, records: list[ScoreRecord]) -> int:
        return self._upsert("scores", pd.DataFrame(as_rows(records), columns=SCORE_COLUMNS))

    def _upsert(self, table: str, frame: pd.DataFrame) -> int:
        if table not in TABLES:
            raise ValueError(table)
        if frame.empty:
            return 0
        self.con.register("_batch", frame)
        try:
            self.con.execute(f"INSERT OR REPLACE INTO {table} BY NAME SELECT * FROM _batch")
        finally:
            self.con.unregister("_batch")
        return len(frame)

    def finished_call_ids(self, run_id: str) -> set[str]:
        """Calls of `run_id` that were attempted or answered from the cache: resume skips
        them. Calls never made (budget, credentials, endpoint down) are made again."""
        rows = self.con.execute(FINISHED_SQL.format(calls="calls"), [run_id]).fetchall()
        return {r[0] for r in rows}

    def copy_run_from(self, main: Path, run_id: str) -> set[str]:
        """Copy a merged run's ``runs`` and ``arms`` rows from `main` into this staging
        file, for a resume; return its finished call ids (its calls stay in `main`)."""
        self.con.execute(f"ATTACH {sql_string(main)} AS main_db (READ_ONLY)")
        try:
            for table in ("runs", "arms"):
                self.con.execute(
                    f"INSERT OR REPLACE INTO {table} SELECT * FROM main_db.{table} WHERE run_id = ?",
                    [run_id],
                )
            rows = self.con.execute(FINISHED_SQL.format(calls="main_db.calls"), [run_id]).fetchall()
        finally:
            self.con.execute("DETACH main_db")
        return {r[0] for r in rows}

    def update_run(self, run_id: str, **fields: Any) -> None:
        sets = ", ".join(f"{k} = ?" for k in fields)
        self.con.execute(f"UPDATE runs SET {sets} WHERE run_id = ?", [*fields.values(), run_id])

    def close(self) -> None:
        self.con.close()


@dataclass
class MergeResult:
    merged: bool
    rows: dict[str, int]
    message: str = ""


def _is_lock_error(exc: Exception) -> bool:
    text = str(exc).lower()
    return "lock" in text or "conflicting" in text or "being used" in text


def merge(staging: Path, main: Path, *, attempts: int = 10, wait_s: float = 1.0) -> MergeResult:
    """Upsert every table of `staging` into `main` in one transaction.

    On success the staging file is removed. If `main` is locked by another process
    after `attempts` tries, the staging file is kept and the result says so.
    """
    last: Exception | None = None
    for attempt in range(attempts):
        try:
            con = duckdb.connect(str(main))
        except duckdb.Error as exc:
            if not _is_lock_error(exc):
                raise
            last = exc
            time.sleep(wait_s * (attempt + 1))
            continue
        try:
            migrate(con)
            con.execute(f"ATTACH {sql_string(staging)} AS staging (READ_ONLY)")
            rows: dict[str, int] = {}
            con.execute("BEGIN TRANSACTION")
            try:
                for table in TABLES:
                    con.execute(
                        f"INSERT OR REPLACE INTO main.{table} BY NAME SELECT * FROM staging.{table}"
                    )
                    rows[table] = con.execute(f"SELECT count(*) FROM staging.{table}").fetchone()[0]  # type: ignore[index]
                # a resumed run's totals cover its earlier sessions too
                con.execute("""
                    UPDATE main.runs SET
                        total_cost_usd = coalesce(t.cost, 0), error_calls = t.errors,
                        cached_calls = t.cached
                    FROM (SELECT run_id, sum(cost_usd) AS cost,
                                 count(*) FILTER (WHERE status = 'error') AS errors,
                                 count(*) FILTER (WHERE cache_hit) AS cached
                          FROM main.calls GROUP BY run_id) t
                    WHERE t.run_id = runs.run_id
                      AND runs.run_id IN (SELECT run_id FROM staging.runs)""")
                con.execute("COMMIT")
            except Exception:
                con.execute("ROLLBACK")
                raise
            con.execute("DETACH staging")
        finally:
            con.close()
        for suffix in ("", ".wal"):
            Path(str(staging) + suffix).unlink(missing_ok=True)
        return MergeResult(True, rows)
    return MergeResult(
        False,
        {},
        f"{main} is locked by another process ({last}); results kept in {staging}; "
        "run `abharness merge` when it is free",
    )


def staging_dir(main: Path) -> Path:
    return main.parent / "staging"
