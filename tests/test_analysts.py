"""The analysts' surface: the Parquet export, `abharness sql` formats and input, one
line when the database is busy, the views, docs/schema.md's example queries, and
`abharness compare last/previous`."""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import pyarrow.dataset as pads
import pytest
from click.testing import CliRunner

from abharness.cli.main import cli
from abharness.run.experiment import run_experiment
from abharness.store.migrations import TABLES

from .conftest import write
from .fake_server import FakeServer, Fault, prompt_text

pytestmark = pytest.mark.slow  # subprocesses and full runs: the whole suite runs them
SCHEMA_DOC = Path(__file__).resolve().parents[1] / "docs/schema.md"


class Answers:
    def __init__(self) -> None:
        self.wrong: set[tuple[str, str]] = set()

    def __call__(self, body: dict[str, Any]) -> str:
        case = prompt_text(body).rsplit("case ", 1)[1].split("?")[0].strip()
        return "no idea" if (body["model"], case) in self.wrong else f"answer-{case}"


@pytest.fixture(scope="module")
def database(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Path, Answers, FakeServer, list[str]]]:
    """Runs of experiment 'analysts', 30 cases: one stopped by its cost cap, a clean
    one, one where arm-b fails 15 cases (with a retried call and a server answering
    another model), then two nightly runs, the second with arm-a failing one case."""
    root = tmp_path_factory.mktemp("analysts")
    answers = Answers()
    with FakeServer(answers) as server, pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("FAKE_KEY", "k")
        write(
            root / "prompts/q/v1.j2", "{% block prompt %}Answer for case {{ id }}?{% endblock %}\n"
        )
        cases = "\n".join(f"  - {{id: c{i}, topic: t{i % 2}}}" for i in range(30))
        spec = write(
            root / "spec.yaml",
            f"""
name: analysts
prompts_dir: prompts
prompt: q@1
baseline: arm-a
defaults: {{temperature: 0, max_tokens: 8}}
cases:
{cases}
providers:
  fake: {{type: openai, base_url: "{server.url}/v1", api_key_env: FAKE_KEY, rpm: 600000,
          price: {{input_per_mtok: 1000, output_per_mtok: 1000}}}}
arms:
  - {{id: arm-a, provider: fake, model: model-a}}
  - {{id: arm-b, provider: fake, model: model-b}}
scorers:
  - {{type: contains, expected: "answer-{{{{ case.id }}}}"}}
gates: {{score_drop: 0.05}}
max_error_rate: 1
""",
        )
        db = root / "r.duckdb"
        budget = write(root / "budget.yaml", spec.read_text() + "max_cost_usd: 0.3\n")
        runs = [run_experiment(budget, db=db, use_cache=False).run_id]  # stops part-way
        runs.append(run_experiment(spec, db=db, use_cache=False).run_id)
        answers.wrong = {("model-b", f"c{i}") for i in range(1, 16)}
        server.faults.append(Fault(status=500))
        server.served_model = "model-b-2026"
        runs.append(run_experiment(spec, db=db, use_cache=False).run_id)
        server.served_model = None
        runs.append(run_experiment(spec, db=db, use_cache=False, kind="nightly").run_id)
        answers.wrong.add(("model-a", "c3"))
        runs.append(run_experiment(spec, db=db, use_cache=False, kind="nightly").run_id)
        yield db, answers, server, runs


def _rows(frame: pd.DataFrame) -> list[list[Any]]:
    """Values with every missing value as None, whichever reader made the frame."""
    values = frame.astype(object)
    return values.where(pd.notna(values), None).values.tolist()


def sql(db: Path, *args: str, stdin: str | None = None) -> Any:
    return CliRunner().invoke(cli, ["sql", *args, "--db", str(db)], input=stdin)


def test_parquet_export_reads_back_row_for_row_and_is_idempotent(database, tmp_path) -> None:
    db, *_ = database
    out = tmp_path / "export"
    for _ in range(2):  # the second export replaces the first, identically
        result = CliRunner().invoke(cli, ["export", "--parquet", str(out), "--db", str(db)])
        assert result.exit_code == 0, result.output
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    con = duckdb.connect(str(db), read_only=True)
    try:
        for table in TABLES:
            original = con.execute(f"SELECT * FROM {table}").df()
            if len(original) == 0:  # batches: no run here used batch mode
                assert not list((out / table).iterdir()), table
                continue
            key = [
                c
                for c in ("run_id", "arm_id", "case_id", "call_id", "scorer")
                if c in original.columns
            ]
            by_duckdb = duckdb.sql(
                f"SELECT * FROM read_parquet('{out / table}/**/*.parquet', hive_partitioning = true)"
            ).df()
            by_arrow = (
                pads.dataset(out / table, format="parquet", partitioning="hive")
                .to_table()
                .to_pandas()
            )
            for frame in (by_duckdb, by_arrow):
                assert len(frame) == len(original), table
                back = frame[list(original.columns)].sort_values(key).reset_index(drop=True)
                want = original.sort_values(key).reset_index(drop=True)
                if "experiment" in want.columns:  # a partition column: strings from the path
                    back["experiment"] = back["experiment"].astype(str)
                assert _rows(back) == _rows(want), table
    finally:
        con.close()
    parts = sorted(
        p.relative_to(out / "calls").parts[:2] for p in (out / "calls").rglob("*.parquet")
    )
    assert parts[0][0] == "experiment=analysts" and parts[0][1].startswith("date=")


def test_sql_formats_stdin_file_and_no_cropping(database, tmp_path) -> None:
    db, *_ = database
    query = "SELECT run_id, kind, experiment FROM runs ORDER BY started_at"
    table = sql(db, query)
    run_ids = re.findall(r"\d{8}-\d{6}-[0-9a-f]{6}", table.output)
    assert table.exit_code == 0 and len(run_ids) == 5  # piped: nothing cropped to "2026…"
    rows = list(csv.DictReader(io.StringIO(sql(db, query, "--format", "csv").output)))
    assert [r["run_id"] for r in rows] == run_ids and rows[-1]["kind"] == "nightly"
    data = json.loads(sql(db, "-", "--format", "json", stdin=query).output)
    assert [r["run_id"] for r in data] == run_ids
    file = write(tmp_path / "q.sql", query + ";\n")
    assert json.loads(sql(db, "--file", str(file), "--format", "json").output) == data
    bad = sql(db, "SELECT nope FROM runs")
    assert bad.exit_code == 1 and len(bad.output.strip().splitlines()) == 1


def test_a_busy_database_is_one_line_for_sql_report_and_compare(database) -> None:
    db, *_ = database
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import duckdb, time; c = duckdb.connect({str(db)!r}); print('open', flush=True); time.sleep(30)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "open"
        for args in (["sql", "SELECT 1"], ["report", "--last"], ["compare", "previous", "last"]):
            result = CliRunner().invoke(cli, [*args, "--db", str(db)])
            lines = result.output.strip().splitlines()
            assert result.exit_code == 1 and len(lines) == 1, (args, result.output)
            assert "open for writing in another process" in lines[0] and "PID" in lines[0]
    finally:
        holder.kill()
        holder.wait()


def test_views_roles_and_trend(database) -> None:
    db, _, _, runs = database
    con = duckdb.connect(str(db), read_only=True)
    try:
        facts = con.execute(
            "SELECT role, made, passed, score FROM call_facts WHERE run_id = ? AND arm_id = 'arm-b' AND case_id = 'c1'",
            [runs[2]],
        ).fetchall()
        assert facts == [("arm", True, False, 0.0)]
        trend = con.execute(
            "SELECT arm_id, cases, pass_rate FROM nightly_trend ORDER BY started_at, arm_id"
        ).fetchall()
        assert trend == [
            ("arm-a", 30, 1.0),
            ("arm-b", 30, 0.5),
            ("arm-a", 30, 29 / 30),
            ("arm-b", 30, 0.5),
        ]
    finally:
        con.close()


def _doc_queries() -> list[str]:
    return re.findall(r"```sql\n(.*?)```", SCHEMA_DOC.read_text(), re.S)


def test_schema_doc_has_ten_example_queries() -> None:
    assert len(_doc_queries()) >= 10


@pytest.mark.parametrize("index", range(10))
def test_schema_doc_example_query_runs(database, index: int) -> None:
    db, *_ = database
    query = _doc_queries()[index]
    con = duckdb.connect(str(db), read_only=True)
    try:
        rows = con.execute(query).fetchall()
    finally:
        con.close()
    title = query.splitlines()[0]
    assert rows, f"{title}: no rows on the fixture database"
    if title.startswith("-- 5."):
        assert [r[:2] for r in rows] == [("arm-a", "c3")]


def test_compare_previous_last_lists_regressed_cases_in_spec_order(database) -> None:
    db, _, _, runs = database
    result = CliRunner().invoke(
        cli, ["compare", runs[1], runs[2], "--db", str(db), "--format", "json"]
    )
    data = json.loads(result.output)
    assert result.exit_code == 3 and [g["arm_id"] for g in data["gates"]] == ["arm-a", "arm-b"]
    regressed = data["regressed_cases"]["arm-b"]
    assert len(regressed) == 15 and regressed[:2] == ["c1 (1/1 → 0/1)", "c10 (1/1 → 0/1)"]
    assert data["regressed_cases"]["arm-a"] == []
    fail = next(g for g in data["gates"] if g["status"] == "FAIL")
    assert fail["arm_id"] == "arm-b" and "pts (99% CI" in fail["value"]
    text = CliRunner().invoke(cli, ["compare", "previous", "last", "--db", str(db)])
    assert text.exit_code == 0, text.output  # one case of 30 is not a drop beyond 5 points
    assert "arm-a: 1 case(s) passed less often than before: c3 (1/1 → 0/1)" in text.output


def test_compare_warns_when_the_specs_differ_and_refuses_cached_candidates(
    database, tmp_path
) -> None:
    db, answers, server, runs = database
    spec = db.parent / "spec.yaml"
    changed = write(
        tmp_path / "spec.yaml", spec.read_text().replace("max_tokens: 8", "max_tokens: 9")
    )
    (tmp_path / "prompts").symlink_to(db.parent / "prompts")
    cached_db = tmp_path / "c.duckdb"
    first = run_experiment(changed, db=cached_db)
    second = run_experiment(changed, db=cached_db)  # every call from the cache
    result = CliRunner().invoke(
        cli, ["compare", first.run_id, second.run_id, "--db", str(cached_db)]
    )
    assert result.exit_code == 0 and "NOT EVALUATED" in result.output and "cache" in result.output
    db_copy = tmp_path / "both.duckdb"
    db_copy.write_bytes(db.read_bytes())
    run_experiment(changed, db=db_copy, use_cache=False)
    warned = CliRunner().invoke(cli, ["compare", runs[-1], "last", "--db", str(db_copy)])
    assert "specs differ" in warned.output and "max_tokens: 9" in warned.output
