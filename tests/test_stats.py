"""The statistics validated by simulation (seeded, so the figures are reproducible).

- A/A: both arms drawn from one distribution: the harness must claim a difference
  ('better' or 'worse') in at most 5% of experiments.
- Coverage: the paired bootstrap 95% interval must contain the true difference in
  93-97% of experiments.
- Power: a 20-point pass-rate effect on 100 cases is called 'better'.
"""

from __future__ import annotations

import numpy as np
import pytest

from abharness.report.stats import (
    Comparison,
    compare_arms,
    compare_paired,
    decide,
    holm,
    mcnemar_exact,
    paired_bootstrap_diff,
    wilson,
)


def simulate(
    rng: np.random.Generator, n: int, p_base: float, p_arm: float, broken: float = 0.15
) -> tuple[list[float], list[float]]:
    """Paired pass/fail with exact marginals: the arm breaks a share `broken` of the
    baseline's passes and fixes just enough of its failures to reach `p_arm`, so the
    pairs are correlated as in real runs (most cases behave alike under both arms)."""
    base = rng.random(n) < p_base
    fixed = (p_arm - p_base + p_base * broken) / (1 - p_base)  # P(arm passes | base failed)
    arm = np.where(base, rng.random(n) >= broken, rng.random(n) < fixed)
    return list(arm.astype(float)), list(base.astype(float))


def test_a_a_false_positive_rate_is_at_most_5_percent() -> None:
    rng = np.random.default_rng(1)
    claims = 0
    runs = 300
    for _ in range(runs):
        arm, base = simulate(rng, 100, 0.6, 0.6)
        c = compare_arms({"b": (arm, base)}, "pass_rate")["b"]
        claims += c.verdict in ("better", "worse")
    assert claims / runs <= 0.05, claims / runs


def test_intervals_cover_known_effects_93_to_97_percent() -> None:
    rng = np.random.default_rng(2)
    covered = 0
    runs = 1000
    n = 200
    for _ in range(runs):
        # independent arms with known pass probabilities: the true difference is 0.10
        base = (rng.random(n) < 0.5).astype(float)
        arm = (rng.random(n) < 0.6).astype(float)
        _, lo, hi = paired_bootstrap_diff(arm, base, n_boot=1000, seed=int(rng.integers(1 << 31)))
        covered += lo <= 0.10 <= hi
    assert 0.93 <= covered / runs <= 0.97, covered / runs


def test_twenty_point_effect_on_100_cases_is_called_better() -> None:
    rng = np.random.default_rng(3)
    verdicts = [
        compare_arms({"b": simulate(rng, 100, 0.5, 0.7)}, "pass_rate")["b"].verdict
        for _ in range(100)
    ]
    assert verdicts.count("better") >= 80 and "worse" not in verdicts


def test_identical_arms_are_no_difference_and_small_samples_inconclusive() -> None:
    same = [1.0] * 60 + [0.0] * 40
    c = compare_arms({"b": (same, same)}, "pass_rate")["b"]
    assert (c.verdict, c.diff, c.ci_low, c.ci_high) == ("no_difference", 0.0, 0.0, 0.0)
    small = compare_arms({"b": ([1, 1, 0, 1, 0], [0, 1, 0, 0, 1])}, "pass_rate")["b"]
    assert small.verdict == "inconclusive" and small.n_needed and small.n_needed > 5


@pytest.mark.parametrize(
    ("k", "n", "low", "high"),
    [(0, 10, 0.0, 0.2775), (5, 10, 0.2366, 0.7634), (90, 98, 0.8472, 0.9579)],
)
def test_wilson_matches_published_values(k: int, n: int, low: float, high: float) -> None:
    lo, hi = wilson(k, n)
    assert lo == pytest.approx(low, abs=1e-3) and hi == pytest.approx(high, abs=1e-3)


def test_mcnemar_and_holm() -> None:
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(81, 0) == pytest.approx(2 * 0.5**81)
    assert mcnemar_exact(7, 3) == pytest.approx(0.34375)
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])


def test_verdict_needs_test_and_interval_to_agree() -> None:
    c = Comparison("pass_rate", 100, 30, 60, 10, 0.2, 0.08, 0.32, 0.001, p_adjusted=0.001)
    assert decide(c).verdict == "better"
    c = Comparison("pass_rate", 100, 30, 60, 10, 0.2, -0.01, 0.32, 0.001, p_adjusted=0.001)
    assert decide(c).verdict == "inconclusive" and c.n_needed
    c = compare_paired([0.0] * 50, [1.0] * 50, "mean_score")
    assert decide(c).verdict == "worse"
