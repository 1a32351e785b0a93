"""Statistics for comparing arms, with the formulas they use.

Per arm
- pass rate with a Wilson score interval (95%): for k passes in n,
  ``(p + z²/2n ± z·sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n)``;
- mean score, latency and TTFT quantiles with percentile bootstrap intervals.

Against the baseline, paired by (case, repeat)
- difference (arm − baseline) of pass rate or mean score, with a paired percentile
  bootstrap interval: resample the pairs with replacement `N_BOOT` times (seed
  `SEED`, so reports are reproducible) and take the 2.5th and 97.5th percentiles;
- pass/fail: exact McNemar test — under H0 the b wins and c losses split 50/50, so
  ``p = min(1, 2·P[Binomial(b + c, ½) ≤ min(b, c)])``; scores: the sign test on the
  non-zero paired differences, the same binomial test;
- Holm's step-down correction across the arms compared with the baseline;
- verdict: ``better``/``worse`` when the adjusted test rejects at `ALPHA` and the
  interval excludes 0 on the same side; ``no_difference`` when the interval lies
  inside ±`EQUIVALENCE_MARGIN`; otherwise ``inconclusive``, with the approximate number
  of pairs needed to tell (Connor's formula for paired proportions at 80% power when
  an effect is seen, else the n that would shrink the interval to the margin).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import binomtest

ALPHA = 0.05
Z = 1.959963984540054
Z_POWER = 0.8416212335729143  # 80% power
N_BOOT = 2000
SEED = 20261122
EQUIVALENCE_MARGIN = 0.05  # 5 points of pass rate or mean score


def wilson(k: int, n: int, z: float = Z) -> tuple[float | None, float | None]:
    if n == 0:
        return None, None
    p = k / n
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    denom = 1 + z * z / n
    return max(0.0, (centre - spread) / denom), min(1.0, (centre + spread) / denom)


def _rng() -> np.random.Generator:
    return np.random.default_rng(SEED)


def bootstrap_ci(
    values: Sequence[float], stat: str = "mean", q: float = 0.5, n_boot: int = N_BOOT
) -> tuple[float | None, float | None, float | None]:
    """(estimate, low, high) of the mean or the q-quantile, percentile bootstrap."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return None, None, None
    idx = _rng().integers(0, x.size, size=(n_boot, x.size))
    samples = x[idx]
    if stat == "mean":
        est, boots = float(x.mean()), samples.mean(axis=1)
    else:
        est, boots = float(np.quantile(x, q)), np.quantile(samples, q, axis=1)
    return est, float(np.quantile(boots, 0.025)), float(np.quantile(boots, 0.975))


def paired_bootstrap_diff(
    arm: Sequence[float] | np.ndarray,
    base: Sequence[float] | np.ndarray,
    n_boot: int = N_BOOT,
    seed: int = SEED,
) -> tuple[float, float, float]:
    """(mean of arm − base, low, high) resampling the pairs together."""
    d = np.asarray(arm, dtype=float) - np.asarray(base, dtype=float)
    if d.size == 0:
        return 0.0, 0.0, 0.0
    idx = np.random.default_rng(seed).integers(0, d.size, size=(n_boot, d.size))
    boots = d[idx].mean(axis=1)
    return float(d.mean()), float(np.quantile(boots, 0.025)), float(np.quantile(boots, 0.975))


def sign_test(wins: int, losses: int) -> float:
    """Two-sided exact binomial test on the discordant pairs (McNemar for pass/fail)."""
    if wins + losses == 0:
        return 1.0
    return float(binomtest(wins, wins + losses, 0.5).pvalue)


def mcnemar_exact(wins: int, losses: int) -> float:
    return sign_test(wins, losses)


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


@dataclass
class Comparison:
    metric: str
    n_pairs: int
    wins: int
    ties: int
    losses: int
    diff: float
    ci_low: float
    ci_high: float
    p_value: float
    p_adjusted: float | None = None
    verdict: str = "inconclusive"
    n_needed: int | None = None


def compare_paired(arm: Sequence[float], base: Sequence[float], metric: str) -> Comparison:
    """Paired comparison of per-pair values (1/0 for pass/fail, scores in [0, 1])."""
    a = np.asarray(arm, dtype=float)
    b = np.asarray(base, dtype=float)
    wins, losses = int((a > b).sum()), int((a < b).sum())
    diff, lo, hi = paired_bootstrap_diff(a, b)
    return Comparison(
        metric,
        int(a.size),
        wins,
        int(a.size) - wins - losses,
        losses,
        diff,
        lo,
        hi,
        sign_test(wins, losses),
    )


def decide(c: Comparison, alpha: float = ALPHA, margin: float = EQUIVALENCE_MARGIN) -> Comparison:
    """Fill in the verdict (needs `p_adjusted`) and, if inconclusive, the n needed."""
    p = c.p_adjusted if c.p_adjusted is not None else c.p_value
    if p < alpha and c.ci_low > 0:
        c.verdict = "better"
    elif p < alpha and c.ci_high < 0:
        c.verdict = "worse"
    elif -margin < c.ci_low and c.ci_high < margin:
        c.verdict = "no_difference"
    else:
        c.verdict = "inconclusive"
        c.n_needed = pairs_needed(c, alpha, margin)
    return c


def pairs_needed(
    c: Comparison, alpha: float = ALPHA, margin: float = EQUIVALENCE_MARGIN
) -> int | None:
    if c.n_pairs == 0:
        return None
    discordant = max((c.wins + c.losses) / c.n_pairs, 1 / c.n_pairs)
    effect = abs(c.diff)
    from scipy.stats import norm

    z_a = float(norm.ppf(1 - alpha / 2))
    if effect > 0 and discordant > effect**2:
        n = (
            z_a * math.sqrt(discordant) + Z_POWER * math.sqrt(discordant - effect**2)
        ) ** 2 / effect**2
    else:  # no effect seen: the pairs that would narrow the interval to ±margin
        n = discordant * (z_a / margin) ** 2
    return max(int(math.ceil(n)), c.n_pairs + 1)


def compare_arms(
    pairs_by_arm: dict[str, tuple[list[float], list[float]]], metric: str
) -> dict[str, Comparison]:
    """Compare every arm with the baseline on one metric, Holm-adjusted across arms."""
    out = {arm: compare_paired(a, b, metric) for arm, (a, b) in pairs_by_arm.items()}
    for c, p_adj in zip(out.values(), holm([c.p_value for c in out.values()]), strict=True):
        c.p_adjusted = p_adj
        decide(c)
    return out
