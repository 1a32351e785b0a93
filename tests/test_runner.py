from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pytest
from click.testing import CliRunner

from abharness import errors
from abharness.cli.main import cli
from abharness.run.experiment import run_experiment
from abharness.run.plan import Plan

from .conftest import CAPITALS, capital_answers, write, written_report


def query(db: Path, sql: str) -> list[tuple]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def test_every_call_is_recorded_exactly_once_with_scores(project: Path, fake_provider) -> None:
    fake_provider.script = capital_answers()
    out = run_experiment("experiments/spec.yaml", db=project / "r.duckdb")
    assert not out.error_rate_exceeded and out.status == "completed" and out.merge.merged
    rows = query(
        out.db,
        "SELECT arm_id, case_id, repeat, status, attempts, input_tokens, output_tokens FROM calls",
    )
    assert len(rows) == len({r[:3] for r in rows}) == 2 * len(CAPITALS)
    assert len(fake_provider.requests) == 2 * len(CAPITALS)
    assert all(r[3] == "ok" and r[4] == 1 and r[5] and r[6] == 1 for r in rows)
    assert query(out.db, "SELECT count(*), bool_and(passed) FROM scores") == [
        (2 * len(CAPITALS), True)
    ]
    assert query(out.db, "SELECT count(*) FROM cases") == [(len(CAPITALS),)]
    assert query(out.db, "SELECT status, total_calls, error_calls FROM runs") == [
        ("completed", 12, 0)
    ]
    assert written_report(out).exists()
    assert not list((project / "staging").glob("*.duckdb"))


def test_failures_become_typed_error_rows_retried_per_policy(project: Path, fake_provider) -> None:
    failures = {
        "France": lambda: errors.RateLimitError("slow down", status_code=429, retry_after_s=0.01),
        "Spain": lambda: errors.ServerError("HTTP 503", status_code=503),
        "Germany": lambda: errors.BadRequestError("HTTP 400: bad", status_code=400),
        "Italy": lambda: ValueError("boom"),
    }

    def script(request):
        for country, make in failures.items():
            if country in request.prompt:
                return make()
        return capital_answers()(request)

    fake_provider.script = script
    out = run_experiment("experiments/spec.yaml", db=project / "r.duckdb")
    assert out.error_rate_exceeded
    got = dict(
        query(
            out.db,
            "SELECT error_type || ':' || attempts, count(*) FROM calls "
            "WHERE status = 'error' GROUP BY 1",
        )
    )
    # retryable errors get all 5 attempts; the rest one
    assert got == {"rate_limit:5": 2, "server:5": 2, "bad_request:1": 2, "other:1": 2}
    assert query(out.db, "SELECT error_message FROM calls WHERE error_type = 'other' LIMIT 1") == [
        ("ValueError: boom",)
    ]
    assert query(out.db, "SELECT count(*) FROM calls") == [(12,)]
    assert len(fake_provider.requests) == 2 * 5 + 2 * 5 + 2 + 2 + 4  # every attempt reached it
    assert query(out.db, "SELECT sum(attempts) FROM calls") == [(len(fake_provider.requests),)]
    assert query(
        out.db,
        "SELECT count(*) FROM scores s JOIN calls c USING (call_id) WHERE c.status = 'error'",
    ) == [(0,)]


def test_a_retry_that_succeeds_is_one_ok_row(project: Path, fake_provider) -> None:
    tries: dict[str, int] = {}

    def script(request):
        tries[request.prompt] = tries.get(request.prompt, 0) + 1
        if "France" in request.prompt and tries[request.prompt] < 3:
            return errors.RateLimitError("429", status_code=429, retry_after_s=0.01)
        return capital_answers()(request)

    fake_provider.script = script
    out = run_experiment("experiments/spec.yaml", db=project / "r.duckdb")
    assert not out.error_rate_exceeded
    assert query(
        out.db, "SELECT arm_id, attempts, status FROM calls WHERE case_id = 'fr' ORDER BY 1"
    ) == [("few-shot", 3, "ok"), ("zero-shot", 3, "ok")]


def test_auth_failure_stops_the_endpoint_after_one_call(project: Path, fake_provider) -> None:
    fake_provider.script = lambda r: errors.AuthError("HTTP 401: invalid key", status_code=401)
    out = run_experiment("experiments/spec.yaml", db=project / "r.duckdb")
    assert len(fake_provider.requests) == 1
    assert query(
        out.db, "SELECT error_type, attempts, count(*) FROM calls GROUP BY ALL ORDER BY 2"
    ) == [("auth", 0, 11), ("auth", 1, 1)]
    (line,) = out.failures
    assert (
        "zero-shot, few-shot: auth: HTTP 401: invalid key" in line
        and "11 further calls not made" in line
    )


@pytest.mark.slow
def test_max_error_rate_lets_a_few_errors_pass(project: Path, fake_provider) -> None:
    spec = project / "experiments/spec.yaml"
    spec.write_text(spec.read_text() + "max_error_rate: 0.2\n")
    fake_provider.script = lambda r: (
        errors.BadRequestError("400") if "France" in r.prompt else "Paris"
    )
    out = run_experiment(spec, db=project / "r.duckdb")
    assert (out.errors, out.calls) == (2, 12)  # 17% of calls failed: under 0.2
    assert not out.error_rate_exceeded
    spec.write_text(spec.read_text().replace("max_error_rate: 0.2", "max_error_rate: 0.15"))
    assert run_experiment(spec, db=project / "r.duckdb").error_rate_exceeded


@pytest.mark.slow
def test_timeouts_are_recorded_and_a_silent_endpoint_is_stopped(
    project: Path, fake_provider
) -> None:
    """Silence counts toward the endpoint's circuit: five calls that got no answer open
    it, the probe gets none either, and the calls still queued are not made."""
    spec = project / "experiments/spec.yaml"
    spec.write_text(spec.read_text().replace("max_tokens: 8}", "max_tokens: 8, timeout_s: 0.05}"))
    fake_provider.delay_s = 0.2
    out = run_experiment(spec, db=project / "r.duckdb")
    rows = query(out.db, "SELECT error_type, error_message, attempts FROM calls")
    assert len(rows) == 12 and {r[0] for r in rows} == {"timeout"}
    silent = "no answer in 0.05 s from mock"
    down = f"endpoint mock down: 5 calls in a row failed ({silent}) and the probe"
    made = [r for r in rows if r[2] > 0]  # ended by their own timeout, or waiting to retry
    assert 5 <= len(made) < 12 and silent in {r[1] for r in made}
    assert all(r[1] == silent or r[1].startswith(down) for r in made)
    not_made = [r for r in rows if r[2] == 0]
    assert not_made and all(r[1].startswith(f"not called: {down}") for r in not_made)
    assert out.failures and "further calls not made" in out.failures[0]


def test_concurrency_cap_per_endpoint_is_respected(project: Path, fake_provider) -> None:
    spec = project / "experiments/spec.yaml"
    spec.write_text(
        spec.read_text().replace("mock: {type: fake}", "mock: {type: fake, concurrency: 3}")
    )
    fake_provider.delay_s = 0.02
    run_experiment(spec, db=project / "r.duckdb")
    assert fake_provider.peak_in_flight == 3


@pytest.mark.slow
def test_dispatch_is_lazy(project: Path, fake_provider, monkeypatch: pytest.MonkeyPatch) -> None:
    n_cases = 400
    write(
        project / "experiments/data/big.jsonl",
        "".join(
            json.dumps({"id": str(i), "country": f"C{i}", "answer": "x"}) + "\n"
            for i in range(n_cases)
        ),
    )
    spec = project / "experiments/spec.yaml"
    spec.write_text(spec.read_text().replace("capitals.jsonl", "big.jsonl"))
    produced = 0
    produced_at_first_call: list[int] = []
    original = Plan.cases

    def counting_cases(self):
        nonlocal produced
        for case in original(self):
            produced += 1
            yield case

    monkeypatch.setattr(Plan, "cases", counting_cases)
    fake_provider.delay_s = 0.001
    fake_provider.script = lambda r: "x"

    def on_call(row):
        if not produced_at_first_call:
            produced_at_first_call.append(produced)

    out = run_experiment(spec, db=project / "r.duckdb", on_call=on_call)
    assert query(out.db, "SELECT count(*) FROM calls") == [(2 * n_cases,)]
    # validation reads the dataset once (n_cases); the runner then holds only a few in its queues
    assert produced_at_first_call[0] - n_cases <= 8


@pytest.mark.slow
def test_report_pairs_by_case_and_calls_a_clear_winner(project: Path, fake_provider) -> None:
    write(
        project / "experiments/data/capitals.jsonl",
        "".join(
            json.dumps({"id": str(i), "country": f"Land{i}", "answer": f"City{i}"}) + "\n"
            for i in range(40)
        ),
    )

    def script(request):
        country = request.prompt.rsplit("capital of ", 1)[1].split("?")[0]
        few_shot = "Portugal" in request.prompt
        i = int(country[4:])
        return f"City{i}" if few_shot or i % 4 == 0 else "no idea"

    fake_provider.script = script
    out = run_experiment("experiments/spec.yaml", db=project / "r.duckdb")
    result = CliRunner().invoke(
        cli, ["report", out.run_id, "--format", "json", "--db", str(out.db)]
    )
    report = json.loads(result.output)
    arms = {a["arm_id"]: a for a in report["arms"]}
    assert arms["zero-shot"]["pass_rate"] == 0.25 and arms["few-shot"]["pass_rate"] == 1.0
    c, score, latency, cost = report["comparisons"]
    assert (
        c["arm_id"],
        c["baseline"],
        c["metric"],
        c["wins"],
        c["ties"],
        c["losses"],
        c["verdict"],
    ) == ("few-shot", "zero-shot", "pass_rate", 30, 10, 0, "better")
    assert c["diff"] == pytest.approx(0.75) and 0.55 <= c["ci_low"] < 0.75 < c["ci_high"] <= 0.9
    assert c["p_value"] == pytest.approx(2 * 0.5**30) and c["p_adjusted"] == c["p_value"]  # one arm
    assert score["metric"] == "mean_score" and score["verdict"] == "better"
    assert (
        latency["metric"] == "latency" and latency["scale"] == "ratio" and latency["n_pairs"] == 40
    )
    assert cost["metric"] == "cost" and not cost["compared"]  # the fake server is not priced
    assert arms["zero-shot"]["pass_rate_ci"][0] < 0.25 < arms["zero-shot"]["pass_rate_ci"][1]
    assert "latency_ms" not in arms["zero-shot"]  # chart data stays out of the JSON
    md = written_report(out).read_text()
    assert (
        "| few-shot | pass rate | +75.0 pts |" in md
        and "`few-shot` is **better** than `zero-shot` on pass rate" in md
    )


def test_report_last_and_unknown_run(project: Path, fake_provider) -> None:
    out = run_experiment("experiments/spec.yaml", db=project / "r.duckdb")
    runner = CliRunner()
    ok = runner.invoke(cli, ["report", "--last", "--db", str(out.db)])
    assert ok.exit_code == 0 and out.run_id in ok.output
    missing = runner.invoke(cli, ["report", "nope", "--db", str(out.db)])
    assert missing.exit_code == 1 and "no run 'nope'" in missing.output


@pytest.mark.slow
def test_html_report_is_self_contained_with_charts(project: Path, fake_provider) -> None:
    import re

    from abharness.report.html import pareto_front

    fake_provider.script = capital_answers({"France", "Japan"})
    out = run_experiment("experiments/spec.yaml", db=project / "r.duckdb")
    html = written_report(out).with_suffix(".html").read_text()
    assert html.startswith("<!doctype html>") and html.count("<svg") == 3
    assert not re.search(r"(src|href)=\"(https?:)?//", html) and "@import" not in html
    assert "Per case against the baseline" in html and "Pareto front" in html
    # a script of its own for the case table, inline: nothing loaded, nothing fetched
    assert "<script src" not in html and "fetch(" not in html and "XMLHttpRequest" not in html
    assert html.count("<script") == 2 and '<script type="application/json" id="abh-cases">' in html
    assert pareto_front([("a", 1.0, 0.9), ("b", 0.5, 0.8), ("c", 2.0, 0.85), ("d", 0.5, 0.7)]) == {
        "a",
        "b",
    }
