"""`abharness sql` only reads: every escape an attacker tried is refused with one line and
exit 1, nothing is written, and the response cache cannot be poisoned through it."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest
from click.testing import CliRunner

from abharness.cli.main import cli
from abharness.run.experiment import run_experiment
from abharness.store.queries import QueryRefused, check_read_only

from .conftest import capital_answers


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "results/abharness.duckdb"
    path.parent.mkdir()
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE runs AS SELECT 'r1' AS run_id, 'line one\nline two' AS note")
    con.close()
    return path


def sql(db: Path, query: str, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["sql", query, "--db", str(db), *args])
    return result.exit_code, result.stdout, result.stderr


ESCAPES = [
    "COPY (SELECT 1) TO '{out}/x.csv'",
    "COPY runs TO '{out}/x.parquet' (FORMAT PARQUET)",
    "EXPORT DATABASE '{out}/dump'",
    "SELECT * FROM read_csv('/etc/passwd')",
    "SELECT * FROM read_text('/etc/hostname')",
    "SELECT * FROM glob('/etc/*')",
    "SELECT * FROM '/etc/passwd'",
    "ATTACH '{out}/other.duckdb' AS o",
    "ATTACH '{out}/cache.duckdb' AS c (READ_WRITE)",
    "INSTALL httpfs",
    "LOAD httpfs",
    "SET memory_limit = '1GB'",
    "RESET memory_limit",
    "PRAGMA memory_limit = '1GB'",
    "PRAGMA enable_profiling",
    "SELECT 1; SELECT 2",
    "SELECT 1; COPY (SELECT 1) TO '{out}/y.csv'",
    "CREATE TEMP TABLE t AS SELECT 1",
    "CREATE MACRO m() AS 1",
    "CHECKPOINT",
    "VACUUM",
    "IMPORT DATABASE '{out}/dump'",
    "DETACH abharness",
    "USE memory",
    "PREPARE p AS SELECT 1",
    "BEGIN TRANSACTION",
]


@pytest.mark.parametrize("template", ESCAPES)
def test_every_escape_is_refused_with_one_line_and_writes_nothing(
    db: Path, tmp_path: Path, template: str
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    before = sorted(p.name for p in db.parent.iterdir())
    code, stdout, stderr = sql(db, template.format(out=out))
    assert code == 1, (template, stdout, stderr)
    assert stderr.startswith("error: ")
    assert len(stderr.strip().splitlines()) <= 2, stderr  # the error and "nothing was run"
    assert "Traceback" not in stderr
    assert list(out.iterdir()) == []
    assert sorted(p.name for p in db.parent.iterdir()) == before


@pytest.mark.parametrize(
    "query",
    [
        "SELECT * FROM runs",
        "WITH r AS (SELECT * FROM runs) SELECT count(*) FROM r",
        "FROM runs",
        "DESCRIBE runs",
        "SHOW TABLES",
        "SUMMARIZE runs",
        "EXPLAIN SELECT * FROM runs",
        "PRAGMA table_info('runs')",
        "PRAGMA show_tables",
        "CALL pragma_table_info('runs')",
        "PRAGMA database_size",
        "SELECT current_setting('memory_limit')",
        "SELECT 1;",
        "SELECT 1 -- a comment",
    ],
)
def test_queries_that_only_read_still_run(db: Path, query: str) -> None:
    code, stdout, stderr = sql(db, query)
    assert code == 0, (query, stderr)
    assert stdout.strip()


def test_check_read_only_names_what_it_refused() -> None:
    with pytest.raises(QueryRefused, match="2 statements"):
        check_read_only("SELECT 1; SELECT 2")
    with pytest.raises(QueryRefused, match="refused COPY statement"):
        check_read_only("COPY (SELECT 1) TO 'x.csv'")
    with pytest.raises(QueryRefused, match="no statement"):
        check_read_only("-- nothing")


def test_duckdb_hints_reach_the_user_on_one_line(db: Path) -> None:
    code, _, stderr = sql(db, "SELECT * FROM runz")
    assert code == 1
    assert "Did you mean" in stderr and "runs" in stderr
    assert len(stderr.strip().splitlines()) == 1
    code, _, stderr = sql(db, "SELECT run_idd FROM runs")
    assert "Candidate bindings" in stderr and len(stderr.strip().splitlines()) == 1


def test_csv_ends_lines_with_lf_and_table_keeps_a_row_on_one_line(db: Path) -> None:
    _, stdout, _ = sql(db, "SELECT run_id FROM runs", "--format", "csv")
    assert stdout == "run_id\nr1\n"
    _, stdout, _ = sql(db, "SELECT run_id, note FROM runs", "--format", "table")
    lines = stdout.splitlines()
    assert len(lines) == 3  # header, rule, one row
    assert "line one\\nline two" in lines[2]
    _, stdout, _ = sql(db, "SELECT note FROM runs", "--format", "json")
    assert '"line one\\nline two"' in stdout  # JSON keeps the value as it is


@pytest.mark.slow
def test_the_response_cache_cannot_be_poisoned_through_sql(
    project: Path, fake_provider, monkeypatch
) -> None:
    """The attack that worked: ATTACH the cache read-write, UPDATE it, and the next run
    served the planted text as `ok`. Every form of it is refused; the next run's cache
    hits carry what the model said."""
    fake_provider.script = capital_answers()
    spec = project / "experiments/spec.yaml"
    db = project / "results/abharness.duckdb"
    first = run_experiment(spec, db=db)
    cache = db.parent / "cache.duckdb"
    assert cache.exists()
    attacks = [
        f"ATTACH '{cache}' AS c (READ_WRITE)",
        f"ATTACH '{cache}' AS c (READ_WRITE); UPDATE c.response_cache SET response_text = 'PLANTED'",
        "UPDATE response_cache SET response_text = 'PLANTED'",
        f"SELECT * FROM query('ATTACH ''{cache}'' AS c')",
    ]
    for attack in attacks:
        code, _, stderr = sql(db, attack)
        assert code == 1, (attack, stderr)
    con = duckdb.connect(str(cache), read_only=True)
    planted = con.execute(
        "SELECT count(*) FROM response_cache WHERE response_text = 'PLANTED'"
    ).fetchone()
    con.close()
    assert planted == (0,)
    second = run_experiment(spec, db=db)
    assert second.stats.cache_hits == second.stats.calls == first.stats.calls
    con = duckdb.connect(str(db), read_only=True)
    texts = {
        r[0]
        for r in con.execute(
            "SELECT DISTINCT response_text FROM calls WHERE run_id = ?", [second.run_id]
        ).fetchall()
    }
    con.close()
    assert texts == {"Paris", "Berlin", "Rome", "Madrid", "Tokyo", "Lima"}
