"""The statistics: primitives against reference implementations, and the verdict rules
validated by seeded simulation over the cells of tests/simulation.py.

Every simulation is seeded, so its figures are reproducible; README "Can I believe the
difference?" quotes them (`python -m tests.benchmarks.verdicts` prints the table).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats as sps
from statsmodels.stats.contingency_tables import mcnemar as sm_mcnemar
from statsmodels.stats.multitest import multipletests

from abharness.report import stats
from abharness.report.stats import (
    N_FLIPS,
    Comparison,
    adjusted_interval,
    compare_arms,
    compare_paired,
    compare_ratio,
    decide,
    holm,
    log_t_interval,
    mcnemar_exact,
    mean_ci,
    paired_interval,
    quantile_ci,
    sign_flip_p,
)

from .simulation import (
    CELLS,
    SCORE_FAMILIES,
    Cell,
    ScoreCell,
    draw,
    draw_scores,
    toward_middle,
    verdict,
)

RUNS = 400


def _metric(cell: Cell) -> str:
    return "pass_rate" if cell.kind == "pass" else "mean_score"


# -- primitives against references -----------------------------------------------------


@pytest.mark.parametrize(("wins", "losses"), [(0, 0), (7, 3), (81, 0), (12, 30), (1, 1)])
def test_mcnemar_matches_statsmodels(wins: int, losses: int) -> None:
    reference = sm_mcnemar([[10, wins], [losses, 10]], exact=True).pvalue
    assert mcnemar_exact(wins, losses) == pytest.approx(reference, rel=1e-12)


def test_holm_matches_statsmodels() -> None:
    p = [0.01, 0.04, 0.03, 0.2, 0.001]
    assert holm(p) == pytest.approx(list(multipletests(p, method="holm")[1]), rel=1e-12)


def _brute_force_p(t: list[float]) -> float:
    observed = abs(sum(t))
    sums = [
        abs(sum(s * x for s, x in zip(signs, t, strict=True)))
        for signs in itertools.product((1, -1), repeat=len(t))
    ]
    return sum(v >= observed - 1e-9 for v in sums) / len(sums)


@pytest.mark.parametrize(
    "t",
    [
        [1, 1, 1, 0, -1, 1],  # one call per case: McNemar
        [0.2, 0.4, -0.2, 1.0, 0.6, 0.0, 0.8, -0.4],  # repeats of 5: a lattice of 1/5
        [0.25, -0.5, 0.75, 1.0, 0.5, 0.25, 0.2],  # repeats of 4 and 5 mixed
    ],
)
def test_sign_flip_exact_paths_match_full_enumeration(t: list[float]) -> None:
    assert sign_flip_p(np.array(t, dtype=float)) == pytest.approx(_brute_force_p(t), abs=1e-12)


def test_sign_flip_monte_carlo_is_close_to_enumeration_for_continuous_values() -> None:
    rng = np.random.default_rng(5)
    t = rng.normal(0.3, 1, 14)
    assert sign_flip_p(t) == pytest.approx(_brute_force_p(list(t)), abs=4 / math.sqrt(N_FLIPS))


def test_flips_do_not_depend_on_the_chunk_size(monkeypatch: pytest.MonkeyPatch) -> None:
    """Flips are drawn a chunk at a time to bound memory; the figures must not depend
    on how big a chunk is (int8 sign draws did: numpy buffers them)."""
    t = np.random.default_rng(11).normal(0.2, 1, 99)
    seen = []
    for chunk in (1_000_000, 65_536, 997):
        monkeypatch.setattr(stats, "CHUNK_VALUES", chunk)
        seen.append(sign_flip_p(t))
    assert seen[0] == seen[1] == seen[2]


@pytest.mark.parametrize("n", [2, 3, 7, 60])
def test_ratio_interval_is_students_t_on_the_logs(n: int) -> None:
    logs = np.random.default_rng(n).normal(0.1, 0.3, n)
    reference = sps.ttest_1samp(logs, 0.0).confidence_interval(0.95)
    assert log_t_interval(logs, 0.95) == pytest.approx((reference.low, reference.high), rel=1e-12)


def test_adjusted_interval_is_bonett_price_for_one_call_per_case() -> None:
    """With one call per case the interval is Bonett–Price's adjusted Wald interval,
    with Student's t and an n+1 variance divisor: it agrees as n grows, is a little
    wider at small n, and never has zero width."""
    for n12, n21, n in ((30, 10, 400), (3, 0, 20), (0, 0, 1)):
        d = np.array([1.0] * n12 + [-1.0] * n21 + [0.0] * (n - n12 - n21))
        low, high, _ = adjusted_interval(d, np.ones(n), 1.0)
        p12, p21 = (n12 + 1) / (n + 2), (n21 + 1) / (n + 2)
        se = math.sqrt((p12 + p21 - (p12 - p21) ** 2) / (n + 2))
        bp = (p12 - p21 - 1.959964 * se, p12 - p21 + 1.959964 * se)
        assert high - low > 0 and low <= max(bp[0], -1) + 1e-9 and high >= min(bp[1], 1) - 1e-9
        if n >= 400:
            assert (low, high) == pytest.approx(bp, abs=0.002)


def test_quantile_interval_is_distribution_free_and_refuses_thin_tails() -> None:
    x = np.arange(1, 101, dtype=float)
    est, low, high = quantile_ci(x, 0.5)
    assert est == 50.5 and low is not None and high is not None and low < 50.5 < high
    assert quantile_ci(x[:150], 0.99) == (None, None, None)  # 100 calls: p99 not estimable
    assert quantile_ci(np.arange(250.0), 0.99)[0] is not None


# -- the eight defects, from the report's inputs ------------------------------------------


def test_repeats_are_not_independent_pairs() -> None:
    """3 of 20 cases differ: the same p with one call per case and with five copies."""
    base = np.zeros(20)
    arm = np.array([1.0] * 3 + [0.0] * 17)
    one = compare_paired(arm, base, "pass_rate")
    five = compare_paired(np.repeat(arm, 5).reshape(20, 5).mean(axis=1), base, "pass_rate")
    assert one.p_value == pytest.approx(0.25) and five.p_value == pytest.approx(0.25)
    assert decide(five).verdict == "inconclusive"


@pytest.mark.parametrize("metric", ["pass_rate", "mean_score"])
@pytest.mark.parametrize(
    ("arm", "base"),
    [
        ([1.0], [1.0]),
        ([0.0] * 3, [0.0] * 3),
        ([1.0, 0.0, 1.0, 1.0], [1.0, 0.0, 1.0, 1.0]),
        ([0.8, 0.41, 0.6, 0.7], [0.8, 0.4, 0.6, 0.7]),  # one case moved by a point
    ],
)
def test_tiny_samples_are_never_no_difference(
    arm: list[float], base: list[float], metric: str
) -> None:
    c = decide(compare_paired(arm, base, metric))
    assert c.verdict == "inconclusive" and c.ci_low < -0.3 and c.ci_high > 0.3
    # fewer cases than the test could ever reject with: no detectable effect is quoted
    assert c.min_units == 6 and c.mde is None and c.n_needed is None


def test_zero_pairs_are_not_compared_with_a_reason() -> None:
    c = compare_arms({"b": compare_paired([], [], "pass_rate")})["b"]
    assert not c.compared and c.verdict == "inconclusive" and c.reason and c.diff is None


def test_a_mean_that_disagrees_with_most_cases_is_not_a_verdict() -> None:
    """80% of cases slightly worse, a few much better: the mean rises."""
    base = np.full(50, 0.8)
    arm = np.array([0.75] * 40 + [1.0] * 10) + np.array([0.0] * 40 + [0.0] * 10)
    base[40:] = 0.0
    c = decide(compare_paired(arm, base, "mean_score"))
    assert c.diff is not None and c.diff > 0 and c.losses == 40
    assert c.verdict == "inconclusive" and "most cases" in (c.reason or "")


def test_a_significant_effect_inside_the_margin_is_negligible() -> None:
    rng = np.random.default_rng(1)
    base = rng.uniform(0.3, 0.7, 5000)
    arm = base + rng.normal(0.01, 0.05, 5000)
    c = decide(compare_paired(arm, base, "mean_score"))
    assert c.verdict == "better" and c.negligible


def test_latency_ratio_has_an_interval_and_a_verdict() -> None:
    rng = np.random.default_rng(2)
    base = rng.lognormal(6, 0.5, 60)
    faster = compare_arms(
        {"b": compare_ratio(base * 0.7 * rng.lognormal(0, 0.1, 60), base, "latency")}
    )["b"]
    assert faster.verdict == "better" and faster.ci_high is not None and faster.ci_high < 1
    same = compare_arms({"b": compare_ratio(base * rng.lognormal(0, 0.02, 60), base, "latency")})[
        "b"
    ]
    assert same.verdict == "no_difference"


# -- simulation: A/A, coverage, equivalence, power ------------------------------------------


def _seed(cell: Cell, salt: int) -> int:
    return int.from_bytes(str((cell, salt)).encode()[-8:], "little") % (1 << 32)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["pass", "score"])
@pytest.mark.parametrize("n", [20, 50, 200])
def test_a_a_false_claims_are_at_most_5_percent_in_every_cell(kind: str, n: int) -> None:
    """The rule is a nominal 5% test: where it is exact (large n, fine-grained
    differences) its true A/A rate is 5%, so a finite simulation lands on either side of
    it. Each cell must not be significantly above 5% (one-sided binomial test at 1%),
    and the cells' pooled rate must be at most 5%."""
    total = 0
    cells = [c for c in CELLS if c.kind == kind and c.n == n]
    for cell in cells:
        rng = np.random.default_rng(_seed(cell, 1))
        claims = sum(
            verdict(*draw(rng, cell), _metric(cell)).verdict in ("better", "worse")
            for _ in range(RUNS)
        )
        above = sps.binomtest(claims, RUNS, 0.05, alternative="greater").pvalue
        assert above >= 0.01, (str(cell), claims / RUNS)
        total += claims
    assert total / (RUNS * len(cells)) <= 0.05, total / (RUNS * len(cells))


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["pass", "score"])
@pytest.mark.parametrize("n", [20, 50, 200])
def test_intervals_cover_a_10_point_effect_and_never_call_it_no_difference(
    kind: str, n: int
) -> None:
    for cell in [toward_middle(c, 0.10) for c in CELLS if c.kind == kind and c.n == n]:
        rng = np.random.default_rng(_seed(cell, 2))
        covered = no_difference = 0
        for _ in range(RUNS):
            c = verdict(*draw(rng, cell), _metric(cell))
            covered += c.ci_low <= cell.effect <= c.ci_high
            no_difference += c.verdict == "no_difference"
        assert covered / RUNS >= 0.93, (str(cell), covered / RUNS)
        assert no_difference / RUNS <= 0.01, (str(cell), no_difference / RUNS)


@pytest.mark.slow
@pytest.mark.parametrize("n", [20, 50, 200])
def test_per_arm_intervals_cover_the_true_rate(n: int) -> None:
    for cell in [c for c in CELLS if c.n == n]:
        rng = np.random.default_rng(_seed(cell, 3))
        covered = 0
        for _ in range(RUNS):
            _, calls = draw(rng, cell)
            means = calls.mean(axis=1)
            low, high = mean_ci(means, 0.0, 1.0)
            assert low is not None and high is not None
            covered += low <= cell.p <= high
        assert covered / RUNS >= 0.93, (str(cell), covered / RUNS)


@pytest.mark.slow
@pytest.mark.parametrize(("repeats", "temperature0"), [(1, True), (5, True), (5, False)])
def test_a_20_point_effect_on_100_cases_is_called_better(repeats: int, temperature0: bool) -> None:
    cell = Cell(100, 0.5, repeats, temperature0, "pass", 0.20)
    rng = np.random.default_rng(_seed(cell, 4))
    verdicts = [verdict(*draw(rng, cell)).verdict for _ in range(RUNS)]
    assert verdicts.count("better") / RUNS >= 0.85 and "worse" not in verdicts


def test_verdict_needs_test_and_interval_to_agree() -> None:
    c = Comparison("pass_rate", 100, 30, 60, 10, 0.2, 0.08, 0.32, 0.001, 0.1, 0.3, 100, 0.5, 0.001)
    assert decide(c).verdict == "better"
    c = Comparison(
        "pass_rate", 100, 30, 60, 10, 0.2, -0.01, 0.32, 0.001, 0.01, 0.3, 100, 0.5, 0.001
    )
    assert decide(c).verdict == "inconclusive" and c.n_needed


@pytest.mark.slow
@pytest.mark.parametrize("n", [20, 50, 200])
def test_latency_ratio_interval_covers_the_true_ratio(n: int) -> None:
    """Cases differ in length (log-normal), each call adds noise; the arm is 1.2× slower."""
    rng = np.random.default_rng(n)
    covered = 0
    for _ in range(RUNS):
        case = rng.lognormal(6, 0.8, n)
        base = case * rng.lognormal(0, 0.3, n)
        arm = case * 1.2 * rng.lognormal(0, 0.3, n)
        c = compare_ratio(arm, base, "latency")
        assert c.ci_low is not None and c.ci_high is not None
        covered += c.ci_low <= 1.2 <= c.ci_high
    assert covered / RUNS >= 0.93, covered / RUNS


@pytest.mark.slow
def test_clustered_cases_keep_a_a_false_claims_at_5_percent() -> None:
    """8 topics of 10 cases; the arms are equally good overall but each topic favours
    one of them. Treating the cases as independent claims a difference far too often."""
    rng = np.random.default_rng(9)
    claims = {False: 0, True: 0}
    for _ in range(RUNS):
        topic = np.repeat(np.arange(8), 10)
        q = rng.uniform(0.2, 0.8, 80)
        arm = (rng.random(80) < np.clip(q + rng.normal(0, 0.3, 8)[topic], 0, 1)).astype(float)
        base = (rng.random(80) < q).astype(float)
        for clustered in claims:
            c = compare_paired(arm, base, "pass_rate", clusters=topic if clustered else None)
            claims[clustered] += compare_arms({"b": c}, power=False)["b"].verdict in (
                "better",
                "worse",
            )
    assert claims[True] / RUNS <= 0.05 < claims[False] / RUNS, claims


# -- mean scores: an interval as wide as the scores' own spread -------------------------


def test_a_uniform_4_point_gain_in_a_similarity_score_is_called_better() -> None:
    """30 cases, every one 4.4 points better (give or take a point): the pseudo-cases
    at the ends of the scale made this −5.1…+13.3 and 'inconclusive'. (Its 90% interval
    lies inside the ±5-point margin, so it is also flagged negligible.)"""
    rng = np.random.default_rng(44)
    base = rng.uniform(0.6, 0.9, 30)
    arm = base + 0.044 + rng.uniform(-0.01, 0.01, 30)
    c = compare_arms({"b": compare_paired(arm, base, "mean_score")})["b"]
    assert c.verdict == "better", (c.ci_low, c.ci_high)
    assert c.ci_low is not None and c.ci_high is not None
    assert 0.03 < c.ci_low < c.diff < c.ci_high < 0.06
    assert c.n_needed is None


@pytest.mark.parametrize("metric", ["pass_rate", "mean_score"])
def test_pass_rates_keep_bonett_price(metric: str) -> None:
    """0/1 values: the mean score's pseudo-cases sit where the pass rate's do (±1), so
    both metrics give the same interval when the score is a pass."""
    d = np.array([1.0] * 7 + [-1.0] * 2 + [0.0] * 21)
    assert paired_interval(d, metric) == adjusted_interval(d, np.ones(30), 1.0)


@pytest.mark.slow
@pytest.mark.parametrize("family", SCORE_FAMILIES)
def test_score_families_a_a_false_claims_are_at_most_5_percent(family: str) -> None:
    """Equal arms, continuous scores of four shapes, n from 8 to 400: the verdict's
    false claims are not significantly above 5% in any cell, and at most 5% pooled."""
    runs, total = 250, 0
    cells = [ScoreCell(family, n) for n in (8, 30, 400)]
    for cell in cells:
        rng = np.random.default_rng(_seed(cell, 7))
        claims = sum(
            verdict(*draw_scores(rng, cell), "mean_score").verdict in ("better", "worse")
            for _ in range(runs)
        )
        assert sps.binomtest(claims, runs, 0.05, alternative="greater").pvalue >= 0.01, (
            str(cell),
            claims / runs,
        )
        total += claims
    assert total / (runs * len(cells)) <= 0.05


@pytest.mark.slow
@pytest.mark.parametrize("family", SCORE_FAMILIES)
def test_score_families_intervals_cover_the_true_difference(family: str) -> None:
    """The mean-score interval covers a true 4-point difference (and a true 0) in at
    least 93% of 800 experiments at every n from 8 to 400 (4,000 give 94.9% in the
    worst cell, skewed scores at 400 cases)."""
    runs = 800
    for n in (8, 12, 20, 30, 50, 100, 400):
        for effect in (0.0, 0.04):
            cell = ScoreCell(family, n, effect)
            rng = np.random.default_rng(_seed(cell, 8))
            covered = 0
            for _ in range(runs):
                b, a = draw_scores(rng, cell)
                low, high, _ = paired_interval((b - a)[:, 0], "mean_score")
                covered += low <= effect <= high
            assert covered / runs >= 0.93, (str(cell), covered / runs)


@pytest.mark.slow
def test_a_uniform_4_point_gain_on_30_cases_is_called_with_80_percent_power() -> None:
    cell = ScoreCell("low-spread", 30, 0.04)
    rng = np.random.default_rng(_seed(cell, 9))
    verdicts = [verdict(*draw_scores(rng, cell), "mean_score").verdict for _ in range(200)]
    assert verdicts.count("better") / 200 >= 0.8, verdicts.count("better")


# -- latency and cost ratios at small n ------------------------------------------------


@pytest.mark.parametrize(
    "ratios",
    [[1.02, 1.05], [1.02, 1.03], [1.0, 1.0], [0.97, 1.01], [1.0, 1.0, 1.0001], [1.0] * 4],
)
@pytest.mark.parametrize("metric", ["latency", "cost"])
def test_a_handful_of_cases_never_gives_no_difference(ratios: list[float], metric: str) -> None:
    """Two cases at ×1.02 and ×1.05 gave 'no difference' (a bootstrap interval that
    cannot reach beyond its two values); fewer than 5 cases never do, whatever their
    ratios (four cases of the same tokens at the same price have no spread at all)."""
    base = np.linspace(100, 300, len(ratios))
    c = compare_arms({"b": compare_ratio(base * np.array(ratios), base, metric)})["b"]
    assert c.compared and c.verdict == "inconclusive", (c.ci90_low, c.ci90_high)
    assert c.ci_low is not None and c.ci_high is not None and c.ci_high >= c.ci_low


def test_one_case_is_not_a_ratio() -> None:
    c = compare_ratio([120.0, 0.0], [100.0, 90.0], "latency")
    assert not c.compared and c.reason == "only one case measured in both arms"


def _latency_medians(
    rng: np.random.Generator, n: int, truth: float, tails: str, runs: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """`runs` experiments of `n` cases, shape (runs, n) (n alone when runs is 1). Per
    case: a length shared by both arms, then each arm's median of 3 calls with
    log-normal noise (and, for `outliers`, 5% of calls 3-6× slower: a queue, a GC
    pause). The arm is `truth` times slower."""
    length = rng.lognormal(6, 0.8, (runs, n, 1))

    def median_of_3(scale: float) -> np.ndarray:
        calls = scale * length * rng.lognormal(0, 0.3, (runs, n, 3))
        if tails == "outliers":
            slow = rng.random((runs, n, 3)) < 0.05
            calls *= np.where(slow, rng.uniform(3, 6, (runs, n, 3)), 1)
        return np.median(calls, axis=2).squeeze(0) if runs == 1 else np.median(calls, axis=2)

    return median_of_3(truth), median_of_3(1.0)


@pytest.mark.slow
@pytest.mark.parametrize("tails", ["log-normal", "outliers"])
def test_ratio_intervals_cover_from_2_cases_up(tails: str) -> None:
    """The ratio's 95% interval (the one `compare_ratio` reports) covers the true ratio,
    1 and 1.2, in at least 93% of 2,000 experiments at every n from 2."""
    arm, base = _latency_medians(np.random.default_rng(0), 6, 1.2, tails)
    c = compare_ratio(arm, base, "latency")
    low, high = log_t_interval(np.log(arm / base))
    assert (c.ci_low, c.ci_high) == pytest.approx((math.exp(low), math.exp(high)))
    for n in (2, 3, 4, 5, 8, 12, 20):
        for truth in (1.0, 1.2):
            rng = np.random.default_rng(n * 10 + int(truth * 10) + len(tails))
            covered = 0
            for arm, base in zip(*_latency_medians(rng, n, truth, tails, 2000), strict=True):
                low, high = log_t_interval(np.log(arm / base))
                covered += low <= math.log(truth) <= high
            assert covered / 2000 >= 0.93, (n, truth, covered / 2000)


@pytest.mark.slow
def test_equal_latencies_are_rarely_called_different_at_small_n() -> None:
    for n in (2, 3, 5, 8, 20):
        rng = np.random.default_rng(n)
        claims = 0
        for _ in range(300):
            c = compare_arms(
                {"b": compare_ratio(*_latency_medians(rng, n, 1.0, "outliers"), "latency")}
            )
            claims += c["b"].verdict in ("better", "worse")
        assert sps.binomtest(claims, 300, 0.05, alternative="greater").pvalue >= 0.01, (n, claims)
