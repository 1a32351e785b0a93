"""Paired statistics for comparing an arm with the baseline.

Pairs are (case, repeat). For pass/fail outcomes:

- wins: the arm passed where the baseline failed; losses: the reverse; ties: the rest.
- exact McNemar test: under H0 the discordant pairs split 50/50, so with ``b`` wins
  and ``c`` losses, ``p = min(1, 2 * P[Binomial(b + c, 1/2) <= min(b, c)])``.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import comb


def mcnemar_exact(wins: int, losses: int) -> float:
    """Two-sided exact McNemar p-value; 1.0 when there are no discordant pairs."""
    n = wins + losses
    if n == 0:
        return 1.0
    k = min(wins, losses)
    tail = sum(comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


@dataclass(frozen=True)
class PairedOutcome:
    n_pairs: int
    wins: int
    ties: int
    losses: int
    diff: float  # arm pass rate minus baseline pass rate over the pairs
    p_value: float


def paired_pass_fail(pairs: list[tuple[bool, bool]]) -> PairedOutcome:
    """`pairs` holds (arm passed, baseline passed) per (case, repeat)."""
    wins = sum(1 for a, b in pairs if a and not b)
    losses = sum(1 for a, b in pairs if b and not a)
    n = len(pairs)
    diff = (wins - losses) / n if n else 0.0
    return PairedOutcome(n, wins, n - wins - losses, losses, diff, mcnemar_exact(wins, losses))
