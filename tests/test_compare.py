from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from abharness.cli.main import cli
from abharness.run.experiment import run_experiment

from .conftest import write

GATES = (
    "gates: {score_drop: significant, latency_p50_increase_pct: 25, cost_increase_pct: 10,\n"
    "        latency_p50_abs_increase_pct: 25}\n"
)


def many_cases(project: Path, n: int = 40) -> None:
    write(
        project / "experiments/data/capitals.jsonl",
        "".join(
            json.dumps({"id": str(i), "country": f"Land{i}", "answer": f"City{i}"}) + "\n"
            for i in range(n)
        ),
    )


def answer(correct_share: float):
    def reply(request):
        i = int(request.prompt.rsplit("capital of Land", 1)[1].split("?")[0])
        return f"City{i}" if i % 10 < correct_share * 10 else "no idea"

    return reply


def compare(db: Path, a: str, b: str) -> tuple[int, dict]:
    result = CliRunner().invoke(cli, ["compare", a, b, "--db", str(db), "--format", "json"])
    return result.exit_code, json.loads(result.output) if result.output.startswith("{") else {}


@pytest.mark.slow
def test_a_significant_drop_and_a_slowdown_fail_the_gates(project: Path, fake_provider) -> None:
    many_cases(project)
    spec = project / "experiments/spec.yaml"
    spec.write_text(spec.read_text() + GATES)
    db = project / "r.duckdb"
    fake_provider.script, fake_provider.delay_s = answer(1.0), 0.001
    good = run_experiment(spec, db=db, use_cache=False)
    again = run_experiment(spec, db=db, use_cache=False)
    code, same = compare(db, good.run_id, again.run_id)
    assert code == 0 and not same["regression"]
    fake_provider.script, fake_provider.delay_s = answer(0.4), 0.05
    bad = run_experiment(spec, db=db, use_cache=False)
    code, out = compare(db, good.run_id, bad.run_id)
    assert code == 3 and out["regression"]
    status = {(g["arm_id"], g["gate"]): g["status"] for g in out["gates"]}
    assert (
        status[("zero-shot", "score_drop")] == "FAIL"
        and status[("few-shot", "score_drop")] == "FAIL"
    )
    # every arm 50x slower: the absolute gate fails; relative to the baseline arm (the
    # yardstick, which gets no relative gate) nothing changed
    assert status[("zero-shot", "latency_p50_abs_increase_pct")] == "FAIL"
    assert status[("few-shot", "latency_p50_abs_increase_pct")] == "FAIL"
    assert status[("few-shot", "latency_p50_increase_pct")] == "pass"
    assert ("zero-shot", "latency_p50_increase_pct") not in status
    assert (
        status[("few-shot", "cost_increase_pct")] == "not evaluated"
    )  # the fake arms have no price


@pytest.mark.slow
def test_compare_needs_the_same_cases(project: Path, fake_provider) -> None:
    db = project / "r.duckdb"
    first = run_experiment("experiments/spec.yaml", db=db)
    many_cases(project, 5)
    second = run_experiment("experiments/spec.yaml", db=db)
    result = CliRunner().invoke(cli, ["compare", first.run_id, second.run_id, "--db", str(db)])
    assert result.exit_code == 1 and "different cases" in result.output
