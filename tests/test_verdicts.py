"""The verdicts' defects, each shown by a real run against the loopback server, whose
answers these tests control (issue: "Verdicts you can bet on").

Arms are OpenAI-compatible endpoints on the fake server; the model name says which
arm is asking, and `Truth` decides per (model, case) whether it answers correctly.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest
from click.testing import CliRunner

from abharness.cli.main import cli
from abharness.report.build import build_report
from abharness.report.figures import Report
from abharness.report.html import OUTCOME_CELLS, outcomes_chart, render_html
from abharness.run.experiment import run_experiment
from abharness.store.queries import Results

from .conftest import write, written_report
from .fake_server import FakeServer, Fault, prompt_text


class Truth:
    """Which (model, case) pairs are answered correctly, and how slowly."""

    def __init__(self) -> None:
        self.wrong: set[tuple[str, str]] = set()
        self.delay_s: dict[str, float] = {}

    def __call__(self, body: dict[str, Any]) -> str:
        model, text = body["model"], prompt_text(body)
        case = text.rsplit("case ", 1)[1].split("?")[0].strip()
        time.sleep(self.delay_s.get(model, 0.0))
        return "no idea" if (model, case) in self.wrong else f"answer-{case}"


@pytest.fixture
def truth() -> Truth:
    return Truth()


@pytest.fixture
def server(truth: Truth) -> Iterator[FakeServer]:
    with FakeServer(truth) as s:
        yield s


def spec(
    tmp_path: Path,
    server: FakeServer,
    monkeypatch: pytest.MonkeyPatch,
    n_cases: int = 20,
    repeats: int = 1,
    extra: str = "",
    arm_b: str = "arm-b",
    case_fields: Callable[[int], str] = lambda i: "",
) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FAKE_KEY", "k")
    write(
        tmp_path / "prompts/q/v1.j2",
        "{% block prompt %}What is the answer for case {{ id }}?{% endblock %}\n",
    )
    cases = "\n".join(f"  - {{id: c{i:02d}{case_fields(i)}}}" for i in range(n_cases))
    return write(
        tmp_path / "spec.yaml",
        f"""
name: verdicts
prompts_dir: prompts
prompt: q@1
repeats: {repeats}
baseline: arm-a
defaults: {{temperature: 0, max_tokens: 8, seed: 1}}
cases:
{cases}
providers:
  fake: {{type: openai, base_url: "{server.url}/v1", api_key_env: FAKE_KEY, concurrency: 4, rpm: 600000,
          price: {{input_per_mtok: 1000, output_per_mtok: 1000}}}}
arms:
  - {{id: arm-a, provider: fake, model: model-a}}
  - {{id: {arm_b}, provider: fake, model: model-b}}
scorers:
  - {{type: contains, expected: "answer-{{{{ case.id }}}}"}}
{extra}""",
    )


def report_of(out: Any) -> dict[str, Any]:
    """The report as its JSON (SPEC §9's fields)."""
    return figures_of(out).to_json()


def figures_of(out: Any) -> Report:
    with Results(out.db) as results:
        return build_report(results, out.run_id)


def comparison(report: dict[str, Any], metric: str = "pass_rate") -> dict[str, Any]:
    return next(c for c in report["comparisons"] if c["metric"] == metric)


@pytest.mark.slow
def test_repeats_of_a_case_count_once(tmp_path, server, truth, monkeypatch) -> None:
    """3 of 20 cases differ; five identical repeats (temperature 0) change nothing:
    the old pairing of (case, repeat) rows gave p = 6e-5 and 'better'."""
    truth.wrong = {("model-a", f"c{i:02d}") for i in range(3)}
    out = run_experiment(spec(tmp_path, server, monkeypatch, repeats=5), db=tmp_path / "r.duckdb")
    assert out.stats.calls == 200
    c = comparison(report_of(out))
    assert (c["n_pairs"], c["wins"], c["losses"]) == (20, 3, 0)
    assert c["p_value"] == pytest.approx(0.25) and c["verdict"] == "inconclusive"
    assert c["mde"] is not None and c["n_needed"] > 20


def test_one_tied_case_is_not_no_difference(tmp_path, server, monkeypatch) -> None:
    out = run_experiment(spec(tmp_path, server, monkeypatch, n_cases=1), db=tmp_path / "r.duckdb")
    report = report_of(out)
    c = comparison(report)
    assert (c["n_pairs"], c["ties"], c["verdict"]) == (1, 1, "inconclusive")
    assert c["ci_low"] < -0.5 and c["ci_high"] > 0.5
    text = written_report(out).read_text()
    assert "No verdict is possible with 1 case: the test needs at least 6 cases" in text
    assert "would be detected" not in text  # no '±162 points' from one case


@pytest.mark.slow
def test_every_call_failed_in_both_arms_is_not_compared(tmp_path, server, monkeypatch) -> None:
    server.fault_fn = lambda entry: Fault(status=400)
    path = spec(tmp_path, server, monkeypatch, n_cases=6, extra="max_error_rate: 1.0\n")
    out = run_experiment(path, db=tmp_path / "r.duckdb")
    c = comparison(report_of(out))
    assert not c["compared"] and c["verdict"] == "inconclusive" and c["diff"] is None
    assert c["reason"] == "every call failed in both arms"
    md = written_report(out).read_text()
    assert "**not compared**: every call failed in both arms" in md


@pytest.mark.slow
def test_calls_never_made_are_left_out_not_failed(tmp_path, server, truth, monkeypatch) -> None:
    """The cost cap stops dispatch part-way: cases the candidate never reached are left
    out of the comparison (and counted), not scored as failures."""
    truth.wrong = {("model-a", f"c{i:02d}") for i in range(0, 40, 2)}  # a: 50%, b: 100%
    path = spec(
        tmp_path,
        server,
        monkeypatch,
        n_cases=40,
        extra="max_cost_usd: 0.55\n",  # each call costs ~0.016-0.022 USD at these prices
    )
    path.write_text(path.read_text().replace("concurrency: 4", "concurrency: 1"))
    out = run_experiment(path, db=tmp_path / "r.duckdb")
    assert out.status == "budget_exhausted"
    con = duckdb.connect(str(out.db), read_only=True)
    made = dict(
        con.execute(
            "SELECT arm_id, count(*) FILTER (WHERE attempts > 0) FROM calls GROUP BY 1"
        ).fetchall()
    )
    con.close()
    report = report_of(out)
    c = comparison(report)
    arms = {a["arm_id"]: a for a in report["arms"]}
    assert arms["arm-b"]["not_made"] > 0 and arms["arm-b"]["n"] == made["arm-b"]
    assert arms["arm-b"]["pass_rate"] == 1.0  # over the calls made
    assert c["n_pairs"] == min(made.values()) and sum(c["excluded"].values()) == 40 - c["n_pairs"]
    assert c["diff"] == pytest.approx(0.5, abs=0.08)  # the true difference, not shrunk
    assert "left out" in written_report(out).read_text()


@pytest.mark.slow
def test_an_arm_without_calls_does_not_crash_the_report(tmp_path, server, monkeypatch) -> None:
    out = run_experiment(spec(tmp_path, server, monkeypatch, n_cases=4), db=tmp_path / "r.duckdb")
    con = duckdb.connect(str(out.db))
    con.execute("DELETE FROM calls WHERE arm_id = 'arm-b'")
    con.close()
    c = comparison(report_of(out))
    assert not c["compared"] and c["reason"] == "arm-b made no call"


@pytest.mark.slow
def test_a_scorer_error_neither_passes_nor_scores(tmp_path, server, monkeypatch) -> None:
    write(
        tmp_path / "fussy.py",
        "def score(response, case):\n"
        "    if case['id'] == 'c00':\n"
        "        raise ValueError('cannot read this one')\n"
        "    return 1.0\n",
    )
    extra = "  - {type: python, function: 'fussy:score'}\n"
    out = run_experiment(
        spec(tmp_path, server, monkeypatch, n_cases=4, extra=extra), db=tmp_path / "r.duckdb"
    )
    con = duckdb.connect(str(out.db), read_only=True)
    summary = con.execute(
        "SELECT arm_id, pass_rate, mean_score, scorer_errors FROM arm_summary ORDER BY 1"
    ).fetchall()
    con.close()
    assert summary == [("arm-a", 0.75, 0.75, 1), ("arm-b", 0.75, 0.75, 1)]
    arms = {a["arm_id"]: a for a in report_of(out)["arms"]}
    assert (arms["arm-a"]["pass_rate"], arms["arm-a"]["mean_score"]) == (0.75, 0.75)
    assert arms["arm-a"]["scorer_errors"] == 1


@pytest.mark.slow
def test_latency_ratio_gets_an_interval_and_a_verdict(tmp_path, server, truth, monkeypatch) -> None:
    truth.delay_s = {"model-b": 0.2}  # far above a loaded machine's noise
    out = run_experiment(spec(tmp_path, server, monkeypatch, n_cases=12), db=tmp_path / "r.duckdb")
    report = report_of(out)
    c = comparison(report, "latency")
    assert c["verdict"] == "worse" and c["ci_low"] > 1 and c["n_pairs"] == 12
    assert report["arms"][0]["latency_p99_ms"] is None  # 12 calls: p99 not estimable
    assert "`arm-b` is **slower** than `arm-a` on latency" in written_report(out).read_text()


@pytest.mark.slow
def test_the_report_is_the_same_at_the_end_of_the_run_and_later(
    tmp_path, server, truth, monkeypatch
) -> None:
    """Rows are read in (arm, case, repeat) order and every resample is seeded, so the
    report does not depend on the order calls finished in or were written."""
    truth.wrong = {("model-a", f"c{i:02d}") for i in range(0, 30, 3)}
    truth.delay_s = {"model-b": 0.002}
    out = run_experiment(
        spec(tmp_path, server, monkeypatch, n_cases=30, repeats=2), db=tmp_path / "r.duckdb"
    )
    first = written_report(out).read_text()
    con = duckdb.connect(str(out.db))
    con.execute("CREATE TABLE shuffled AS SELECT * FROM calls ORDER BY random()")
    con.execute("DELETE FROM calls")
    con.execute("INSERT INTO calls SELECT * FROM shuffled")
    con.close()
    result = CliRunner().invoke(
        cli, ["report", out.run_id, "--db", str(out.db), "--reports-dir", str(tmp_path / "again")]
    )
    assert result.exit_code == 0, result.output
    again = next((tmp_path / "again").rglob("*.md")).read_text()
    database_line = f"- database: `{out.db}` (tables `calls`, `scores`; view `call_facts`)\n"
    assert again.replace(database_line, "") == first


@pytest.mark.slow
def test_html_highlights_only_the_verdict_and_escapes_whole_entities(
    tmp_path, server, truth, monkeypatch
) -> None:
    truth.wrong = {("model-a", f"c{i:02d}") for i in range(12)}
    path = spec(tmp_path, server, monkeypatch, n_cases=12, arm_b="better-prompt")
    out = run_experiment(path, db=tmp_path / "r.duckdb")
    report = figures_of(out)
    # cut at 80 characters (words.quote, as in the Markdown) before it is escaped
    report.examples["better-prompt"][0].arm_response = "x" * 76 + " & more"
    html = render_html(report)
    assert '<span class="better">better</span>' in html
    assert '<span class="better">better</span>-prompt' not in html
    assert "<code>better-prompt</code> is <span" in html
    assert "&amp;" in html and "&a<" not in html and "&am<" not in html


@pytest.mark.slow
def test_examples_are_the_differing_calls_arm_passes_first(
    tmp_path, server, truth, monkeypatch
) -> None:
    """The report's examples: (case, repeat) pairs whose pass differs between the arm and
    the baseline, the arm's passes first, then by case and repeat; three at most."""
    truth.wrong = {("model-a", "c02"), ("model-b", "c00"), ("model-a", "c04"), ("model-b", "c04")}
    path = spec(tmp_path, server, monkeypatch, 6, 2, case_fields=lambda i: f", topic: t{i}")
    examples = report_of(run_experiment(path, db=tmp_path / "r.duckdb"))["examples"]["arm-b"]
    assert [
        (e["case_id"], e["vars"], e["arm_passed"], e["arm_response"], e["baseline_response"])
        for e in examples
    ] == [
        ("c02", {"topic": "t2"}, True, "answer-c02", "no idea"),
        ("c02", {"topic": "t2"}, True, "answer-c02", "no idea"),
        ("c00", {"topic": "t0"}, False, "no idea", "answer-c00"),
    ]
    assert [e["baseline_passed"] for e in examples] == [False, False, True]


def test_validate_shows_the_smallest_detectable_difference(tmp_path, server, monkeypatch) -> None:
    path = spec(tmp_path, server, monkeypatch, n_cases=20)
    result = CliRunner().invoke(cli, ["validate", str(path)])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "detectable" in text and "20 cases" in text


def test_report_json_is_json(tmp_path, server, monkeypatch) -> None:
    out = run_experiment(spec(tmp_path, server, monkeypatch, n_cases=3), db=tmp_path / "r.duckdb")
    result = CliRunner().invoke(
        cli, ["report", out.run_id, "--format", "json", "--db", str(out.db)]
    )
    data = json.loads(result.output)
    assert {c["metric"] for c in data["comparisons"]} == {
        "pass_rate",
        "mean_score",
        "latency",
        "cost",
    }


@pytest.mark.slow
def test_clusters_are_the_unit_when_the_spec_names_one(
    tmp_path, server, truth, monkeypatch
) -> None:
    truth.wrong = {("model-a", f"c{i:02d}") for i in range(0, 12, 2)}
    path = spec(
        tmp_path,
        server,
        monkeypatch,
        n_cases=12,
        extra="cluster: topic\n",
        case_fields=lambda i: f", topic: t{i // 3}",
    )
    out = run_experiment(path, db=tmp_path / "r.duckdb")
    report = report_of(out)
    c = comparison(report)
    assert (report["cluster"], report["n_clusters"], c["n_pairs"], c["n_units"]) == (
        "topic",
        4,
        12,
        4,
    )
    assert "over 12 cases in 4 clusters" in written_report(out).read_text()


def test_a_case_without_the_cluster_field_is_a_clear_error(tmp_path, server, monkeypatch) -> None:
    path = spec(tmp_path, server, monkeypatch, n_cases=3, extra="cluster: topic\n")
    result = CliRunner().invoke(cli, ["run", str(path), "--db", str(tmp_path / "r.duckdb")])
    assert result.exit_code == 1
    assert "has no 'topic'" in result.output and "cluster" in result.output
    assert not (tmp_path / "r.duckdb").exists()


def _arm(arm_id: str, outcomes: list[list[str]]) -> Any:
    """An arm with its per-case outcomes and nothing else the chart reads."""
    from types import SimpleNamespace

    return SimpleNamespace(arm_id=arm_id, case_outcomes=outcomes)


def test_the_outcomes_strip_bins_many_cases_and_says_what_a_cell_holds() -> None:
    """2,000 cases give at most `OUTCOME_CELLS` cells (a page of bounded size), each
    titled with its wins, losses and ties; a few cases keep a cell each."""
    outcomes = [[f"c{i:04d}", "win" if i % 10 == 0 else "tie"] for i in range(2000)]
    svg = outcomes_chart([_arm("b", outcomes)], "a")
    assert svg.count("<rect") == OUTCOME_CELLS
    assert "cases c0000 … c0003: 1 win, 3 ties, 0 losses against a" in svg
    assert "each cell is 4 cases" in svg
    few = outcomes_chart([_arm("b", outcomes[:3])], "a")
    assert few.count("<rect") == 3 and "case c0001: tie against a" in few


# -- errors that may be what differs ---------------------------------------------------


def _fail_model(server: FakeServer, model: str, cases: set[str] | None = None) -> None:
    """A 400 (never retried, no circuit breaker) for `model`'s calls on `cases` (all)."""

    def fault(entry: Any) -> Fault | None:
        case = prompt_text(entry.body).rsplit("case ", 1)[1].split("?")[0].strip()
        hit = entry.body.get("model") == model and (cases is None or case in cases)
        return Fault(status=400) if hit else None

    server.fault_fn = fault


@pytest.mark.slow
def test_an_arm_that_failed_every_call_does_not_make_the_other_better_silently(
    tmp_path, server, monkeypatch
) -> None:
    _fail_model(server, "model-a")
    path = spec(tmp_path, server, monkeypatch, n_cases=20, extra="max_error_rate: 1.0\n")
    out = run_experiment(path, db=tmp_path / "r.duckdb")
    report = report_of(out)
    c = comparison(report)
    assert c["verdict"] == "better" and c["diff"] == pytest.approx(1.0)
    assert c["caveats"][0].startswith(
        "`arm-a` failed every call (20 of 20; in the whole run: 20 bad_request)"
    )
    assert "errors alone could explain the difference" in c["caveats"][1]
    md = written_report(out).read_text()
    assert "**better** than `arm-a` on pass rate" in md
    assert "**Caveat**: `arm-a` failed every call" in md
    assert (
        '<span class="inconclusive">Caveat</span>'
        in written_report(out).with_suffix(".html").read_text()
    )


@pytest.mark.slow
def test_a_difference_errors_alone_explain_says_so(tmp_path, server, monkeypatch) -> None:
    """arm-b answers as well as arm-a but its endpoint rejects 8 of 30 cases: 'worse',
    with its error rate and the cases without errors (no difference there) named."""
    _fail_model(server, "model-b", {f"c{i:02d}" for i in range(8)})
    path = spec(tmp_path, server, monkeypatch, n_cases=30, extra="max_error_rate: 1.0\n")
    c = comparison(report_of(run_experiment(path, db=tmp_path / "r.duckdb")))
    assert c["verdict"] == "worse" and c["losses"] == 8
    assert c["caveats"][0].startswith("`arm-b` failed 27% of its calls (8 of 30")
    assert c["caveats"][1].startswith(
        "errors alone could explain the difference: over the 22 cases where neither arm "
        "failed a call it is +0.0 points"
    )


@pytest.mark.slow
def test_few_errors_that_do_not_change_the_verdict_add_no_caveat(
    tmp_path, server, truth, monkeypatch
) -> None:
    truth.wrong = {("model-a", f"c{i:02d}") for i in range(12)}
    _fail_model(server, "model-b", {"c20"})
    path = spec(tmp_path, server, monkeypatch, n_cases=30, extra="max_error_rate: 1.0\n")
    c = comparison(report_of(run_experiment(path, db=tmp_path / "r.duckdb")))
    assert c["verdict"] == "better" and c["caveats"] == []


# -- cost: "not compared" only when it is unknown --------------------------------------

PRICE = "price: {input_per_mtok: 1000, output_per_mtok: 1000}"


def _cost(path: Path, db: Path) -> tuple[dict[str, Any], str]:
    out = run_experiment(path, db=db)
    c = comparison(report_of(out), "cost")
    return c, written_report(out).read_text()


@pytest.mark.slow
def test_cost_0_in_both_arms_says_so(tmp_path, server, monkeypatch) -> None:
    path = spec(tmp_path, server, monkeypatch, n_cases=4)
    path.write_text(
        path.read_text().replace(PRICE, "price: {input_per_mtok: 0, output_per_mtok: 0}")
    )
    c, md = _cost(path, tmp_path / "r.duckdb")
    assert (c["compared"], c["label"], c["reason"]) == (
        False,
        "0 in both",
        "0 USD per call in both arms",
    )
    assert "on cost: **0 in both**: 0 USD per call in both arms." in md
    assert "fewer than 2 cases" not in md


@pytest.mark.slow
def test_cost_of_a_run_answered_from_the_cache_is_0_in_both(tmp_path, server, monkeypatch) -> None:
    path = spec(tmp_path, server, monkeypatch, n_cases=4)
    _cost(path, tmp_path / "r.duckdb")
    c, md = _cost(path, tmp_path / "r.duckdb")  # the same calls again: every one cached
    assert c["label"] == "0 in both"
    assert "on cost: **0 in both**: every call answered from the cache in both arms." in md
    # and latency says why no case was timed, with the fix
    assert "calls of arm-a came from the cache, which is not timed; `--no-cache` times them" in md


@pytest.mark.slow
def test_cost_without_a_price_is_not_compared(tmp_path, server, monkeypatch) -> None:
    path = spec(tmp_path, server, monkeypatch, n_cases=4)
    path.write_text(path.read_text().replace(f",\n          {PRICE}", ""))
    c, md = _cost(path, tmp_path / "r.duckdb")
    assert c["label"] is None and c["reason"] == "cost unknown for arm-b (no price)"
    assert "on cost: **not compared**: cost unknown for arm-b (no price)." in md


@pytest.mark.slow
def test_the_arm_table_fits_a_1400_px_window(tmp_path, server, monkeypatch) -> None:
    """19 columns of unbreakable cells hid the arm table's last ones (cost, estimate
    error) past a 1,180-px page at 1400 px (looked at with headless Chromium): related
    figures now share a cell, model names wrap."""
    out = run_experiment(spec(tmp_path, server, monkeypatch, n_cases=3), db=tmp_path / "r.duckdb")
    html = written_report(out).with_suffix(".html").read_text()
    table = html.split('<table class="arms">', 1)[1].split("</table>", 1)[0]
    headers = table.split("</tr>", 1)[0].count("<th")
    assert headers <= 13, headers
    assert "per 1k cases</div>" in table and "td.wrap{white-space:normal" in html


# -- small, consistent changes in a continuous score ---------------------------------------


def _target(case: str) -> str:
    return f"the answer to question {case} is {case}-blue-lighthouse"[:45].ljust(45, ".")


@pytest.mark.slow
def test_a_uniform_4_point_similarity_gain_on_30_cases_is_called_better(
    tmp_path, server, monkeypatch
) -> None:
    """Every case's answer comes 1-3 characters closer to the expected text (of 45):
    +4.4 similarity points on average, each case between +2.2 and +6.7. The old interval
    said −5.1…+13.3, 'inconclusive', 'about 8,321 cases would be needed'."""

    def answer(body: dict[str, Any]) -> str:
        case = prompt_text(body).rsplit("case ", 1)[1].split("?")[0].strip()
        i = int(case[1:])
        typos = 4 + i % 6 - (0 if body["model"] == "model-a" else 1 + i % 3)
        return "#" * typos + _target(case)[typos:]

    server.reply = answer
    path = spec(
        tmp_path,
        server,
        monkeypatch,
        n_cases=30,
        case_fields=lambda i: f", answer: '{_target(f'c{i:02d}')}'",
    )
    text = path.read_text().split("scorers:")[0]
    path.write_text(
        text + 'scorers:\n  - {type: similarity, expected: "{{ case.answer }}", threshold: 0.5}\n'
    )
    out = run_experiment(path, db=tmp_path / "r.duckdb")
    c = comparison(report_of(out), "mean_score")
    assert c["diff"] == pytest.approx(4 / 90, abs=1e-6)
    assert c["verdict"] == "better" and c["wins"] == 30
    assert 0.025 < c["ci_low"] < c["diff"] < c["ci_high"] < 0.065, (c["ci_low"], c["ci_high"])
    assert c["n_needed"] is None and c["caveats"] == []
    md = written_report(out).read_text()
    sentence = next(line for line in md.splitlines() if "on mean score" in line)
    assert "`arm-b` is **better** than `arm-a` on mean score: +4.4 points (95% CI +" in sentence
    assert "would be needed" not in sentence
