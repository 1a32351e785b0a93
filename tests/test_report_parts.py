"""The report's parts of issues 19 and 22, in every format: a run that is not complete
says so with the resume command; an arm whose server sent no token counts (or whose
counts are a proxy's estimate) is named with the fix; a panel is compared with each of
its members, a route shows who served and its fallback rate, and a composite arm's
parts are never arms of the report."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pytest
from click.testing import CliRunner

from abharness.cli.main import cli
from abharness.report.build import build_report
from abharness.run.experiment import run_experiment
from abharness.store.queries import Results

from .conftest import written_report
from .fake_server import FakeServer
from .test_composite import PANEL, ROUTE, answers, project


def _json(db: Path, run_id: str) -> dict:
    result = CliRunner().invoke(cli, ["report", run_id, "--format", "json", "--db", str(db)])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


@pytest.fixture(autouse=True)
def key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_KEY", "k")


@pytest.mark.slow
def test_panel_against_each_member_and_route_fallbacks(tmp_path: Path) -> None:
    with FakeServer(answers) as server:
        spec = project(tmp_path, server.url, PANEL + ROUTE)
        out = run_experiment(spec, db=tmp_path / "r.duckdb")
    report = _json(out.db, out.run_id)
    arms = {a["arm_id"]: a for a in report["arms"]}
    assert list(arms) == ["single", "panel", "robust"]  # parts are not arms
    assert {c["arm_id"] for c in report["comparisons"]} == {"panel", "robust"}
    panel = arms["panel"]
    assert panel["kind"] == "panel" and panel["n"] == 6
    assert [(p["role"], p["parent_arm_id"]) for p in panel["parts"]] == [
        ("member", "panel"),
        ("member", "panel"),
        ("member", "panel"),
        ("synthesizer", "panel"),
    ]
    members = {m["model"]: m for m in panel["members"]}
    assert set(members) == {"m-a", "m-b", "m-c"}
    # m-a and m-c answer Paris (pass), m-b Lyon (fail); the synthesizer's answer names them
    assert members["m-b"]["pass_rate"] == 0.0 and members["m-a"]["pass_rate"] == 1.0
    assert members["m-a"]["best"] and not members["m-b"]["best"]
    by = {c["metric"]: c for c in members["m-b"]["comparisons"]}
    assert by["pass_rate"]["diff"] == pytest.approx(1.0) and by["pass_rate"]["wins"] == 6
    assert by["cost"]["compared"] and by["cost"]["diff"] > 3  # 3 members + a synthesizer
    assert by["latency"]["compared"] and by["latency"]["diff"] > 1
    route = arms["robust"]
    assert route["kind"] == "route" and route["fallback_rate"] == 1.0
    served = {r["route"]: r for r in route["routes"]}
    assert list(served) == ["dead:m-x", "gw:m-c"]
    assert served["gw:m-c"]["served"] == 6 and served["dead:m-x"]["served"] == 0
    assert (
        served["dead:m-x"]["errors"] >= 6 and "connection" in served["dead:m-x"]["errors_by_type"]
    )
    md = written_report(out).read_text()
    assert "`panel` against its member `" in md and "its best member" in md
    assert "the panel's cost ×" in md
    assert "Fallback rate 100.0%" in md and "`gw:m-c` served 6" in md
    html = written_report(out).with_suffix(".html").read_text()
    assert "Composite arms" in html and "Fallback rate 100.0%" in html


@pytest.mark.slow
def test_an_incomplete_run_says_what_is_missing_and_how_to_finish(tmp_path: Path) -> None:
    with FakeServer(answers) as server:
        out = run_experiment(project(tmp_path, server.url, ""), db=tmp_path / "r.duckdb")
    con = duckdb.connect(str(out.db))
    # as a server that died mid-run leaves it: two calls never made, one left unfinished
    con.execute("UPDATE runs SET status = 'incomplete'")
    con.execute(
        "UPDATE calls SET status = 'error', error_type = 'connection', attempts = 0 "
        "WHERE case_id IN ('c4', 'c5')"
    )
    con.execute(
        "UPDATE calls SET status = 'error', error_type = 'server', unfinished = TRUE "
        "WHERE case_id = 'c3'"
    )
    con.close()
    report = _json(out.db, out.run_id)
    assert report["completeness"] == {
        "status": "incomplete",
        "complete": False,
        "never_made": 2,
        "unfinished": 1,
        "by_type": {"connection": 2, "server": 1},
        "resume": f"abharness run --resume {out.run_id}",
    }
    assert report["arms"][0]["n"] == 3 and report["arms"][0]["not_made"] == 3
    md = written_report(out).read_text()
    sentence = (
        "This run is **incomplete**: 2 calls never made and 1 call left unfinished "
        "(2 connection, 1 server)."
    )
    assert sentence in md and f"Finish it with `abharness run --resume {out.run_id}`." in md
    html = written_report(out).with_suffix(".html").read_text()
    assert f"<code>abharness run --resume {out.run_id}</code>" in html


@pytest.mark.slow
def test_a_complete_run_says_nothing_of_it(tmp_path: Path) -> None:
    with FakeServer(answers) as server:
        out = run_experiment(project(tmp_path, server.url, ""), db=tmp_path / "r.duckdb")
    with Results(out.db) as results:
        report = build_report(results, out.run_id)
    assert report.completeness is not None and report.completeness.complete
    assert "This run is" not in written_report(out).read_text()


@pytest.mark.parametrize(("source", "words"), [
    ("missing", "the server reported **no token counts** for 6 of 6 answered calls"),
    ("proxy_estimate", "are a **proxy's estimate**, not the model's"),
])  # fmt: skip
@pytest.mark.slow
def test_an_arm_without_the_models_token_counts_is_named_with_the_fix(
    tmp_path: Path, source: str, words: str
) -> None:
    with FakeServer(answers) as server:
        out = run_experiment(project(tmp_path, server.url, ""), db=tmp_path / "r.duckdb")
    con = duckdb.connect(str(out.db))
    con.execute("UPDATE calls SET usage_source = ?", [source])
    con.close()
    report = _json(out.db, out.run_id)
    field = "usage_missing" if source == "missing" else "usage_estimated"
    assert report["arms"][0][field] == 6
    md = written_report(out).read_text()
    assert "## Token counts" in md and words in md and "- `single`: " in md
    assert "`stream: false`" in md
