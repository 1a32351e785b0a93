"""DuckDB storage (SPEC §8): numbered migrations, per-run staging, one-transaction merge.

A run never writes the main database while it runs. It writes its own staging file
(``<db dir>/staging/<run_id>.duckdb``), batching inserts, and at the end merges it
into the main file in one transaction, so an analyst holding the main file open
neither blocks nor breaks the run: a merge that cannot get the lock is retried, and
otherwise the staging file stays for ``abharness merge``. Merging is idempotent:
every table has a primary key and rows are upserted.

Schema changes are numbered functions in `MIGRATIONS`, recorded in
``schema_migrations`` and applied when a store opens (simonw/llm's pattern).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd

TABLES = ("runs", "arms", "cases", "calls", "scores")

Migration = Callable[[duckdb.DuckDBPyConnection], None]
MIGRATIONS: list[tuple[int, str, Migration]] = []


def migration(number: int, name: str) -> Callable[[Migration], Migration]:
    def register(fn: Migration) -> Migration:
        MIGRATIONS.append((number, name, fn))
        return fn

    return register


@migration(1, "initial")
def m001_initial(con: duckdb.DuckDBPyConnection) -> None:
    con.execute("""
        CREATE TABLE runs (
            run_id VARCHAR PRIMARY KEY, experiment VARCHAR NOT NULL, description VARCHAR,
            status VARCHAR NOT NULL, started_at TIMESTAMP, finished_at TIMESTAMP,
            spec_hash VARCHAR, spec_yaml VARCHAR, spec_path VARCHAR, git_sha VARCHAR,
            harness_version VARCHAR, host VARCHAR, cached_calls INTEGER DEFAULT 0,
            total_cost_usd DOUBLE DEFAULT 0, total_calls INTEGER, error_calls INTEGER,
            wall_time_s DOUBLE
        )""")
    con.execute("""
        CREATE TABLE arms (
            run_id VARCHAR NOT NULL, arm_id VARCHAR NOT NULL, provider VARCHAR NOT NULL,
            endpoint VARCHAR, model VARCHAR NOT NULL, tier INTEGER, prompt_name VARCHAR,
            prompt_version INTEGER, prompt_hash VARCHAR, params_json JSON,
            is_baseline BOOLEAN, position INTEGER, PRIMARY KEY (run_id, arm_id)
        )""")
    con.execute("""
        CREATE TABLE cases (
            run_id VARCHAR NOT NULL, case_id VARCHAR NOT NULL, vars_json JSON,
            expected_json JSON, PRIMARY KEY (run_id, case_id)
        )""")
    con.execute("""
        CREATE TABLE calls (
            call_id VARCHAR PRIMARY KEY, run_id VARCHAR NOT NULL, arm_id VARCHAR NOT NULL,
            case_id VARCHAR NOT NULL, repeat INTEGER NOT NULL, status VARCHAR NOT NULL,
            error_type VARCHAR, error_message VARCHAR, attempts INTEGER,
            started_at TIMESTAMP, latency_ms DOUBLE, ttft_ms DOUBLE, queue_ms DOUBLE,
            input_tokens INTEGER, output_tokens INTEGER, cache_read_tokens INTEGER,
            cache_write_tokens INTEGER, reasoning_tokens INTEGER,
            est_input_tokens INTEGER, est_method VARCHAR, truncated_json JSON,
            cost_usd DOUBLE, price_source VARCHAR, cache_hit BOOLEAN DEFAULT FALSE,
            request_hash VARCHAR, prompt_text VARCHAR, response_text VARCHAR,
            finish_reason VARCHAR, provider_metrics_json JSON
        )""")
    con.execute("""
        CREATE TABLE scores (
            call_id VARCHAR NOT NULL, run_id VARCHAR NOT NULL, scorer VARCHAR NOT NULL,
            value DOUBLE, passed BOOLEAN, detail VARCHAR, PRIMARY KEY (call_id, scorer)
        )""")
    con.execute("""
        CREATE VIEW call_facts AS
        SELECT c.*, a.provider, a.endpoint, a.model, a.tier, a.prompt_name,
               a.prompt_version, a.prompt_hash, a.params_json, a.is_baseline,
               r.experiment, r.started_at AS run_started_at, r.status AS run_status
        FROM calls c
        JOIN arms a ON a.run_id = c.run_id AND a.arm_id = c.arm_id
        JOIN runs r ON r.run_id = c.run_id""")
    # A call passes when every scorer passed; its score is the mean of its scorers.
    # Failed calls have no scores and count as not passed, score 0.
    con.execute("""
        CREATE VIEW arm_summary AS
        WITH call_scores AS (
            SELECT call_id, avg(value) AS score, bool_and(passed) AS passed
            FROM scores GROUP BY call_id
        )
        SELECT c.run_id, c.arm_id,
               count(*) AS n,
               count(*) FILTER (WHERE c.status = 'ok') AS ok,
               count(*) FILTER (WHERE c.status = 'error') AS errors,
               count(*) FILTER (WHERE c.cache_hit) AS cache_hits,
               avg(CASE WHEN s.passed THEN 1.0 ELSE 0.0 END) AS pass_rate,
               avg(coalesce(s.score, 0.0)) AS mean_score,
               quantile_cont(c.latency_ms, 0.5) FILTER (WHERE c.status = 'ok' AND NOT c.cache_hit) AS latency_p50_ms,
               quantile_cont(c.latency_ms, 0.9) FILTER (WHERE c.status = 'ok' AND NOT c.cache_hit) AS latency_p90_ms,
               quantile_cont(c.ttft_ms, 0.5) FILTER (WHERE c.status = 'ok' AND NOT c.cache_hit) AS ttft_p50_ms,
               sum(c.input_tokens) AS input_tokens,
               sum(c.output_tokens) AS output_tokens,
               sum(c.cost_usd) AS cost_usd,
               avg(c.est_input_tokens - c.input_tokens) AS est_error_mean_tokens
        FROM calls c LEFT JOIN call_scores s ON s.call_id = c.call_id
        GROUP BY c.run_id, c.arm_id""")


@migration(2, "scorer_errors_fail")
def m002_scorer_errors_fail(con: duckdb.DuckDBPyConnection) -> None:
    """A scorer error (passed is null) makes its call not pass, as in the report."""
    con.execute("""
        CREATE OR REPLACE VIEW arm_summary AS
        WITH call_scores AS (
            SELECT call_id, avg(value) AS score, bool_and(coalesce(passed, FALSE)) AS passed
            FROM scores GROUP BY call_id
        )
        SELECT c.run_id, c.arm_id,
               count(*) AS n,
               count(*) FILTER (WHERE c.status = 'ok') AS ok,
               count(*) FILTER (WHERE c.status = 'error') AS errors,
               count(*) FILTER (WHERE c.cache_hit) AS cache_hits,
               avg(CASE WHEN s.passed THEN 1.0 ELSE 0.0 END) AS pass_rate,
               avg(coalesce(s.score, 0.0)) AS mean_score,
               quantile_cont(c.latency_ms, 0.5) FILTER (WHERE c.status = 'ok' AND NOT c.cache_hit) AS latency_p50_ms,
               quantile_cont(c.latency_ms, 0.9) FILTER (WHERE c.status = 'ok' AND NOT c.cache_hit) AS latency_p90_ms,
               quantile_cont(c.ttft_ms, 0.5) FILTER (WHERE c.status = 'ok' AND NOT c.cache_hit) AS ttft_p50_ms,
               sum(c.input_tokens) AS input_tokens,
               sum(c.output_tokens) AS output_tokens,
               sum(c.cost_usd) AS cost_usd,
               avg(c.est_input_tokens - c.input_tokens) AS est_error_mean_tokens
        FROM calls c LEFT JOIN call_scores s ON s.call_id = c.call_id
        GROUP BY c.run_id, c.arm_id""")


@migration(3, "judges")
def m003_judges(con: duckdb.DuckDBPyConnection) -> None:
    """Judge arms (role 'judge') and, on a judge's calls, the call it graded."""
    con.execute("ALTER TABLE arms ADD COLUMN role VARCHAR DEFAULT 'arm'")
    con.execute("ALTER TABLE calls ADD COLUMN judged_call_id VARCHAR")


def migrate(con: duckdb.DuckDBPyConnection) -> list[int]:
    """Apply pending migrations in order; return the numbers applied."""
    con.execute("""
        CREATE TABLE IF NOT EXISTS schema_migrations (
            version INTEGER PRIMARY KEY, name VARCHAR, applied_at TIMESTAMP DEFAULT now()
        )""")
    done = {row[0] for row in con.execute("SELECT version FROM schema_migrations").fetchall()}
    applied = []
    for number, name, fn in sorted(MIGRATIONS, key=lambda m: m[0]):
        if number in done:
            continue
        con.execute("BEGIN TRANSACTION")
        try:
            fn(con)
            con.execute(
                "INSERT INTO schema_migrations (version, name) VALUES (?, ?)", [number, name]
            )
            con.execute("COMMIT")
        except Exception:
            con.execute("ROLLBACK")
            raise
        applied.append(number)
    return applied


class Store:
    """A read-write connection to one DuckDB file, migrated on open."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.con = duckdb.connect(str(self.path))
        migrate(self.con)

    def insert(self, table: str, rows: Iterable[dict[str, Any]]) -> int:
        """Upsert a batch of rows in one statement; columns matched by name."""
        if table not in TABLES:
            raise ValueError(table)
        frame = pd.DataFrame(list(rows))
        if frame.empty:
            return 0
        self.con.register("_batch", frame)
        try:
            self.con.execute(f"INSERT OR REPLACE INTO {table} BY NAME SELECT * FROM _batch")
        finally:
            self.con.unregister("_batch")
        return len(frame)

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
            con.execute(f"ATTACH '{staging}' AS staging (READ_ONLY)")
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


def has_column(con: duckdb.DuckDBPyConnection, table: str, column: str) -> bool:
    """For readers of a database not yet migrated (opened read-only, it cannot be)."""
    row = con.execute(
        "SELECT count(*) FROM information_schema.columns WHERE table_name = ? AND column_name = ?",
        [table, column],
    ).fetchone()
    return bool(row and row[0])


class DatabaseBusy(RuntimeError):
    """The main database is locked by another process."""


def staging_dir(main: Path) -> Path:
    return main.parent / "staging"


def recorded_prompt_hashes(main: Path) -> dict[tuple[str, int], set[str]]:
    """Content hashes recorded per (prompt_name, prompt_version) in the main database.

    Opens the file read-only and writes nothing; a missing file records nothing.
    """
    if not main.exists():
        return {}
    try:
        con = duckdb.connect(str(main), read_only=True)
    except duckdb.IOException as exc:  # an analyst holds it read-write
        raise DatabaseBusy(f"{main} is locked by another process ({exc})") from exc
    try:
        has_arms = con.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_name = 'arms'"
        ).fetchone()
        if not has_arms or not has_arms[0]:
            return {}
        out: dict[tuple[str, int], set[str]] = {}
        for name, version, digest in con.execute(
            "SELECT DISTINCT prompt_name, prompt_version, prompt_hash FROM arms "
            "WHERE prompt_name IS NOT NULL"
        ).fetchall():
            out.setdefault((name, int(version)), set()).add(digest)
        return out
    finally:
        con.close()
