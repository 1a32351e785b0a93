"""What each gate can catch: the smallest pass-rate drop and the smallest slowdown (or
cost increase) a gate fails on with 80% power, as `compare` applies it — from the
runs' own spread after a comparison (`observed`), or, before anything has run, from
the spec's size and stated assumptions (`a_priori`, for ``validate``).

A gate is **too small** when it would miss most regressions twice its own threshold:
a drop of 10 points for ``score_drop: 0.05`` (and for ``significant``, whose only
threshold is "any": twice the 5-point margin the reports treat as real), a slowdown
of +50% for ``latency_p50_increase_pct: 25``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from scipy import special

from ..spec.models import Gates
from .power import (
    POWER,
    binary_cases_needed,
    binary_detectable,
    cases_needed,
    detectable_shift,
    min_units_to_reject,
)
from .stats import EQUIVALENCE_MARGIN, Comparison

GATE_ALPHA = 0.01  # two-sided: a drop is called at 0.5%
GATE_LEVEL = 0.99
TOO_SMALL = 2.0  # a gate that misses a regression this many times its threshold is too small
# What `validate` assumes before any run: the share of cases whose outcome changes
# between two clean nights (temperature 0, above 0), and how much a call's latency
# varies around its case's typical latency (log SD).
CHANCE_FLIPS = {True: 0.05, False: 0.20}
CALL_SPREAD = 0.3


@dataclass
class Catch:
    """What one gate catches with 80% power: a drop in points (> 0) or a ratio (> 1);
    None when nothing it could see would be caught that reliably."""

    gate: str
    threshold: str
    detectable: float | None
    kind: str  # "drop" or "ratio"
    too_small: bool
    why: str = ""  # when detectable is None, or the assumption behind an a-priori figure
    cases_for_twice: int | None = None  # cases that would catch twice the threshold

    @property
    def text(self) -> str:
        if self.detectable is None:
            return f"nothing reliably ({self.why})" if self.why else "nothing reliably"
        if self.kind == "drop":
            return f"a drop of {self.detectable * 100:.0f} pts or more"
        what = "a slowdown" if self.gate.startswith("latency") else "a cost rise"
        return f"{what} to ×{self.detectable:.2f} or more"

    def warning(self, cases: int) -> str | None:
        if not self.too_small:
            return None
        twice = _twice(self.gate, self.threshold)
        more = (
            f"; about {self.cases_for_twice:,} cases would"
            if self.cases_for_twice and self.cases_for_twice > cases
            else ""
        )
        return (
            f"{self.gate} {self.threshold} is too small for its threshold: with {cases} cases it "
            f"catches {self.text} (80% power), so it misses most regressions of {twice}{more}"
        )


def _twice(gate: str, threshold: str) -> str:
    if gate == "score_drop":
        points = (
            EQUIVALENCE_MARGIN * 100 if threshold == "significant" else float(threshold.split()[0])
        )
        return f"{TOO_SMALL * points:.0f} points"
    return f"+{TOO_SMALL * float(threshold.strip('+%')):.0f}%"


def _score_threshold(gates: Gates) -> tuple[str, float]:
    if gates.score_drop == "significant":
        return "significant", 0.0
    return f"{float(gates.score_drop or 0) * 100:.1f} pts", float(gates.score_drop or 0)


def _drop_target(gates: Gates) -> float:
    """The drop a gate ought to catch: twice its threshold (twice the margin for
    `significant`)."""
    _, threshold = _score_threshold(gates)
    return TOO_SMALL * (threshold if gates.score_drop != "significant" else EQUIVALENCE_MARGIN)


def observed_drop(gates: Gates, drop: Comparison, arms: int) -> Catch:
    """The score_drop gate, from the two runs' own case differences."""
    label, threshold = _score_threshold(gates)
    least = min_units_to_reject(GATE_ALPHA, arms)
    if drop.n_units < least:
        why = f"the test needs at least {least} {'cases' if drop.n_units == drop.n_pairs else 'clusters'} that differ"
        return Catch("score_drop", label, None, "drop", True, why)
    room = drop.room if drop.room is not None else 1.0
    se = (drop.sd or 0.0) / math.sqrt(drop.n_pairs)
    if gates.score_drop == "significant" and drop.discordance is not None:
        found = binary_detectable(drop.n_pairs, drop.discordance, GATE_ALPHA / arms, cap=room)
    else:
        alpha = GATE_ALPHA / arms if gates.score_drop == "significant" else 1 - GATE_LEVEL
        shift = detectable_shift(se, drop.n_units - 1, alpha, threshold=threshold)
        found = shift if shift <= room else None
    target = _drop_target(gates)
    need = cases_needed(drop.sd or 0.0, target - threshold, GATE_ALPHA / arms)
    return Catch(
        "score_drop", label, found, "drop", found is None or found > target + 1e-9, "", need
    )


def observed_ratio(gate: str, pct: float, comp: Comparison) -> Catch:
    """A latency or cost gate, from the runs' per-case (ratio of) ratios."""
    threshold = f"+{pct:g}%"
    if not comp.compared or comp.sd is None:
        return Catch(gate, threshold, None, "ratio", False, "not measured")
    se = comp.sd / math.sqrt(comp.n_units)
    shift = detectable_shift(se, comp.n_units - 1, 1 - GATE_LEVEL, threshold=math.log1p(pct / 100))
    found = math.exp(shift) if math.isfinite(shift) else None
    twice = math.log1p(TOO_SMALL * pct / 100) - math.log1p(pct / 100)
    need = cases_needed(comp.sd, twice, 1 - GATE_LEVEL)
    too_small = found is None or found > 1 + TOO_SMALL * pct / 100 + 1e-9
    return Catch(gate, threshold, found, "ratio", too_small, "" if found else "too few cases", need)


def a_priori(gates: Gates, cases: int, arms: int, repeats: int, temperature0: bool) -> list[Catch]:
    """Before any run: what each of `gates` would catch on `cases` cases, under the
    stated assumptions (`CHANCE_FLIPS`, `CALL_SPREAD`)."""
    out: list[Catch] = []
    if gates.score_drop is not None:
        label, threshold = _score_threshold(gates)
        flips = CHANCE_FLIPS[temperature0]
        level = GATE_ALPHA / max(arms, 1)
        why = (
            f"if {flips * 100:.0f}% of cases change outcome between two clean nights"
            f"{' at temperature 0' if temperature0 else ''}"
        )
        target = _drop_target(gates)
        if gates.score_drop == "significant":
            found = binary_detectable(cases, flips, level, added=True)
            need = binary_cases_needed(target, flips, level, added=True)
        else:
            found = _threshold_drop(cases, flips, threshold)
            need = _least_cases(lambda n: (_threshold_drop(n, flips, threshold) or 1) <= target)
        least = min_units_to_reject(GATE_ALPHA, arms)
        if cases < least:
            found, why = None, f"the test needs at least {least} cases that differ"
        too_small = found is None or found > target + 1e-9
        out.append(Catch("score_drop", label, found, "drop", too_small, why, need))
    case_sd = CALL_SPREAD * (
        math.sqrt(math.pi / (2 * repeats)) if repeats >= 3 else 1 / math.sqrt(repeats)
    )
    for gate, pct, spread in (
        ("latency_p50_increase_pct", gates.latency_p50_increase_pct, 2 * case_sd),
        (
            "latency_p50_abs_increase_pct",
            gates.latency_p50_abs_increase_pct,
            math.sqrt(2) * case_sd,
        ),
    ):
        if pct is None:
            continue
        shift = detectable_shift(
            spread / math.sqrt(cases), cases - 1, 1 - GATE_LEVEL, threshold=math.log1p(pct / 100)
        )
        found = math.exp(shift) if math.isfinite(shift) else None
        twice = math.log1p(TOO_SMALL * pct / 100) - math.log1p(pct / 100)
        why = f"if a call's latency varies by about {CALL_SPREAD * 100:.0f}% within its case"
        if gate.endswith("abs_increase_pct"):
            why += ", before any drift between nights"
        too_small = found is None or found > 1 + TOO_SMALL * pct / 100 + 1e-9
        need = cases_needed(spread, twice, 1 - GATE_LEVEL)
        out.append(Catch(gate, f"+{pct:g}%", found, "ratio", too_small, why, need))
    return out


def _threshold_drop(cases: int, flips: float, threshold: float) -> float | None:
    """The drop a numeric score_drop gate catches with 80% power: its 99% interval's
    upper end below −threshold. The interval is the report's (pseudo-cases at ±1, so
    its centre shrinks by n/(n+2) and its spread widens); a case's difference has
    variance flips + drop − drop² (chance flips, plus the drop's own losses)."""
    if cases < 2:
        return None
    n = cases
    quantile = float(special.stdtrit(n - 1, 1 - (1 - GATE_LEVEL) / 2))
    z = float(special.ndtri(POWER))

    def caught(drop: float) -> bool:
        var = max(flips + drop - drop * drop, 1e-12)
        centre = -drop * n / (n + 2)
        spread = n * var + n * (drop - drop * n / (n + 2)) ** 2 + 2 + 2 * centre**2
        se = math.sqrt(spread / ((n + 1) * (n + 2)))
        jitter = math.sqrt(var / n) * n / (n + 2)  # of the centre, run to run
        return centre + quantile * se + z * jitter <= -threshold

    low, high = threshold, 1.0
    if not caught(high):
        return None
    for _ in range(30):
        mid = (low + high) / 2
        low, high = (low, mid) if caught(mid) else (mid, high)
    return high


def _least_cases(enough: Callable[[int], bool], limit: int = 1_000_000) -> int | None:
    """The least n ≥ 2 for which `enough(n)` (taken as monotone), or None up to `limit`."""
    high = 2
    while not enough(high):
        high *= 2
        if high > limit:
            return None
    low = high // 2
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (low, mid) if enough(mid) else (mid, high)
    return high
