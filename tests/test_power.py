"""What a comparison can detect and how many cases it would take (`report.power`):
derived from the exact test rather than hard-coded, capped at what can exist, never
quoted where no test could reject, and stable across runs of one true effect."""

from __future__ import annotations

import itertools
import math
import re

import numpy as np
import pytest
from scipy import stats as sps

from abharness.cli.validate import power_note
from abharness.report.build import comparison_figures
from abharness.report.power import (
    binary_cases_needed,
    binary_detectable,
    cases_needed,
    exact_paired_power,
    min_units_to_reject,
)
from abharness.report.stats import compare_arms, compare_paired, decide, mcnemar_exact
from abharness.report.words import power_text

from .simulation import Cell, draw, verdict


@pytest.mark.parametrize(("alpha", "arms"), [(0.05, 1), (0.01, 1), (0.05, 2), (0.05, 3), (0.01, 4)])
def test_the_least_units_to_reject_is_the_exact_tests_own(alpha: float, arms: int) -> None:
    """With one call per case McNemar's exact test needs 6 discordant cases to reject
    at 5% two-sided: the least k whose most extreme split (k wins, no loss) has p
    below the level — found here from the test itself."""
    least = next(k for k in range(1, 40) if mcnemar_exact(k, 0) < alpha / arms)
    assert min_units_to_reject(alpha, arms) == least
    assert min_units_to_reject(0.05) == 6 and min_units_to_reject(0.01) == 8


def _enumerated_power(n: int, p_win: float, p_loss: float, alpha: float) -> float:
    """Every (wins, losses) split with its multinomial probability, tested one by one."""
    total = 0.0
    for w, losses in itertools.product(range(n + 1), repeat=2):
        ties = n - w - losses
        if ties < 0 or w + losses == 0 or sps.binomtest(w, w + losses, 0.5).pvalue >= alpha:
            continue
        ways = math.factorial(n) // (
            math.factorial(w) * math.factorial(losses) * math.factorial(ties)
        )
        total += ways * p_win**w * p_loss**losses * (1 - p_win - p_loss) ** ties
    return total


@pytest.mark.parametrize(
    ("n", "p_win", "p_loss"), [(6, 0.1, 0.5), (8, 0.05, 0.3), (9, 0.2, 0.2), (40, 0.1, 0.25)]
)
def test_exact_power_matches_enumeration(n: int, p_win: float, p_loss: float) -> None:
    assert exact_paired_power(n, p_win, p_loss, 0.05) == pytest.approx(
        _enumerated_power(n, p_win, p_loss, 0.05), abs=1e-12
    )


@pytest.mark.slow
def test_the_quoted_detectable_effect_is_detected_80_percent_of_the_time() -> None:
    """Simulated experiments of 80 cases whose arms differ on 30% of them: at the effect
    `binary_detectable` quotes, the report's own rule (test and interval) says
    'better' in about 80% of experiments."""
    n, share = 80, 0.3
    effect = binary_detectable(n, share, 0.05)
    assert effect is not None
    rng = np.random.default_rng(3)
    called = 0
    for _ in range(600):
        u = rng.random(n)
        d = np.where(u < (share + effect) / 2, 1.0, np.where(u < share, -1.0, 0.0))
        c = compare_arms({"b": compare_paired(d, np.zeros(n), "pass_rate")}, power=False)["b"]
        called += c.verdict == "better"
    assert 0.74 <= called / 600 <= 0.86, (effect, called / 600)


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_too_few_cases_to_ever_reject_quote_no_effect_and_say_so(n: int) -> None:
    """One tied case once gave '±162 points' and 'about 4 cases would be needed'."""
    c = decide(compare_paired([1.0] * n, [0.0] * (n - 1) + [1.0], "pass_rate"))
    assert c.verdict == "inconclusive" and c.mde is None and c.n_needed is None
    text = power_text(_figures(c), "±5 points")
    assert f"No verdict is possible with {n} case" in text and "at least 6 cases" in text


def test_too_few_clusters_to_ever_reject_say_so() -> None:
    """60 cases in 5 topics: the unit is the topic, and 5 can never reject at 5%."""
    topics = np.repeat(np.arange(5), 12)
    arm = (np.arange(60) % 3 == 0).astype(float)
    c = decide(compare_paired(arm, np.zeros(60), "pass_rate", clusters=topics))
    assert (c.n_units, c.min_units, c.mde, c.n_needed) == (5, 6, None, None)
    assert "No verdict is possible with 5 clusters" in power_text(_figures(c), "±5 points")


def _figures(c):  # type: ignore[no-untyped-def]
    """The figures the report renders for this comparison."""
    return comparison_figures("b", "a", c)


@pytest.mark.parametrize("seed", range(30))
def test_detectable_effects_never_exceed_what_can_exist(seed: int) -> None:
    """Small, lopsided samples of scores and passes: a quoted detectable difference is
    never larger than the farthest the arm could be from the baseline, and 'cases
    needed' is never below what the test needs to reject at all."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(6, 14))
    base = np.clip(rng.normal(0.95, 0.05, n), 0, 1)
    for metric, arm in (
        ("mean_score", np.clip(base + rng.normal(0, 0.4, n), 0, 1)),
        ("pass_rate", (rng.random(n) < 0.8).astype(float)),
    ):
        b = base if metric == "mean_score" else (rng.random(n) < 0.95).astype(float)
        c = decide(compare_paired(arm, b, metric))
        room = max(1 - b.mean(), b.mean())
        assert c.mde is None or c.mde <= room + 1e-9, (metric, c.mde, room)
        assert c.n_needed is None or c.n_needed >= min_units_to_reject(0.05)


def test_all_tied_pass_rates_are_estimated_from_the_cases_that_would_have_to_differ() -> None:
    """30 tied cases: no discordance seen, so a difference is detectable only when it
    alone makes enough cases differ — about 27 points (8 of 30), not the ±13 a
    pseudo-case spread suggested, nor nothing."""
    c = decide(compare_paired(np.ones(30), np.ones(30), "pass_rate"))
    assert c.mde is not None and 0.2 < c.mde < 0.35
    assert sps.binom.sf(5, 30, c.mde) == pytest.approx(0.8, abs=0.01)  # ≥ 6 of 30 differ
    assert c.n_needed_goal == "equivalence" and c.n_needed is not None and c.n_needed > 30


def test_validate_never_quotes_an_effect_larger_than_the_share_that_differs() -> None:
    for n in (6, 12, 20, 30, 45, 60, 100, 400):
        for arms in (1, 3):
            text = power_note(n, arms)
            m = re.search(r"±(\d+) points if 20% of cases differ", text)
            assert m is None or int(m.group(1)) <= 20, text
            m = re.search(r"±(\d+) (?:points )?if half", text)
            assert m is None or int(m.group(1)) <= 50, text
    assert "at least 6 cases that differ" in power_note(5, 1)


def test_cases_needed_for_a_difference_is_the_exact_tests() -> None:
    """'215 cases needed' where 47 suffice: the normal approximation with the null's
    spread undercounts what the effect adds; the exact power is what it is."""
    n = binary_cases_needed(0.2, 0.0, 0.05)
    assert n is not None
    assert exact_paired_power(n, 0.0, 0.2, 0.05) >= 0.8 > exact_paired_power(n - 1, 0.0, 0.2, 0.05)
    assert cases_needed(0.45, 0.05, 0.05) == pytest.approx(
        binary_cases_needed(0.05, 0.2, 0.05), rel=0.06
    )


@pytest.mark.slow
def test_cases_needed_is_the_same_figure_across_runs_and_delivers_its_power() -> None:
    """200 pilots of 40 cases with one true 5-point effect: the cases they quote (to
    detect a 5-point difference) come from the spread alone, so they agree within a
    factor of 2.5 where the old figure, from each pilot's own effect, ranged from 65 to
    8,730; and a run of the median quoted size detects the effect ~80% of the time."""
    cell = Cell(40, 0.5, 1, True, "pass", 0.05)
    rng = np.random.default_rng(6)
    quoted, ranges = [], []
    for _ in range(200):
        c = verdict(*draw(rng, cell), power=True)
        if c.n_needed is not None:
            quoted.append(c.n_needed)
            ranges.append(c.n_needed_range)
    assert len(quoted) >= 150
    low, high = np.quantile(quoted, [0.05, 0.95])
    assert high / low <= 2.5, (low, high)
    size = int(np.median(quoted))
    big = Cell(size, 0.5, 1, True, "pass", 0.05)
    power = np.mean([verdict(*draw(rng, big)).verdict == "better" for _ in range(300)])
    assert 0.72 <= power <= 0.88, (size, power)
    inside = np.mean([lo <= size <= hi for lo, hi in ranges])
    assert inside >= 0.85, inside
