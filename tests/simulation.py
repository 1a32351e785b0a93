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

from dataclasses import dataclass

import numpy as np

from abharness.report.stats import Comparison, compare_arms, compare_paired


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


def verdict(arm_calls: np.ndarray, base_calls: np.ndarray, metric: str = "pass_rate") -> Comparison:
    c = compare_paired(arm_calls.mean(axis=1), base_calls.mean(axis=1), metric)
    return compare_arms({"b": c})["b"]


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
