"""What a comparison can detect, and how many cases it would take: pure functions of
the number of units, their spread and the test's level, shared by the report's
verdicts, the gates of ``compare`` and ``nightly``, and ``validate``.

Two models of a difference:

- **pass/fail with one call per case** (case differences −1, 0 or +1): a case is a win
  with probability p_win and a loss with p_loss. Power is that of the exact test the
  verdicts use (McNemar's, conditional on the discordant count), summed exactly over
  the binomial law of that count — so it knows that the test needs at least
  `min_units_to_reject` discordant cases and that a difference can be no larger than
  the share of cases that differ.
- **anything else** (repeats above temperature 0, continuous scores, clusters, the logs
  of latency and cost ratios): a shift of the mean of case differences with SD `sd`,
  detected by a t interval: shift − threshold ≥ (t₁₋α/₂ + t_power)·sd/√n, with n − 1
  degrees of freedom; never with fewer units than the sign-flip test can reject with.

"Cases needed" is always for a stated difference (the equivalence margin, a gate's
threshold) and from the spread alone, never from the effect a run happened to show:
that effect is noise squared in a denominator (the same true effect quoted 65 to 8,730
cases needed across runs). Its range follows the spread's own uncertainty.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import special
from scipy import stats as sps

POWER = 0.8
SPREAD_LEVEL = 0.90  # the range quoted for "cases needed": the spread's 90% interval
MAX_CASES = 10_000_000  # "cases needed" is not searched beyond this


def min_units_to_reject(alpha: float, arms: int = 1) -> int:
    """The fewest non-zero units with which the two-sided sign-flip test can give
    p < alpha / arms (Holm's first step). Its smallest p with k units is 2 / 2^k (every
    unit moving the same way): with one call per case, McNemar's exact test needs 6
    discordant cases at 5%, 8 at 1%, 7 at 5% over two arms."""
    level = alpha / max(arms, 1)
    k = 1
    while 2.0 * 0.5**k >= level:
        k += 1
    return k


_CRITICAL: dict[float, np.ndarray] = {}


def _critical_counts(n: int, level: float) -> np.ndarray:
    """For k = 0..n discordant cases, the smallest count c > k/2 of one kind with which
    the two-sided exact binomial test rejects (2·P(X ≥ c) < level); k + 1 when none.
    It depends on k alone, so one table per level serves every n (grown by doubling)."""
    table = _CRITICAL.get(level)
    if table is None or table.size <= n:
        table = _critical_table(max(n, 2 * (table.size if table is not None else 64)), level)
        _CRITICAL[level] = table
    return table[: n + 1]


def _critical_table(n: int, level: float) -> np.ndarray:
    ks = np.arange(n + 1)

    def rejects(c: np.ndarray) -> np.ndarray:
        return (c <= ks) & (2 * special.bdtrc(np.minimum(c, ks) - 1, ks, 0.5) < level)

    least = ks // 2 + 1
    z = float(special.ndtri(1 - level / 2))
    c = np.maximum(least, np.floor(ks / 2 + z * np.sqrt(ks) / 2).astype(np.int64))  # normal
    for _ in range(n + 2):  # a step or two from the normal approximation, either way
        up = ~rejects(c) & (c <= ks)
        down = (c - 1 >= least) & rejects(c - 1)
        if not (up.any() or down.any()):
            break
        c = c + up - down
    return np.where(c <= ks, c, ks + 1).astype(np.int64)


def exact_paired_power(n: int, p_win: float, p_loss: float, alpha: float) -> float:
    """Power of the two-sided exact McNemar test at `alpha` over `n` cases, each a win
    with probability `p_win` and a loss with `p_loss`."""
    discordant = min(1.0, p_win + p_loss)
    if n <= 0 or discordant <= 0:
        return 0.0
    ks = np.arange(n + 1)  # integers: scipy.special warns (slowly) on float counts
    c = _critical_counts(n, alpha)
    share = min(1.0, p_loss / discordant)
    # P(count of discordant = k), then P(losses ≥ c or ≤ k − c | k); scipy.special's
    # binomial tails are ~20x quicker than scipy.stats' (this runs inside bisections)
    counts = np.diff(special.bdtr(ks, n, discordant), prepend=0.0)
    upper = special.bdtrc(c - 1, ks, share)
    lower = np.where(ks >= c, special.bdtr(np.maximum(ks - c, 0), ks, share), 0.0)
    return float((counts * (upper + lower)).sum())


def _shares(discordance: float, effect: float, added: bool) -> tuple[float, float]:
    """(p_win, p_loss) for a difference `effect` (arm − baseline; a drop when the
    baseline is last night) against a share `discordance` of cases that differ: that
    share includes the effect (at least the effect, δ ≤ discordance is not assumed),
    or, `added`, is chance discordance the effect adds to."""
    share = discordance + effect if added else max(discordance, effect)
    return (share - effect) / 2, (share + effect) / 2


def binary_detectable(
    n: int,
    discordance: float,
    alpha: float,
    power: float = POWER,
    cap: float = 1.0,
    added: bool = False,
) -> float | None:
    """The smallest pass-rate difference the exact test detects with `power` over `n`
    cases (one call each) when a share `discordance` of cases differ between the arms
    (see `_shares`). None when no difference up to `cap` is detected that reliably."""

    def power_at(effect: float) -> float:
        return exact_paired_power(n, *_shares(discordance, effect, added), alpha)

    cap = min(cap, 1.0 - discordance if added else 1.0)
    if n <= 0 or cap <= 0 or power_at(cap) < power:
        return None
    low, high = 0.0, cap
    for _ in range(20):  # to a millionth of the scale
        mid = (low + high) / 2
        low, high = (low, mid) if power_at(mid) >= power else (mid, high)
    return high


def binary_cases_needed(
    effect: float, discordance: float, alpha: float, added: bool = False
) -> int | None:
    """Cases (one call each) for the exact test to detect a pass-rate difference of
    `effect` with 80% power when a share `discordance` of cases differ (`_shares`).
    Searched from the normal approximation's figure, so a few exact evaluations do."""
    p_win, p_loss = _shares(discordance, effect, added)
    if effect <= 0 or p_win + p_loss > 1:
        return None

    def enough(n: int) -> bool:
        return exact_paired_power(n, p_win, p_loss, alpha) >= POWER

    z_a, z_b = special.ndtri(1 - alpha / 2), special.ndtri(POWER)
    sd0, sd1 = math.sqrt(p_win + p_loss), math.sqrt(max(p_win + p_loss - effect**2, 0.0))
    guess = max(2, math.ceil(((z_a * sd0 + z_b * sd1) / effect) ** 2))
    low, high = max(1, guess // 2), guess
    while not enough(high):
        low, high = high, high * 2
        if high > MAX_CASES:
            return None
    while low > 1 and enough(low):
        low, high = max(1, low // 2), low
    while high - low > 1:  # power is not monotone in n by a hair (the lattice): take the first
        mid = (low + high) // 2
        low, high = (low, mid) if enough(mid) else (mid, high)
    return high


def _t(p: float, df: int) -> float:
    """Student's t quantile (scipy.special's: ~30x quicker than scipy.stats', and this
    runs inside searches)."""
    return float(special.stdtrit(df, p)) if df >= 1 else math.inf


def detectable_shift(
    se: float, df: int, alpha: float, power: float = POWER, threshold: float = 0.0
) -> float:
    """The smallest shift of a mean with standard error `se` (on `df` degrees of
    freedom) that a two-sided t interval at `alpha` puts beyond `threshold` (a gate's
    own margin; 0 for a verdict) with probability `power`."""
    if df < 1:
        return math.inf
    return threshold + (_t(1 - alpha / 2, df) + _t(power, df)) * se


def cases_needed(sd: float, effect: float, alpha: float, power: float = POWER) -> int | None:
    """Units (SD `sd` each) for a two-sided t interval at `alpha` to detect a shift of
    `effect` with `power` (iterated so the t quantiles match the n they give). With
    `alpha` doubled and power 0.9 it is the n for an equivalence claim (two one-sided
    tests at `alpha`/2… each passing with 0.9) when the truth is 0."""
    if effect <= 0 or not math.isfinite(sd):
        return None
    if sd <= 0:
        return 2
    z = special.ndtri(1 - alpha / 2) + special.ndtri(power)
    n = max(2, math.ceil((z * sd / effect) ** 2))
    for _ in range(20):
        df = n - 1
        better = max(2, math.ceil(((_t(1 - alpha / 2, df) + _t(power, df)) * sd / effect) ** 2))
        if better == n or better > MAX_CASES:
            break
        n = better
    return n if n <= MAX_CASES else None


def spread_range(sd: float, n_units: int, level: float = SPREAD_LEVEL) -> tuple[float, float]:
    """The `level` interval of an SD estimated from `n_units` units (chi-square)."""
    df = max(n_units - 1, 1)
    tail = (1 - level) / 2
    return (
        sd * math.sqrt(df / special.chdtri(df, tail)),  # chdtri: the upper quantile
        sd * math.sqrt(df / special.chdtri(df, 1 - tail)),
    )


def discordance_range(discordant: int, n: int, level: float = SPREAD_LEVEL) -> tuple[float, float]:
    """Clopper–Pearson `level` interval of the share of cases that differ."""
    ci = sps.binomtest(discordant, n).proportion_ci(level, method="exact")
    return float(ci.low), float(ci.high)
