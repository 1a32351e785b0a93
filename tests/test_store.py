from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

from abharness.store.db import LOGS, Store, merge
from abharness.store.migrations import KEYS, MIGRATIONS, migrate
from abharness.store.queries import recorded_prompt_hashes
from abharness.store.recorder import Recorder, staging_path
from abharness.store.records import CallRecord, ScoreRecord

CONTRACT = {
    "runs": "run_id experiment description status started_at finished_at spec_hash spec_yaml git_sha "
    "harness_version host cached_calls total_cost_usd",
    "arms": "run_id arm_id provider endpoint model tier prompt_name prompt_version prompt_hash params_json is_baseline",
    "cases": "run_id case_id vars_json expected_json",
    "calls": "call_id run_id arm_id case_id repeat status error_type error_message attempts started_at latency_ms "
    "ttft_ms queue_ms input_tokens output_tokens cache_read_tokens cache_write_tokens reasoning_tokens "
    "est_input_tokens est_method truncated_json cost_usd price_source cache_hit request_hash prompt_text "
    "response_text finish_reason provider_metrics_json",
    "scores": "call_id run_id scorer value passed detail",
}


def _stage(path: Path, run_id: str = "r1", calls: int = 3) -> Path:
    store = Store(path)
    store.insert("runs", [{"run_id": run_id, "experiment": "e", "status": "completed"}])
    store.insert(
        "arms",
        [
            {
                "run_id": run_id,
                "arm_id": "a",
                "provider": "p",
                "model": "m",
                "prompt_name": "q",
                "prompt_version": 1,
                "prompt_hash": "h1",
                "is_baseline": True,
            }
        ],
    )
    store.insert(
        "calls",
        [
            {
                "call_id": f"{run_id}-{i}",
                "run_id": run_id,
                "arm_id": "a",
                "case_id": str(i),
                "repeat": 0,
                "status": "ok",
                "attempts": 1,
                "latency_ms": 10.0 * i,
            }
            for i in range(calls)
        ],
    )
    store.insert(
        "scores",
        [
            {
                "call_id": f"{run_id}-{i}",
                "run_id": run_id,
                "scorer": "s",
                "value": 1.0,
                "passed": True,
            }
            for i in range(calls)
        ],
    )
    store.close()
    return path


def test_contract_tables_views_and_migrations(tmp_path: Path) -> None:
    store = Store(tmp_path / "a.duckdb")
    for table, columns in CONTRACT.items():
        have = {r[0] for r in store.con.execute(f"DESCRIBE {table}").fetchall()}
        assert set(columns.split()) <= have, (table, set(columns.split()) - have)
    for view in ("call_facts", "arm_summary"):
        store.con.execute(f"SELECT * FROM {view}").fetchall()
    applied = store.con.execute(
        "SELECT version, name FROM schema_migrations ORDER BY version"
    ).fetchall()
    assert applied == [(n, name) for n, name, _ in sorted(MIGRATIONS)]
    store.close()
    Store(tmp_path / "a.duckdb").close()  # reopening applies nothing twice


def test_merge_is_one_upsert_and_idempotent(tmp_path: Path) -> None:
    main = tmp_path / "main.duckdb"
    staging = _stage(tmp_path / "staging/r1.duckdb")
    copy = tmp_path / "copy.duckdb"
    copy.write_bytes(staging.read_bytes())
    result = merge(staging, main)
    assert result.merged and result.rows["calls"] == 3 and not staging.exists()
    assert merge(copy, main).merged  # the same run merged again adds nothing
    con = duckdb.connect(str(main), read_only=True)
    assert con.execute("SELECT count(*) FROM calls").fetchone() == (3,)
    assert con.execute("SELECT n, ok, pass_rate FROM arm_summary").fetchone() == (3, 3, 1.0)
    con.close()
    assert recorded_prompt_hashes(main) == {("q", 1): {"h1"}}


def test_a_later_merge_replaces_rows_by_key_and_recounts_the_run(tmp_path: Path) -> None:
    """A resumed run's second session re-makes calls that were never made: its rows
    replace the first session's, and the run's totals cover both sessions."""
    main = tmp_path / "main.duckdb"
    assert merge(_stage(tmp_path / "staging/s1.duckdb", calls=3), main).merged
    again = Store(tmp_path / "staging/s2.duckdb")
    again.insert("runs", [{"run_id": "r1", "experiment": "e", "status": "completed"}])
    again.insert(
        "calls",
        [
            {
                "call_id": "r1-1",
                "run_id": "r1",
                "arm_id": "a",
                "case_id": "1",
                "repeat": 0,
                "status": "error",
                "error_type": "budget",
                "attempts": 0,
            }
        ],
    )
    again.close()
    assert merge(tmp_path / "staging/s2.duckdb", main).merged
    con = duckdb.connect(str(main), read_only=True)
    rows = con.execute("SELECT call_id, status FROM calls ORDER BY call_id").fetchall()
    assert rows == [("r1-0", "ok"), ("r1-1", "error"), ("r1-2", "ok")]
    # a call never made (the cost cap) is not an error: it is counted apart
    assert con.execute("SELECT error_calls, not_made_calls FROM runs").fetchone() == (0, 1)
    con.close()


def _primary_keys(con: duckdb.DuckDBPyConnection) -> dict[str, tuple[str, ...]]:
    found = con.execute(
        "SELECT table_name, constraint_column_names FROM duckdb_constraints() "
        "WHERE constraint_type = 'PRIMARY KEY' AND table_name IN (SELECT unnest(?::VARCHAR[]))",
        [list(KEYS)],
    ).fetchall()
    return {t: tuple(cols) for t, cols in found}


def test_keys_are_the_main_files_primary_keys_and_staging_logs_have_none(
    tmp_path: Path,
) -> None:
    main = tmp_path / "main.duckdb"
    assert merge(_stage(tmp_path / "staging/r1.duckdb"), main).merged
    con = duckdb.connect(str(main), read_only=True)
    assert _primary_keys(con) == KEYS
    con.close()
    store = Store(tmp_path / "staging/r2.duckdb")
    assert _primary_keys(store.con) == {t: KEYS[t] for t in KEYS if t not in LOGS}
    # the same columns, defaults and NOT NULLs as the main file's tables
    store.insert_calls([CallRecord("c1", "r2", "a", "k", 0, status="ok")])
    assert store.con.execute("SELECT cache_hit FROM calls").fetchone() == (False,)
    try:
        store.con.execute("INSERT INTO calls (call_id, run_id) VALUES ('c2', 'r2')")
    except duckdb.ConstraintException as exc:
        assert "NOT NULL" in str(exc)
    else:
        raise AssertionError("a call without an arm was staged")
    store.close()


def test_reopen_keeps_finished_calls_and_deletes_what_the_resume_writes_again(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path / "staging/r1.duckdb")
    store.insert("cases", [{"run_id": "r1", "case_id": "k"}])
    store.insert_calls(
        [
            CallRecord("done", "r1", "a", "k", 0, status="ok", attempts=1),
            CallRecord("budget", "r1", "a", "k", 1, status="error", error_type="budget"),
            CallRecord(
                "judge", "r1", "j", "k", 1, status="ok", attempts=1, judged_call_id="budget"
            ),
            CallRecord(
                "judge2",
                "r1",
                "j",
                "k",
                0,
                status="error",
                error_type="budget",
                judged_call_id="done",
            ),
        ]
    )
    store.insert_scores(
        [ScoreRecord(c, "r1", "contains", 1.0, True, "") for c in ("done", "budget", "judge")]
    )
    assert store.reopen("r1") == {"done", "judge"}
    calls = store.con.execute("SELECT call_id FROM calls ORDER BY 1").fetchall()
    # the judge of a finished call is not made again: its row stays
    assert calls == [("done",), ("judge2",)]
    assert store.con.execute("SELECT call_id FROM scores").fetchall() == [("done",)]
    assert store.con.execute("SELECT count(*) FROM cases").fetchone() == (0,)
    store.close()


def test_insert_refuses_rows_with_different_keys(tmp_path: Path) -> None:
    store = Store(tmp_path / "a.duckdb")
    rows = [{"run_id": "r", "case_id": "1"}, {"run_id": "r", "case_id": "2", "vars_json": "{}"}]
    try:
        store.insert("cases", rows)
    except ValueError as exc:
        assert "differ in their keys" in str(exc)
    else:
        raise AssertionError("rows with different keys were inserted")
    assert store.con.execute("SELECT count(*) FROM cases").fetchone() == (0,)
    store.close()


def test_merge_waits_for_a_lock_then_keeps_the_staging_file(tmp_path: Path) -> None:
    main = tmp_path / "main.duckdb"
    with duckdb.connect(str(main)) as con:
        migrate(con)
    staging = _stage(tmp_path / "staging/r2.duckdb", "r2")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import duckdb, time; c = duckdb.connect({str(main)!r}); print('locked', flush=True); time.sleep(30)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        started = time.monotonic()
        result = merge(staging, main, attempts=2, wait_s=0.05)
        assert not result.merged and staging.exists()
        assert "abharness merge" in result.message and time.monotonic() - started < 10
    finally:
        holder.kill()
        holder.wait()
    assert merge(staging, main).merged  # later, once the analyst is gone
    assert duckdb.connect(str(main), read_only=True).execute(
        "SELECT count(*) FROM calls"
    ).fetchone() == (3,)


def test_reports_read_a_database_from_before_the_latest_migrations(
    project, fake_provider, monkeypatch
) -> None:
    """`report` opens the database read-only and cannot migrate it: it must cope."""
    from click.testing import CliRunner

    from abharness.cli.main import cli
    from abharness.run.experiment import run_experiment
    from abharness.store.queries import Results

    out = run_experiment("experiments/spec.yaml", db=project / "old.duckdb")
    con = duckdb.connect(str(out.db))  # back to the schema of migration 2
    for table, column in (
        ("arms", "role"),
        ("arms", "not_run_reason"),
        ("calls", "judged_call_id"),
        ("calls", "request_id"),
        ("calls", "served_model"),
        ("calls", "attempt_errors_json"),
    ):
        con.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
    con.execute("DELETE FROM schema_migrations WHERE version >= 3")
    con.close()
    with Results(out.db) as old:
        assert not old.has_column("arms", "role")
    result = CliRunner().invoke(
        cli, ["report", out.run_id, "--db", str(out.db), "--format", "json"]
    )
    assert result.exit_code == 0, result.output


def test_records_are_the_calls_and_scores_columns(tmp_path: Path) -> None:
    from abharness.store.records import CALL_COLUMNS, SCORE_COLUMNS

    store = Store(tmp_path / "s.duckdb")
    for table, fields in (("calls", CALL_COLUMNS), ("scores", SCORE_COLUMNS)):
        columns = [r[0] for r in store.con.execute(f"DESCRIBE {table}").fetchall()]
        assert sorted(columns) == sorted(fields), table
    store.close()


def test_a_path_with_a_quote_merges(tmp_path: Path) -> None:
    folder = tmp_path / "it's here"
    staging = Store(folder / "staging" / "r1.duckdb")
    staging.insert("runs", [{"run_id": "r1", "experiment": "x", "status": "completed"}])
    staging.insert_calls([CallRecord("c1", "r1", "a", "k", 0, status="ok")])
    staging.close()
    result = merge(staging.path, folder / "main.duckdb", attempts=1)
    assert result.merged and result.rows["calls"] == 1
    resumed = Store(folder / "staging" / "r1-again.duckdb")
    assert resumed.copy_run_from(folder / "main.duckdb", "r1") == set()  # ATTACH, quoted path
    resumed.close()


@pytest.mark.slow
def test_shed_cache_drops_what_duckdb_keeps_of_the_written_file(tmp_path: Path) -> None:
    store = Store(tmp_path / "staging/r.duckdb")
    for start in range(0, 40_000, 256):  # as the writer does, a batch at a time
        store.insert_calls(
            [
                # text that does not compress away: the cache must outgrow the shed size
                CallRecord(
                    f"{i:024x}", "r", "a", str(i), 0, status="ok", response_text=f"{i:024x}" * 20
                )
                for i in range(start, start + 256)
            ]
        )

    def cached() -> int:
        sql = "SELECT sum(memory_usage_bytes) FROM duckdb_memory() WHERE tag = 'BASE_TABLE'"
        return int(store.con.execute(sql).fetchall()[0][0] or 0)

    def limit() -> str:
        return str(store.con.execute("SELECT current_setting('memory_limit')").fetchall()[0][0])

    before, limit_before = cached(), limit()
    store.shed_cache()
    assert before > 4 * 2**20 and cached() < before / 2, (before, cached())
    assert limit() == limit_before  # put back
    assert store.con.execute("SELECT count(*) FROM calls").fetchall() == [(40_192,)]
    store.close()


def test_the_recorder_owns_a_runs_rows_and_its_staging_file(tmp_path: Path) -> None:
    """`run`, `nightly` and `serve` hand it plain rows; it adds the run id, the status
    and the times, numbers the arms, and merges its file into the main database."""
    db = tmp_path / "main.duckdb"
    arm = {"arm_id": "a", "provider": "p", "model": "m", "prompt_name": "q"}
    recorder = Recorder.start(
        db, "r1", {"experiment": "e", "kind": "run"}, [arm, arm | {"arm_id": "b"}]
    )
    assert recorder.path == staging_path(db, "r1") == tmp_path / "staging/r1.duckdb"
    run = recorder.store.con.execute("SELECT status, started_at IS NOT NULL FROM runs").fetchall()
    arms = recorder.store.con.execute(
        "SELECT run_id, arm_id, position FROM arms ORDER BY 3"
    ).fetchall()
    assert run == [("running", True)] and arms == [("r1", "a", 0), ("r1", "b", 1)]
    recorder.finish("completed", wall_time_s=1.5)
    recorder.close()
    assert recorder.merge(attempts=1).merged and not recorder.path.exists()
    resumed, made = Recorder.resume(db, "r1")  # merged: its rows come back from main
    assert made == set() and resumed.path == recorder.path
    status = resumed.store.con.execute(
        "SELECT status, finished_at IS NOT NULL, wall_time_s FROM runs"
    )
    assert status.fetchall() == [("running", True, 1.5)]
    resumed.close()
