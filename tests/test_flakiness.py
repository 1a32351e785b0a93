"""Flaky cases (issue 21, item 3): per case and arm, k of n repeats passed; pass@k and
pass^k from the unbiased estimators; per arm the share of cases whose repeats disagree,
in the report (JSON, Markdown, HTML) and in the view `case_flakiness`."""

from __future__ import annotations

import itertools
import re
from collections import Counter
from pathlib import Path

import duckdb
import numpy as np
import pytest

from abharness.report.build import build_report
from abharness.report.flakiness import pass_at_k, pass_pow_k
from abharness.run.experiment import run_experiment
from abharness.store.queries import Results

from .conftest import written_report

SCHEMA = Path(__file__).resolve().parents[1] / "docs/schema.md"


def _brute(n: int, c: int, k: int) -> tuple[float, float]:
    """pass@k and pass^k by listing every k-subset of n repeats, c of which passed."""
    outcomes = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(outcomes, k))
    return (
        sum(any(s) for s in subsets) / len(subsets),
        sum(all(s) for s in subsets) / len(subsets),
    )


@pytest.mark.parametrize(("n", "c"), [(5, 0), (5, 2), (5, 5), (4, 1), (10, 7), (3, 3)])
def test_the_estimators_equal_the_share_of_k_subsets(n: int, c: int) -> None:
    for k in range(1, n + 1):
        at, pow_ = _brute(n, c, k)
        assert pass_at_k(np.array([n]), np.array([c]), k)[0] == pytest.approx(at)
        assert pass_pow_k(np.array([n]), np.array([c]), k)[0] == pytest.approx(pow_)


# passes out of 4 repeats per country, per arm: fr always, de 1 of 4, it 3 of 4, the rest never
PASSES = {"France": 4, "Germany": 1, "Italy": 3}


@pytest.mark.slow
def test_a_run_with_repeats_reports_its_flaky_cases(project: Path, fake_provider) -> None:
    seen: Counter[str] = Counter()
    answers = {"France": "Paris", "Germany": "Berlin", "Italy": "Rome"}

    def script(request):
        country = request.prompt.rsplit("capital of ", 1)[1].split("?")[0]
        arm = "few" if "Portugal" in request.prompt else "zero"
        seen[arm + country] += 1
        right = seen[arm + country] <= PASSES.get(country, 0)
        return answers[country] if right else "no idea"

    fake_provider.script = script
    spec = project / "experiments/spec.yaml"
    spec.write_text(
        spec.read_text().replace("baseline: zero-shot", "baseline: zero-shot\nrepeats: 4")
    )
    out = run_experiment(spec, db=project / "r.duckdb", use_cache=False)
    with Results(out.db) as results:
        report = build_report(results, out.run_id)
    f = report.arm("few-shot").flakiness
    assert f is not None and (f.repeats, f.cases, f.flaky_cases) == (4, 6, 2)
    assert f.flaky_share == pytest.approx(2 / 6)
    # per case c of 4: 4, 1, 3, 0, 0, 0 → pass@2 averages 1, 1/2, 1, 0, 0, 0
    assert f.pass_at_k[1] == pytest.approx(8 / 24)
    assert f.pass_at_k[2] == pytest.approx((1 + 0.5 + 1) / 6)
    assert f.pass_pow_k[2] == pytest.approx((1 + 0 + 0.5) / 6)
    assert f.pass_pow_k[4] == pytest.approx(1 / 6) and f.pass_at_k[4] == pytest.approx(3 / 6)
    con = duckdb.connect(str(out.db), read_only=True)
    rows = con.execute(
        "SELECT case_id, repeats, passes, flaky FROM case_flakiness "
        "WHERE arm_id = 'few-shot' ORDER BY case_id"
    ).fetchall()
    doc = re.findall(r"```sql\n(-- 13\..*?)```", SCHEMA.read_text(), re.S)[0]
    by_arm = {r[1]: r for r in con.execute(doc).fetchall()}
    con.close()
    _, _, k, cases, share, at_k, pow_k = by_arm["few-shot"]
    assert (k, cases, share) == (4, 6, pytest.approx(2 / 6))
    assert (at_k, pow_k) == (pytest.approx(f.pass_at_k[4]), pytest.approx(f.pass_pow_k[4]))
    assert rows == [
        ("de", 4, 1, True),
        ("es", 4, 0, False),
        ("fr", 4, 4, False),
        ("it", 4, 3, True),
        ("jp", 4, 0, False),
        ("pe", 4, 0, False),
    ]
    md = written_report(out).read_text()
    assert "## Flaky cases" in md
    assert "`few-shot`: 2 of 6 cases with repeats are **flaky** (33.3%" in md
    assert "pass@4 50.0% (at least one passes), pass^4 16.7% (every one passes)" in md
    html = written_report(out).with_suffix(".html").read_text()
    assert "<h2>Flaky cases</h2>" in html and "50.0% · 16.7%" in html
    assert report.to_json()["arms"][1]["flakiness"]["pass_at_k"]["2"] == pytest.approx(2.5 / 6)


def test_one_call_per_case_has_no_flakiness(project: Path, fake_provider) -> None:
    out = run_experiment("experiments/spec.yaml", db=project / "r.duckdb")
    with Results(out.db) as results:
        report = build_report(results, out.run_id)
    assert all(a.flakiness is None for a in report.arms)
    assert "Flaky cases" not in written_report(out).read_text()
