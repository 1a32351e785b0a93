"""Statistics for comparing arms. The unit is the case, never the call.

Repeats of one case are not independent evidence (at temperature 0 they are copies),
so every figure first averages a case's repeats, then tests and resamples over cases
(Miller 2024, "Adding Error Bars to Evals", arXiv 2411.00640). Datasets whose cases
come in groups name a cluster field; the unit is then the cluster.

Against the baseline, on the case-level differences d (arm − baseline):

- **test**: sign-flip permutation test of the mean of d — under "the arms are equally
  good" each case's two labels are exchangeable, so every sign pattern is equally
  likely. Exact (binomial, which is McNemar's exact test when each case has one call,
  or a lattice convolution when repeats make d a multiple of 1/R); Monte Carlo with
  `N_FLIPS` seeded flips for continuous scores (stopping at `N_FLIPS_FIRST` when p is
  clearly large); the normal limit past `NORMAL_FROM` non-zero units. Holm's step-down
  correction across arms.
- **interval**: the mean of d with two pseudo-cases added, a cluster-robust standard
  error and Student's t. For pass rates they sit at +1 and −1: with one call per case
  this is the Bonett–Price adjusted Wald interval for paired proportions. For mean
  scores they sit at the largest case difference seen (toward the scale's bound while
  few cases differ, `pseudo_case_scale`), so the width follows the scores' own spread.
  Either way it never collapses to zero width, so one tied pair is not evidence of "no
  difference".
- **verdict**: ``better``/``worse`` when the adjusted p < `ALPHA` and the 95% interval
  excludes 0 on that side (a mean-score verdict also needs the cases' own direction
  not to be significantly the other way); ``negligible`` is set when such an effect's
  90% interval lies inside ±`EQUIVALENCE_MARGIN`. ``no_difference`` is the TOST
  equivalence claim: the 90% interval inside ±margin. Otherwise ``inconclusive``.
  With no usable case the comparison is not made and says why.
- **power** (`report.power`): the effect detectable with 80% power (α Bonferroni-split
  over the arms, Holm's first step) with the cases at hand — exact for pass/fail with
  one call per case, from the observed spread otherwise; none when no difference that
  can exist would be, and nothing at all when the units are too few for the test ever
  to reject. When inconclusive, the cases needed to detect a margin-sized difference
  (or to show one inside the margin), with a range from the spread's uncertainty.

Latency and cost are compared as ratios: per case, the log of arm ÷ baseline (median
latency over repeats, mean cost per call); the geometric mean with Student's t interval
on the logs (from `MIN_RATIO_CASES` cases; "no difference" from `MIN_RATIO_EQUIVALENCE`).

Per arm: pass rate and mean score over case means with the same pseudo-case t interval
(one pseudo-case at each end of the scale; Agresti–Coull-like for one call per case), latency
quantiles with distribution-free order-statistic intervals (none when the calls are
too few to estimate that quantile at all).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import special
from scipy import stats as sps

from .limits import MIN_CALLS_FOR
from .power import (
    binary_cases_needed,
    binary_detectable,
    cases_needed,
    detectable_shift,
    discordance_range,
    min_units_to_reject,
    spread_range,
)

ALPHA = 0.05
N_FLIPS = 10_000
# Sequential Monte Carlo (Besag & Clifford 1991): after the first N_FLIPS_FIRST flips, a
# p already at ~0.1 or more (EARLY_EXTREME flips as extreme) is returned from those
# (±0.01); only a p that could be near a test's level draws all N_FLIPS. A true p below
# 0.05 gives 100 extreme flips in 1,000 with probability < 1e-12.
N_FLIPS_FIRST = 1_000
EARLY_EXTREME = 100
NORMAL_FROM = 100  # non-zero units: from here the (symmetric) permutation law is normal
# Values drawn per chunk of sign flips: about 1 MB each way. The draws do not depend on
# it, so neither do the figures (tests/test_stats.py).
CHUNK_VALUES = 65_536
SEED = 20261122
EQUIVALENCE_MARGIN = 0.05  # 5 points of pass rate or mean score
RATIO_MARGIN = 0.10  # latency and cost: within ±10% is "no difference"
MIN_RATIO_CASES = 2  # a latency or cost ratio from fewer cases has no interval
# "no difference" on a ratio needs this many cases: a handful of cases with the same
# tokens at the same price have ratios without spread, and an interval without width
MIN_RATIO_EQUIVALENCE = 5


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the input order."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def mcnemar_exact(wins: int, losses: int) -> float:
    """Two-sided exact McNemar test: the discordant pairs split 50/50 under H0."""
    if wins + losses == 0:
        return 1.0
    return float(sps.binomtest(wins, wins + losses, 0.5).pvalue)


# -- the permutation test -------------------------------------------------------------


def _lattice(x: np.ndarray, max_denominator: int = 120) -> np.ndarray | None:
    """`x` as integers k/M for the smallest M ≤ max_denominator, if there is one."""
    for m in range(1, max_denominator + 1):
        scaled = x * m
        rounded = np.rint(scaled)
        if np.all(np.abs(scaled - rounded) < 1e-9):
            return rounded.astype(np.int64)
    return None


def sign_flip_p(t: np.ndarray, seed: int = SEED) -> float:
    """Two-sided p of the sign-flip test of ``sum(t) = 0``: P(|Σ s·t| ≥ |Σ t|)."""
    x = np.abs(t[t != 0])
    k = x.size
    if k == 0:
        return 1.0
    if np.allclose(x, x[0], rtol=0, atol=1e-12):
        return mcnemar_exact(int((t > 0).sum()), int((t < 0).sum()))
    ints = _lattice(x)
    if ints is not None and k * int(ints.sum()) <= 20_000_000:
        return _exact_lattice_p(ints, int(round(abs(float((np.sign(t[t != 0]) * ints).sum())))))
    observed = abs(float(t.sum())) - 1e-12 * max(1.0, float(x.sum()))
    if k >= NORMAL_FROM:
        return float(2 * sps.norm.sf(observed / math.sqrt(float((x * x).sum()))))
    rng = np.random.default_rng(seed)
    extreme = drawn = 0
    chunk = max(1, CHUNK_VALUES // k)
    for stage in (N_FLIPS_FIRST, N_FLIPS):
        while drawn < stage:
            # one double per sign (not int8, whose draws are buffered): chunk-independent
            signs = np.where(rng.random((min(chunk, stage - drawn), k)) < 0.5, -1.0, 1.0)
            extreme += int((np.abs(signs @ x) >= observed).sum())
            drawn += signs.shape[0]
        if extreme >= EARLY_EXTREME:  # p clearly above any level a verdict or gate uses
            break
    return (1 + extreme) / (1 + drawn)


def _exact_lattice_p(ints: np.ndarray, observed: int) -> float:
    """P(|Σ s_i·k_i| ≥ observed) for fair random signs, by convolution."""
    total = int(ints.sum())
    dist = np.zeros(2 * total + 1)
    dist[total] = 1.0
    for k in ints.tolist():
        dist = 0.5 * (np.roll(dist, k) + np.roll(dist, -k))  # never wraps: |sum| ≤ total
    values = np.arange(-total, total + 1)
    return float(min(1.0, dist[np.abs(values) >= observed].sum()))


# -- intervals --------------------------------------------------------------------------


def adjusted_interval(
    totals: np.ndarray,
    sizes: np.ndarray,
    bound: float,
    level: float = 0.95,
    centre: float = 0.0,
    pseudo: float | None = None,
) -> tuple[float, float, float]:
    """(low, high, standard error) of the mean Σtotals/Σsizes with two pseudo-units of
    one case each at centre ± `pseudo` (default: the bound), a cluster-robust variance
    and Student's t; clipped to centre ± bound."""
    g_real = totals.size
    half = bound if pseudo is None else pseudo
    t2 = np.append(totals, [centre + half, centre - half])
    m2 = np.append(sizes, [1.0, 1.0])
    n = float(m2.sum())
    mean = float(t2.sum()) / n
    g = t2.size
    var = g / (g - 1) * float(((t2 - mean * m2) ** 2).sum()) / (n * n)
    se = math.sqrt(var)
    q = float(special.stdtrit(max(g_real - 1, 1), 0.5 + level / 2))
    low, high = mean - q * se, mean + q * se
    return max(low, centre - bound), min(high, centre + bound), se


def pseudo_case_scale(d: np.ndarray, bound: float) -> float:
    """How far out a mean-score interval's two pseudo-cases sit: at the largest case
    difference seen, and nearer the scale's bound while few cases differ — at least
    bound/(k+1), k the cases whose scores differ. All tied, they sit at the bound, as for
    pass rates (nothing seen says how far apart the arms could be); thirty cases that
    each moved a few points put them a few points out, so the interval's width follows
    the data's own spread instead of the scale's (tests/test_stats.py validates it on
    low-spread, skewed, bimodal and tied scores)."""
    if d.size == 0:
        return bound
    moved = np.abs(d) > 1e-12
    largest = float(np.abs(d).max())
    return min(bound, max(largest, bound / (int(moved.sum()) + 1)))


def _units(values: np.ndarray, clusters: Sequence[object] | None) -> tuple[np.ndarray, np.ndarray]:
    """(per-unit totals, per-unit case counts): cases, or clusters of cases."""
    if clusters is None:
        return values, np.ones_like(values)
    labels = np.asarray([str(c) for c in clusters])
    _, inverse = np.unique(labels, return_inverse=True)
    totals = np.bincount(inverse, weights=values)
    sizes = np.bincount(inverse).astype(float)
    return totals, sizes


def quantile_ci(
    values: Sequence[float] | np.ndarray, q: float, level: float = 0.95
) -> tuple[float | None, float | None, float | None]:
    """(estimate, low, high) of the q-quantile; the interval from order statistics
    (distribution-free). (None, None, None) below `MIN_CALLS_FOR[q]` values; the
    interval alone is None when the values are too few for that level."""
    x = np.sort(np.asarray(values, dtype=float))
    n = x.size
    if n == 0 or n < MIN_CALLS_FOR.get(q, 1):
        return None, None, None
    estimate = float(np.quantile(x, q))
    tail = (1 - level) / 2
    lo_rank = int(sps.binom.ppf(tail, n, q))  # P(X < lo_rank) ≤ tail: x[lo_rank-1] is below
    hi_rank = int(sps.binom.ppf(1 - tail, n, q)) + 1
    if lo_rank < 1 or hi_rank > n:
        return estimate, None, None
    return estimate, float(x[lo_rank - 1]), float(x[hi_rank - 1])


def mean_ci(values: np.ndarray, low: float, high: float) -> tuple[float | None, float | None]:
    """95% interval of an arm's mean of case means in [low, high] (pass rates: [0, 1]),
    with a pseudo-case at each end of the scale."""
    if values.size == 0:
        return None, None
    half = (high - low) / 2
    lo, hi, _ = adjusted_interval(values, np.ones_like(values), half, centre=low + half)
    return lo, hi


# -- comparisons --------------------------------------------------------------------


@dataclass
class Comparison:
    metric: str
    n_pairs: int  # cases with a usable value in both arms
    wins: int
    ties: int
    losses: int
    diff: float | None  # arm − baseline; for ratio metrics, arm ÷ baseline
    ci_low: float | None
    ci_high: float | None
    p_value: float | None
    ci90_low: float | None = None
    ci90_high: float | None = None
    n_units: int = 0  # clusters, or cases
    sd: float | None = None  # effective per-case SD of the differences, for power
    p_adjusted: float | None = None
    verdict: str = "inconclusive"
    negligible: bool = False
    reason: str | None = None  # why not compared, or why inconclusive despite p
    n_needed: int | None = None  # cases to detect a margin-sized difference (or show none)
    mde: float | None = None  # detectable with 80% power here; ratios: as a factor
    direction_p: float | None = None  # sign test of the cases' own direction
    excluded: dict[str, int] = field(default_factory=dict)
    discordance: float | None = None  # pass/fail, one call per case: share of cases differing
    room: float | None = None  # the largest |difference| that can exist (the scale's ends)
    min_units: int | None = None  # fewest non-zero units with which the test can reject
    n_needed_range: tuple[int, int] | None = None  # from the spread's 90% interval
    n_needed_goal: str | None = None  # "detect" the margin, or show "equivalence" within it
    caveats: list[str] = field(default_factory=list)
    label: str | None = None  # what a comparison not made shows instead ("0 in both")

    @property
    def compared(self) -> bool:
        return self.diff is not None


def not_compared(metric: str, reason: str, excluded: dict[str, int] | None = None) -> Comparison:
    c = Comparison(metric, 0, 0, 0, 0, None, None, None, None, reason=reason)
    c.excluded = excluded or {}
    return c


def paired_interval(
    d: np.ndarray,
    metric: str,
    *,
    clusters: Sequence[object] | None = None,
    bound: float = 1.0,
    level: float = 0.95,
) -> tuple[float, float, float]:
    """(low, high, standard error) of the mean case difference `d`: pass rates with
    pseudo-cases at ±bound (Bonett–Price), other metrics at `pseudo_case_scale`."""
    totals, sizes = _units(d, clusters)
    pseudo = bound if metric == "pass_rate" else pseudo_case_scale(d, bound)
    return adjusted_interval(totals, sizes, bound, level=level, pseudo=pseudo)


def compare_paired(
    arm: Sequence[float] | np.ndarray,
    base: Sequence[float] | np.ndarray,
    metric: str,
    *,
    clusters: Sequence[object] | None = None,
    bound: float = 1.0,
    level: float = 0.95,
    seed: int = SEED,
    low: float = 0.0,
) -> Comparison:
    """Compare case-level values (a case's mean over its repeats) of an arm and the
    baseline, aligned by case; values lie in [low, low + bound], so `bound` is the
    largest possible |difference|. The interval is at `level` (gates use a stricter
    one than reports). Pass rates put the pseudo-cases at ±bound (Bonett–Price); other
    metrics (mean score) at `pseudo_case_scale`, so a small, consistent change in a
    continuous score is seen."""
    a = np.asarray(arm, dtype=float)
    b = np.asarray(base, dtype=float)
    if a.size == 0:
        return not_compared(metric, "no case has a value in both arms")
    d = a - b
    wins, losses = int((d > 1e-12).sum()), int((d < -1e-12).sum())
    totals, _ = _units(d, clusters)
    lo, hi, se = paired_interval(d, metric, clusters=clusters, bound=bound, level=level)
    lo90, hi90, _ = paired_interval(d, metric, clusters=clusters, bound=bound, level=0.90)
    binary = clusters is None and bool(np.all(np.isin(np.abs(d), (0.0, bound))))
    base_mean = float(b.mean())
    c = Comparison(
        metric,
        int(a.size),
        wins,
        int(a.size) - wins - losses,
        losses,
        float(d.mean()),
        lo,
        hi,
        sign_flip_p(totals, seed),
        lo90,
        hi90,
        n_units=int(totals.size),
        sd=se * math.sqrt(a.size),  # per case, clusters' design effect included
        direction_p=mcnemar_exact(wins, losses),
    )
    c.discordance = (wins + losses) / a.size if binary and metric == "pass_rate" else None
    c.room = max(low + bound - base_mean, base_mean - low)
    return c


def log_t_interval(logs: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Student's t interval of the mean of `logs` (at least 2 values). A bootstrap
    cannot reach beyond the data it resamples: at 2 cases its 95% interval covered the
    true ratio half the time; t's covers it at the nominal rate from 2 cases up when the
    logs are roughly symmetric, as a ratio's are (tests/test_stats.py)."""
    n = logs.size
    half = float(special.stdtrit(n - 1, 0.5 + level / 2)) * float(logs.std(ddof=1)) / math.sqrt(n)
    mean = float(logs.mean())
    return mean - half, mean + half


def compare_ratio(
    arm: Sequence[float] | np.ndarray,
    base: Sequence[float] | np.ndarray,
    metric: str,
    *,
    level: float = 0.95,
    seed: int = SEED,
) -> Comparison:
    """Compare positive per-case values (latency, cost) as arm ÷ baseline: geometric
    mean of the per-case ratios, a t interval on their logs at `level`, sign-flip test
    on the logs. One case gives no interval: not compared."""
    a = np.asarray(arm, dtype=float)
    b = np.asarray(base, dtype=float)
    keep = (a > 0) & (b > 0) & np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    if a.size < MIN_RATIO_CASES:
        measured = "no case" if a.size == 0 else "only one case"
        return not_compared(metric, f"{measured} measured in both arms")
    logs = np.log(a) - np.log(b)
    lo, hi = log_t_interval(logs, level)
    lo90, hi90 = log_t_interval(logs, 0.90)
    wins, losses = int((logs < 0).sum()), int((logs > 0).sum())  # lower is better
    return Comparison(
        metric,
        int(a.size),
        wins,
        int(a.size) - wins - losses,
        losses,
        math.exp(float(logs.mean())),
        math.exp(lo),
        math.exp(hi),
        sign_flip_p(logs, seed),
        math.exp(lo90),
        math.exp(hi90),
        n_units=int(a.size),
        sd=float(logs.std(ddof=1)),
    )


def decide(
    c: Comparison,
    m: int = 1,
    alpha: float = ALPHA,
    margin: float = EQUIVALENCE_MARGIN,
    power: bool = True,
) -> Comparison:
    """Fill in the verdict (needs `p_adjusted`), the effect detectable at this n and,
    when inconclusive, the cases needed (unless not `power`: simulations of the
    verdict alone skip them). `m` is the number of arms compared (Holm)."""
    if not c.compared:
        c.verdict = "inconclusive"
        return c
    assert c.diff is not None and c.ci_low is not None and c.ci_high is not None
    assert c.ci90_low is not None and c.ci90_high is not None
    ratio = c.metric in RATIO_METRICS
    zero, lower_is_better = (1.0, True) if ratio else (0.0, False)
    inside = (
        (
            c.ci90_low > 1 / (1 + RATIO_MARGIN)
            and c.ci90_high < 1 + RATIO_MARGIN
            and c.n_units >= MIN_RATIO_EQUIVALENCE
        )
        if ratio
        else (-margin < c.ci90_low and c.ci90_high < margin)
    )
    p = c.p_adjusted if c.p_adjusted is not None else c.p_value
    assert p is not None
    up = p < alpha and c.ci_low > zero
    down = p < alpha and c.ci_high < zero
    if up or down:
        c.verdict = "worse" if up == lower_is_better else "better"
        c.negligible = inside
        against = c.losses > c.wins if c.verdict == "better" else c.wins > c.losses
        if not ratio and against and c.direction_p is not None and c.direction_p < alpha:
            c.verdict = "inconclusive"
            c.reason = (
                f"the mean moved one way but most cases moved the other ({c.wins} wins, "
                f"{c.losses} losses): a few cases dominate"
            )
    elif inside:
        c.verdict = "no_difference"
    else:
        c.verdict = "inconclusive"
    if power:
        _power(c, m, alpha, margin)
    return c


def _power(c: Comparison, m: int, alpha: float, margin: float) -> None:
    """What these cases can detect, and, when the verdict is inconclusive, how many
    would detect a margin-sized difference (or show one inside the margin) — from the
    spread alone, never from the effect seen (`report.power`)."""
    level = alpha / max(m, 1)  # Holm's first step
    c.min_units = min_units_to_reject(alpha, m)
    if c.sd is None or c.n_units == 0 or c.n_units < c.min_units:
        return  # no test at this level can reject: the report says so instead
    ratio = c.metric in RATIO_METRICS
    per_unit = c.n_pairs / c.n_units
    se = c.sd / math.sqrt(c.n_pairs)
    if c.discordance is not None:
        c.mde = binary_detectable(c.n_pairs, c.discordance, level, cap=c.room or 1.0)
    else:
        shift = detectable_shift(se, c.n_units - 1, level)
        if ratio:
            c.mde = math.exp(shift) if math.isfinite(shift) else None
        else:
            c.mde = shift if shift <= (c.room if c.room is not None else math.inf) else None
    if c.verdict != "inconclusive" or c.diff is None:
        return
    target = math.log(1 + RATIO_MARGIN) if ratio else margin
    seen = abs(math.log(c.diff)) if ratio else abs(c.diff)
    c.n_needed_goal = "detect" if seen >= target else "equivalence"
    if c.discordance is not None and c.n_needed_goal == "detect":
        k = round(c.discordance * c.n_pairs)
        lo, hi = discordance_range(k, c.n_pairs)
        figures = [binary_cases_needed(target, share, level) for share in (c.discordance, lo, hi)]
    else:
        sds = (c.sd, *spread_range(c.sd, c.n_units))
        if c.n_needed_goal == "detect":
            figures = [cases_needed(sd, target, level) for sd in sds]
        else:  # two one-sided tests at α, each passing with 0.9 when the truth is 0
            figures = [cases_needed(sd, target, 2 * alpha, 0.9) for sd in sds]
    least = math.ceil(c.min_units * per_unit)
    needed = [None if n is None else max(n, least) for n in figures]
    if needed[0] is None or needed[0] <= c.n_pairs:
        c.n_needed_goal = None  # these cases already suffice for that: the effect is smaller
        return
    c.n_needed = needed[0]
    c.n_needed_range = (needed[1] or needed[0], needed[2] or needed[0])


RATIO_METRICS = ("latency", "cost")


def compare_arms(
    pairs_by_arm: dict[str, Comparison],
    alpha: float = ALPHA,
    margin: float = EQUIVALENCE_MARGIN,
    power: bool = True,
) -> dict[str, Comparison]:
    """Holm-adjust the p-values of one metric's comparisons across arms, then decide."""
    compared = {arm: c for arm, c in pairs_by_arm.items() if c.compared}
    adjusted = holm([c.p_value or 1.0 for c in compared.values()])
    for c, p_adj in zip(compared.values(), adjusted, strict=True):
        c.p_adjusted = p_adj
    for c in pairs_by_arm.values():
        decide(c, m=len(compared), alpha=alpha, margin=margin, power=power)
    return pairs_by_arm
