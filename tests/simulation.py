"""Simulated experiments with a known truth, for validating the verdict rules.

A dataset is `n` cases drawn from a population. Case i has a difficulty q_i ~ Beta with
mean `p` (concentration 1: most cases easy or hard). Arm A passes case i with
probability q_i; arm B with q_i for 70% of the cases and with an independent draw of
the same Beta for the rest — equally good on average, different case by case — then
shifted by `effect`, which keeps probabilities in [0, 1] and moves the population mean
by exactly `effect`. At temperature 0 a case's repeats are copies of one draw; above 0
each repeat is drawn afresh. Continuous scores are Beta(10·q, 10·(1−q)), whose mean is q.

`verdict(...)` applies the report's rule to one experiment: case means, then
`compare_paired` and Holm's decision, exactly as `build_report` does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from abharness.report.stats import Comparison, compare_arms, compare_paired, log_t_interval


@dataclass(frozen=True)
class Cell:
    n: int
    p: float
    repeats: int = 1
    temperature0: bool = True
    kind: str = "pass"  # or "score"
    effect: float = 0.0
    concentration: float = 1.0  # of the difficulty Beta: low = cases easy or hard
    own_share: float = 0.3  # cases on which B's difficulty is its own draw

    def __str__(self) -> str:
        t = "t=0" if self.temperature0 else "t>0"
        return f"n={self.n} p={self.p} R={self.repeats} {t} {self.kind} effect={self.effect:+.2f}"


def _shift(q: np.ndarray, p: float, effect: float) -> np.ndarray:
    if effect >= 0:
        return q + effect * (1 - q) / (1 - p)
    return q * (1 + effect / p)


def draw(rng: np.random.Generator, cell: Cell) -> tuple[np.ndarray, np.ndarray]:
    """Per-call values of arm B and arm A, shape (n, repeats)."""
    a, b = cell.p * cell.concentration, (1 - cell.p) * cell.concentration
    q_a = rng.beta(a, b, cell.n)
    own = rng.random(cell.n) < cell.own_share
    q_b = np.where(own, rng.beta(a, b, cell.n), q_a)
    q_b = _shift(q_b, cell.p, cell.effect)
    draws = 1 if cell.temperature0 else cell.repeats

    def calls(q: np.ndarray) -> np.ndarray:
        if cell.kind == "pass":
            x = (rng.random((cell.n, draws)) < q[:, None]).astype(float)
        else:
            qq = np.clip(q, 1e-3, 1 - 1e-3)[:, None]
            x = rng.beta(10 * qq, 10 * (1 - qq), (cell.n, draws))
        return np.repeat(x, cell.repeats, axis=1) if cell.temperature0 else x

    return calls(q_b), calls(q_a)


def verdict(
    arm_calls: np.ndarray, base_calls: np.ndarray, metric: str = "pass_rate", power: bool = False
) -> Comparison:
    """The verdict; what the cases could detect only when `power` (it takes longer)."""
    c = compare_paired(arm_calls.mean(axis=1), base_calls.mean(axis=1), metric)
    return compare_arms({"b": c}, power=power)["b"]


CELLS = [
    Cell(n, p, r, t0, kind)
    for kind in ("pass", "score")
    for n in (20, 50, 200)
    for p in (0.05, 0.5, 0.95)
    for r, t0 in ((1, True), (5, True), (5, False))
]


def toward_middle(cell: Cell, size: float) -> Cell:
    """The cell with an effect of `size` pointing away from the nearer bound."""
    return Cell(
        cell.n, cell.p, cell.repeats, cell.temperature0, cell.kind, size if cell.p <= 0.5 else -size
    )


# -- continuous scores: families whose spread is not the scale's -------------------------

SCORE_FAMILIES = ("low-spread", "skewed", "bimodal", "tied")


@dataclass(frozen=True)
class ScoreCell:
    """Case-level continuous scores of two arms, one call per case. `effect` moves arm
    B's population mean by exactly that much (a uniform gain for ``low-spread``; toward
    the scale's far end, proportionally, for the others, so scores stay in [0, 1]).

    - ``low-spread``: a similarity scorer on answers that are all fairly good: a case's
      quality 0.6–0.9 (SD 0.045), each arm's own noise within ±0.04 (SD 0.015).
    - ``skewed``: most cases near 1, a long tail toward 0 (1 − Beta(0.6, 6)), each arm
      losing up to 5% of it.
    - ``bimodal``: a judge that says ~0.1 or ~0.9; on a quarter of the cases B's mode is
      its own draw.
    - ``tied``: 70% of cases get the same output from both arms (the same score, a
      difference of exactly 0); on the rest B's score is its own Beta(2, 2) draw.
    - ``sparse`` (not in `SCORE_FAMILIES`): low-spread scores whose whole effect sits on
      a tenth of the cases; a small sample may hold none of them, and then nothing in
      it says how far apart the arms are — the limit of a spread-scaled interval.
    """

    family: str
    n: int
    effect: float = 0.0

    def __str__(self) -> str:
        return f"{self.family} n={self.n} effect={self.effect:+.2f}"


TIED_SHARE = 0.7
SPARSE_SHARE = 0.1  # "sparse": low-spread scores, the whole effect on a tenth of the cases


def _toward_far_end(x: np.ndarray, mean: float, effect: float) -> np.ndarray:
    if effect >= 0:
        return x + effect * (1 - x) / (1 - mean)
    return x * (1 + effect / mean)


def draw_scores(rng: np.random.Generator, cell: ScoreCell) -> tuple[np.ndarray, np.ndarray]:
    """Case-level scores of arm B and arm A, shape (n, 1) like `draw`'s calls."""
    n, effect = cell.n, cell.effect
    if cell.family == "low-spread":
        q = 0.6 + 0.3 * rng.beta(5, 5, n)

        def noise() -> np.ndarray:
            return 0.08 * (rng.beta(3, 3, n) - 0.5)

        a, b = q + noise(), q + noise() + effect
    elif cell.family == "skewed":
        q = 1 - rng.beta(0.6, 6, n)
        a, b = q * (1 - 0.05 * rng.random(n)), q * (1 - 0.05 * rng.random(n))
        b = _toward_far_end(b, (1 - 0.6 / 6.6) * 0.975, effect)
    elif cell.family == "bimodal":
        mode_a = rng.random(n) < 0.5
        mode_b = np.where(rng.random(n) < 0.25, rng.random(n) < 0.5, mode_a)
        a = np.where(mode_a, 0.85, 0.05) + 0.1 * rng.random(n)
        b = np.where(mode_b, 0.85, 0.05) + 0.1 * rng.random(n)
        b = _toward_far_end(b, 0.5, effect)
    elif cell.family == "sparse":  # not a validated shape: the rule's known limit
        q = 0.6 + 0.3 * rng.beta(5, 5, n)
        a = q + 0.08 * (rng.beta(3, 3, n) - 0.5)
        b = q + 0.08 * (rng.beta(3, 3, n) - 0.5)
        hit = rng.random(n) < SPARSE_SHARE
        b = np.where(hit, _toward_far_end(b, 0.75, effect / SPARSE_SHARE), b)
    elif cell.family == "tied":
        a = rng.beta(2, 2, n)
        own = rng.random(n) >= TIED_SHARE
        b = np.where(own, _toward_far_end(rng.beta(2, 2, n), 0.5, effect / (1 - TIED_SHARE)), a)
    else:
        raise ValueError(f"unknown score family {cell.family!r}")
    return b[:, None], a[:, None]


# -- nights: latency with drift shared by every arm --------------------------------------


@dataclass(frozen=True)
class Night:
    """One nightly run's median latency per arm and case, shape (arms, n); arm 0 is the
    baseline. Cases differ in length (log-normal, SD 0.5), arms in speed (arm i is
    1 + 0.2·i times slower); each call adds log-normal noise (SD `noise`), and a case's
    latency is the median of its `repeats` calls. Drift hits every arm alike: a factor
    for the whole night, exp(N(0, `drift`)) (or exactly `factor`), and one per case
    (load that comes and goes during the run, the arms interleaved case by case)."""

    n: int = 100
    arms: int = 3
    drift: float = 0.10
    factor: float | None = None  # a fixed night factor instead of a drawn one
    case_drift: float = 0.05
    noise: float = 0.2
    repeats: int = 1
    slowdown: float = 1.0  # arm 1's own slowdown this night


def draw_night(rng: np.random.Generator, night: Night, length: np.ndarray) -> np.ndarray:
    shared = night.factor if night.factor is not None else float(rng.lognormal(0, night.drift))
    per_case = shared * rng.lognormal(0, night.case_drift, night.n)
    speed = 1 + 0.2 * np.arange(night.arms)
    speed[1:2] *= night.slowdown  # arm 1, when there is one
    calls = rng.lognormal(0, night.noise, (night.arms, night.n, night.repeats))
    return np.median(calls, axis=2) * (speed[:, None] * length * per_case)[:, :]


def nights_pair(
    rng: np.random.Generator, before: Night, after: Night
) -> tuple[np.ndarray, np.ndarray]:
    """The reference night and the candidate, on the same cases."""
    length = 1000 * rng.lognormal(0, 0.5, before.n)
    return draw_night(rng, before, length), draw_night(rng, after, length)


def latency_gate_fails(
    before: np.ndarray, after: np.ndarray, arm: int, pct: float, relative: bool
) -> bool:
    """The latency gate of `report.compare` on two simulated nights: the lower end of
    the 99% interval of the per-case ratio (of ratios, when `relative`) above 1 + pct."""
    now, then = after[arm], before[arm]
    if relative:
        now, then = now / after[0], then / before[0]
    low, _ = log_t_interval(np.log(now) - np.log(then), 0.99)
    return low > math.log(1 + pct / 100)
