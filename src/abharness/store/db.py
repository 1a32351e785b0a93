"""DuckDB storage (SPEC §8): per-run staging and a one-transaction merge.

A run never writes the main database while it runs. It writes its own staging file
(``<db dir>/staging/<run_id>.duckdb``), batching inserts, and at the end merges it
into the main file in one transaction, so an analyst holding the main file open
neither blocks nor breaks the run: a merge that cannot get the lock is retried, and
otherwise the staging file stays for ``abharness merge``. Merging is idempotent:
every table of the main file has a primary key, and staged rows replace the rows with
their key.

In a staging file the tables with a row per case, call or score (`LOGS`) have no key:
a key is an ART index that DuckDB holds in memory and cannot evict (about 70 bytes a
row for random call ids), so a staging file capped at 64 MB ran out of memory near
400k calls. A run writes each of those rows once; a resume first deletes the rows it
will write again (`Store.reopen`); the main file's keys check it at the merge.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

from ..errors import EnvironmentFailure
from .batches import snapshot_path
from .health import check_main_db, classify, environment_failure
from .journal import Journal, journal_files, read_journal
from .migrations import KEYS, TABLES, migrate, transaction
from .records import (
    CALL_COLUMNS,
    MADE_SQL,
    SCORE_COLUMNS,
    CallRecord,
    ScoreRecord,
    as_rows,
    made_sql,
)

log = logging.getLogger(__name__)

# The staging file is written by this process alone, a batch at a time: DuckDB need not
# keep its pages in memory (by default it may use 80% of RAM), and a smaller WAL between
# checkpoints bounds what a checkpoint holds. Staging 1M calls and their scores, DuckDB
# holds 8-14 MB throughout (`python -m tests.benchmarks.staging`, BENCHMARKS.md). At
# 16 MB a checkpoint itself ran out of memory.
STAGING_CONFIG: dict[str, Any] = {"memory_limit": "64MB", "checkpoint_threshold": "4MB"}

SHED_TO = "4MB"  # `Store.shed_cache`

# Rows per row group when merging into the main file (DuckDB's default is 122,880): a
# transaction writes each full row group out before its commit, so a merge holds about
# half what it did for a 100k-call run (BENCHMARKS.md, "Memory").
MERGE_ROW_GROUP_SIZE = 8192


LOGS = ("cases", "calls", "scores", "batch_calls")  # unkeyed in a staging file


def sql_string(value: str | Path) -> str:
    """`value` as a SQL string literal (for ATTACH, which takes no parameters)."""
    return "'" + str(value).replace("'", "''") + "'"


class Store:
    """A read-write connection to one (staging) DuckDB file, migrated on open, with its
    journal (`store.journal`): what a process that died left there is recovered first,
    and calls it had answered but not scored are kept in `answered` for the resumed run
    to score without paying for them again."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.con = duckdb.connect(str(self.path), config=STAGING_CONFIG)
        self._types: dict[str, dict[str, Any]] = {}  # `_arrow_types`
        migrate(self.con)
        for table in LOGS:
            _drop_key(self.con, table)
        self.answered: dict[str, CallRecord] = {}
        old = journal_files(self.path)
        if old:
            self.answered = self._recover()
        self.journal = Journal(self.path)
        for record in self.answered.values():  # kept until they are scored and written
            self.journal.call(record)
        for path in old:
            path.unlink(missing_ok=True)

    def _recover(self) -> dict[str, CallRecord]:
        """Write the journal's finished and scored calls that the staging store lacks;
        return the calls answered but not scored, with the judges' calls grading them
        (taken out of the store: the resumed run writes them again, once)."""
        calls, scores = read_journal(self.path)
        ids = list(calls)
        present = {
            r[0]
            for r in self.con.execute(
                "SELECT call_id FROM calls WHERE call_id IN (SELECT unnest(?::VARCHAR[]))", [ids]
            ).fetchall()
        }
        answered = {i: c for i, c in calls.items() if i not in scores and i not in present}
        judging = [
            CallRecord.from_columns(dict(zip(CALL_COLUMNS, row, strict=True)))
            for row in self.con.execute(
                f"SELECT {', '.join(CALL_COLUMNS)} FROM calls "
                "WHERE judged_call_id IN (SELECT unnest(?::VARCHAR[]))",
                [list(answered)],
            ).fetchall()
        ]
        answered.update({c.call_id: c for c in judging})
        answered.update({i: c for i, c in calls.items() if c.judged_call_id in answered})
        complete = [
            c for i, c in calls.items() if i in scores and i not in present and i not in answered
        ]
        with transaction(self.con):
            if judging:
                self.con.execute(
                    "DELETE FROM calls WHERE call_id IN (SELECT unnest(?::VARCHAR[]))",
                    [[c.call_id for c in judging]],
                )
            self.insert_calls(complete)
            self.insert_scores([s for c in complete for s in scores[c.call_id]])
        log.info(
            "%s: recovered %d calls from the journal; %d answered, to be scored",
            self.path.name,
            len(complete),
            len(answered),
        )
        return answered

    def insert(self, table: str, rows: Iterable[dict[str, Any]]) -> int:
        """Insert rows of a few columns (runs, arms, cases), replacing a run's or arm's
        row with the same key; every row has the same keys, and columns left out take
        their default. The cases come in batches, through Arrow (`_insert_columns`); a
        run's or arm's rows in one parameterised statement, which needs no pyarrow
        before the run's first request."""
        batch = list(rows)
        if table not in TABLES:
            raise ValueError(table)
        if not batch:
            return 0
        columns = tuple(batch[0])
        if any(row.keys() != batch[0].keys() for row in batch):
            raise ValueError(f"rows for {table} differ in their keys")
        if table in LOGS:
            return self._insert_columns(table, columns, [[r[c] for r in batch] for c in columns])
        one = "(" + ", ".join("?" * len(columns)) + ")"
        self.con.execute(
            f"INSERT OR REPLACE INTO {table} ({', '.join(columns)}) "
            f"VALUES {', '.join([one] * len(batch))}",
            [row[c] for row in batch for c in columns],
        )
        return len(batch)

    def insert_calls(self, records: list[CallRecord]) -> int:
        return self._append("calls", records, CALL_COLUMNS)

    def insert_scores(self, records: list[ScoreRecord]) -> int:
        return self._append("scores", records, SCORE_COLUMNS)

    def _append(
        self, table: str, records: list[CallRecord] | list[ScoreRecord], columns: tuple[str, ...]
    ) -> int:
        if not records:
            return 0
        values = [list(column) for column in zip(*as_rows(records), strict=True)]
        return self._insert_columns(table, columns, values)

    def _insert_columns(self, table: str, columns: tuple[str, ...], values: list[list[Any]]) -> int:
        """Rows given column by column, in one statement through an Arrow table typed as
        the table's columns: DuckDB reads it without the GIL, and building it is C++ (a
        DataFrame, before, cost twice the CPU, most of it under the GIL that a serving
        loop needs; a statement of parameters cost more still: BENCHMARKS.md). pyarrow
        is imported here, not with the module: `abharness run` sends its first request
        before it."""
        import pyarrow as pa

        types = self._arrow_types(table)
        frame = pa.Table.from_arrays(
            [pa.array(v, type=types[c]) for c, v in zip(columns, values, strict=True)],
            names=list(columns),
        )
        names = ", ".join(columns)
        self.con.register("_batch", frame)
        try:
            self.con.execute(f"INSERT INTO {table} ({names}) SELECT {names} FROM _batch")
        finally:
            self.con.unregister("_batch")
        return frame.num_rows

    def _arrow_types(self, table: str) -> dict[str, Any]:
        """The Arrow type of each of `table`'s columns (JSON as text), asked once."""
        types = self._types.get(table)
        if types is None:
            schema = self.con.sql(f"FROM {table} LIMIT 0").to_arrow_table().schema
            types = self._types[table] = {f.name: f.type for f in schema}
        return types

    def reopen(self, run_id: str) -> set[str]:
        """Resume `run_id` in this staging file: return the calls made (`MADE_SQL`), which
        the resumed run skips, and delete what it writes again: its cases, the calls
        never made or left unfinished (budget, credentials, an endpoint down), the parts
        of composite calls not made (the parts that were made go to `answered`, to be
        reused, not paid again), the judges' calls on those, and their scores."""
        self.answered.update(self._parts_to_reuse("calls", run_id))
        finished = {
            r[0]
            for r in self.con.execute(
                f"SELECT call_id FROM calls WHERE run_id = ? AND {MADE_SQL}", [run_id]
            ).fetchall()
        } - set(self.answered)
        with transaction(self.con):
            self.con.execute(
                """
                CREATE TEMP TABLE redo AS
                WITH done AS (SELECT unnest(?::VARCHAR[]) AS call_id),
                arm AS (  -- not done, and not a part of a composite call that is
                    SELECT call_id FROM calls
                    WHERE run_id = ? AND judged_call_id IS NULL AND call_id NOT IN (FROM done)
                      AND (parent_call_id IS NULL OR parent_call_id NOT IN (FROM done))
                )
                SELECT call_id FROM arm
                UNION ALL SELECT call_id FROM calls WHERE judged_call_id IN (FROM arm)
                """,
                [list(finished), run_id],
            )
            for table in ("scores", "calls"):
                self.con.execute(f"DELETE FROM {table} WHERE call_id IN (FROM redo)")
            self.con.execute("DELETE FROM cases WHERE run_id = ?", [run_id])
            self.con.execute("DROP TABLE redo")
        return finished

    def copy_run_from(self, main: Path, run_id: str) -> set[str]:
        """Copy a merged run's ``runs``, ``arms`` and ``batches`` rows from `main` into this
        staging file, for a resume; return its finished call ids (its calls stay in `main`)."""
        self.con.execute(f"ATTACH {sql_string(main)} AS main_db (READ_ONLY)")
        try:
            tables = {
                r[0]
                for r in self.con.execute(
                    "SELECT table_name FROM duckdb_tables() WHERE database_name = 'main_db'"
                ).fetchall()
            }
            for table in ("runs", "arms", "batches", "batch_calls"):  # batches: to poll them
                if table not in tables:
                    continue  # a main file from before batch mode
                verb = "INSERT" if table in LOGS else "INSERT OR REPLACE"
                self.con.execute(
                    f"{verb} INTO {table} BY NAME SELECT * FROM main_db.{table} WHERE run_id = ?",
                    [run_id],
                )
            migrated = self.con.execute(
                "SELECT count(*) FROM duckdb_columns() WHERE database_name = 'main_db' "
                "AND table_name = 'calls' AND column_name = 'unfinished'"
            ).fetchone()
            made = made_sql(bool(migrated and migrated[0]))
            rows = self.con.execute(
                f"SELECT call_id FROM main_db.calls WHERE run_id = ? AND {made}", [run_id]
            ).fetchall()
            self.answered.update(self._parts_to_reuse("main_db.calls", run_id))
        finally:
            self.con.execute("DETACH main_db")
        return {r[0] for r in rows} - set(self.answered)

    def _parts_to_reuse(self, calls: str, run_id: str) -> dict[str, CallRecord]:
        """The parts a composite call had made (and the judges' calls grading them) when
        the composite itself was not: the resumed run makes the composite again from
        them, without paying for them again."""
        columns = {
            r[0]
            for r in self.con.execute(
                f"SELECT column_name FROM (DESCRIBE {calls})"  # an older main has none
            ).fetchall()
        }
        if "parent_call_id" not in columns:
            return {}
        rows = self.con.execute(
            f"""
            WITH parts AS (
                SELECT * FROM {calls} WHERE run_id = $run AND parent_call_id IS NOT NULL
                  AND {MADE_SQL}
                  AND parent_call_id NOT IN (
                      SELECT call_id FROM {calls} WHERE run_id = $run AND {MADE_SQL})
            )
            SELECT {", ".join(CALL_COLUMNS)} FROM parts
            UNION ALL
            SELECT {", ".join(CALL_COLUMNS)} FROM {calls}
            WHERE judged_call_id IN (SELECT call_id FROM parts)
            """,
            {"run": run_id},
        ).fetchall()
        records = [CallRecord.from_columns(dict(zip(CALL_COLUMNS, r, strict=True))) for r in rows]
        return {r.call_id: r for r in records}

    def flush_into(self, main: Path) -> dict[str, int]:
        """Merge what this staging file holds into `main` now and keep going: its rows
        are upserted into `main` in one transaction (as `merge` does), then the logs
        (cases, calls, scores) are emptied here, the run's rows kept for the next flush.
        A long-lived run (`abharness serve`) does this periodically so analysts see its
        calls while it runs. Dying between the two steps merges the same rows again
        later, harmlessly (a flush is an upsert). Raises `duckdb.Error` or `OSError`
        (`main` busy: try again later); the caller's thread must own the connection."""
        here = self.con.execute("SELECT current_database()").fetchone()[0]  # type: ignore[index]
        source = '"' + str(here).replace('"', '""') + '"'
        self.con.execute(
            f"ATTACH {sql_string(main)} AS results (ROW_GROUP_SIZE {MERGE_ROW_GROUP_SIZE})"
        )
        try:
            self.con.execute("USE results")
            try:
                migrate(self.con)
                rows = _upsert(self.con, source)
            finally:
                self.con.execute(f"USE {source}")
        finally:
            self.con.execute("DETACH results")
        with transaction(self.con):
            for table in LOGS:
                self.con.execute(f"DELETE FROM {table}")
        return rows

    def update_run(self, run_id: str, **fields: Any) -> None:
        sets = ", ".join(f"{k} = ?" for k in fields)
        self.con.execute(f"UPDATE runs SET {sets} WHERE run_id = ?", [*fields.values(), run_id])

    def shed_cache(self) -> None:
        """Let DuckDB drop the blocks it keeps cached of what was written. It evicts
        them only at its memory limit, so what it keeps grows with the run up to the
        limit; lowering the limit for a moment evicts what is not in use. Not inside a
        transaction: a limit that cannot be met there aborts it."""
        try:
            self.con.execute(f"SET memory_limit = '{SHED_TO}'")
        except duckdb.Error:
            pass  # more is in use than that: it stays, and the next call tries again
        finally:
            self.con.execute(f"SET memory_limit = '{STAGING_CONFIG['memory_limit']}'")

    def close(self) -> None:
        self.journal.close()
        self.con.close()


@dataclass
class MergeResult:
    merged: bool
    rows: dict[str, int]
    message: str = ""
    failed: bool = False  # the machine refused (disk, permissions), not a busy database


def _merge_failure(exc: BaseException, staging: Path, main: Path) -> EnvironmentFailure:
    """One line for a merge the machine refused: the run is whole in its staging file."""
    fix = {
        "full": "when there is space",
        "read_only": f"when {main.parent} can be written",
        "permission": f"when {main} can be written",
    }.get(classify(exc), "once that is fixed")
    return environment_failure(
        exc,
        f"could not merge into {main}",
        f"nothing was lost: the run is whole in {staging}; run `abharness merge --db {main}` {fix}",
    )


def merge(staging: Path, main: Path, *, attempts: int = 10, wait_s: float = 1.0) -> MergeResult:
    """Upsert every table of `staging` into `main` in one transaction.

    Staged rows replace the rows of `main` with the same key (a resumed run's retried
    calls; a merge made twice). `main` is attached with small row groups, so DuckDB
    writes the transaction's new rows out as they come rather than holding them until
    the commit (`MERGE_ROW_GROUP_SIZE`). On success the staging file is removed.
    If `main` is locked by another process after `attempts` tries, the staging file is
    kept and the result says so.
    """
    check_main_db(main)  # never into a foreign, corrupt or newer database
    if journal_files(staging):  # a run that died: what its journal holds goes in first
        Store(staging).close()
    last: Exception | None = None
    for attempt in range(attempts):
        con = duckdb.connect()
        try:
            con.execute(
                f"ATTACH {sql_string(main)} AS results (ROW_GROUP_SIZE {MERGE_ROW_GROUP_SIZE})"
            )
        except (duckdb.Error, OSError) as exc:
            con.close()
            if classify(exc) != "busy":
                raise _merge_failure(exc, staging, main) from exc
            last = exc
            log.info("%s is locked; merge attempt %d of %d", main, attempt + 1, attempts)
            time.sleep(wait_s * (attempt + 1))
            continue
        try:
            con.execute("USE results")
            migrate(con)
            con.execute(f"ATTACH {sql_string(staging)} AS staging (READ_ONLY)")
            rows = _upsert(con, "staging")
            con.execute("DETACH staging")
        except (duckdb.Error, OSError) as exc:  # rolled back: main is as it was
            raise _merge_failure(exc, staging, main) from exc
        finally:
            con.close()
        for path in (
            staging,
            Path(f"{staging}.wal"),
            *journal_files(staging),
            snapshot_path(staging),
        ):
            path.unlink(missing_ok=True)
        log.info("merged %s into %s: %s", staging.name, main, rows)
        return MergeResult(True, rows)
    return MergeResult(
        False,
        {},
        f"{main} is locked by another process ({last}); results kept in {staging}; "
        "run `abharness merge` when it is free",
    )


def _upsert(con: duckdb.DuckDBPyConnection, source: str) -> dict[str, int]:
    """Every table of the attached database `source` into the connection's current one,
    in one transaction: staged rows replace the rows with their key. The rows per table."""
    rows: dict[str, int] = {}
    with transaction(con):
        # Every key holds its run's id (a call id is a hash of it): the rows of a
        # run `main` has never seen cannot collide, and need no DELETE.
        seen = con.execute(
            f"SELECT count(*) FROM runs WHERE run_id IN (SELECT run_id FROM {source}.runs)"
        ).fetchone()
        # online feedback may score a call of an earlier run (`abharness serve`)
        foreign = con.execute(
            f"SELECT count(*) FROM {source}.scores "
            f"WHERE run_id NOT IN (SELECT run_id FROM {source}.runs)"
        ).fetchone()
        for table, key in KEYS.items():
            # DELETE then INSERT, not INSERT OR REPLACE: the same rows, and the
            # upsert holds twice the memory for a large run (BENCHMARKS.md)
            cols = ", ".join(key)
            if (seen and seen[0]) or (table == "scores" and foreign and foreign[0]):
                con.execute(
                    f"DELETE FROM {table} WHERE ({cols}) IN (SELECT ({cols}) FROM {source}.{table})"
                )
            con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM {source}.{table}")
            rows[table] = con.execute(f"SELECT count(*) FROM {source}.{table}").fetchone()[0]  # type: ignore[index]
        # a resumed run's totals cover its earlier sessions too
        con.execute(f"""
            UPDATE runs SET
                total_cost_usd = coalesce(t.cost, 0), error_calls = t.errors,
                cached_calls = t.cached, not_made_calls = t.not_made
            FROM (SELECT run_id, sum(cost_usd) AS cost,
                         count(*) FILTER (WHERE {MADE_SQL} AND status = 'error') AS errors,
                         count(*) FILTER (WHERE NOT {MADE_SQL}) AS not_made,
                         count(*) FILTER (WHERE cache_hit) AS cached
                  FROM calls WHERE run_id IN (SELECT run_id FROM {source}.runs)
                  GROUP BY run_id) t
            WHERE t.run_id = runs.run_id""")
    return rows


def _drop_key(con: duckdb.DuckDBPyConnection, table: str) -> None:
    """Make an empty keyed `table` a log: the same columns, defaults and NOT NULLs, no
    primary key (DuckDB cannot drop a constraint, so the table is made again)."""
    keyed = con.execute(
        "SELECT count(*) FROM duckdb_constraints() "
        "WHERE table_name = ? AND constraint_type = 'PRIMARY KEY'",
        [table],
    ).fetchone()
    if not (keyed and keyed[0]) or con.execute(f"FROM {table} LIMIT 1").fetchone():
        return  # already a log, or a staging file written before logs had no key
    columns = con.execute(
        "SELECT column_name, data_type, column_default, is_nullable FROM duckdb_columns() "
        "WHERE table_name = ? ORDER BY column_index",
        [table],
    ).fetchall()
    spec = ", ".join(
        f'"{name}" {kind}'
        + (f" DEFAULT {default}" if default is not None else "")
        + ("" if nullable else " NOT NULL")
        for name, kind, default, nullable in columns
    )
    with transaction(con):
        con.execute(f"CREATE TABLE _log ({spec})")
        con.execute(f"DROP TABLE {table}")  # the views name it, and bind when queried
        con.execute(f"ALTER TABLE _log RENAME TO {table}")


def staging_dir(main: Path) -> Path:
    return main.parent / "staging"
