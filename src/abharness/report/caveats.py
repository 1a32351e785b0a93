"""Caveats on a comparison: when what differs between two arms may be their errors
rather than their answers.

A failed call counts as a fail with score 0 (so an arm cannot look better by erroring
on hard cases), which also means an endpoint that failed every call makes the other
arm "better, +50 points". The verdict stands — errors are part of what an arm does —
but it says so, in its sentence and in the report JSON's ``caveats``:

- an arm (or the baseline) that failed more than `ERROR_RATE` of its calls on the
  compared cases, or every one of them;
- a better/worse verdict on pass rate or mean score that the cases where neither arm
  failed a call do not repeat: errors alone could explain it.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from .stats import Comparison, compare_arms, compare_paired

ERROR_RATE = 0.20  # above this share of failed calls, a comparison says so

_WHAT_ERRORS_DO = {
    "pass_rate": "failed calls count as fails",
    "mean_score": "failed calls count as score 0",
    "latency": "its latency is over the calls that succeeded",
    "cost": "failed calls cost little or nothing, which lowers its cost",
}


def error_rate_caveats(
    metric: str,
    sides: Sequence[tuple[str, pd.DataFrame]],
    error_types: dict[str, dict[str, int]],
) -> list[str]:
    """One caveat per side (arm id, its case rows) whose calls failed more than
    `ERROR_RATE` of the time."""
    out = []
    for who, rows in sides:
        calls = int(rows["calls"].sum())
        failed = calls - int(rows["ok"].sum())
        if calls == 0 or failed / calls <= ERROR_RATE:
            continue
        kinds = ", ".join(f"{n} {t}" for t, n in error_types.get(who, {}).items())
        counts = f"{failed} of {calls}" + (f"; in the whole run: {kinds}" if kinds else "")
        if failed == calls:
            out.append(
                f"`{who}` failed every call ({counts}): this comparison measures its errors, "
                "not its answers"
            )
        else:
            out.append(
                f"`{who}` failed {failed / calls:.0%} of its calls ({counts}); "
                f"{_WHAT_ERRORS_DO[metric]}"
            )
    return out


def explained_by_errors(
    c: Comparison,
    column: str,
    mine: pd.DataFrame,
    base: pd.DataFrame,
    clusters: Sequence[object] | None,
    bound: float,
    low: float,
) -> str | None:
    """A caveat when a better/worse verdict does not survive leaving out the cases
    where either arm failed a call: errors alone could explain the difference."""
    if c.verdict not in ("better", "worse"):
        return None
    clean = ((mine["ok"] == mine["calls"]) & (base["ok"] == base["calls"])).to_numpy()
    if clean.all():
        return None
    if not clean.any():
        return (
            "errors alone could explain the difference: every case has a failed call in one "
            "arm or the other"
        )
    kept = [x for x, keep in zip(clusters, clean, strict=True) if keep] if clusters else None
    again = compare_paired(
        mine[column][clean], base[column][clean], c.metric, clusters=kept, bound=bound, low=low
    )
    again = compare_arms({"x": again}, power=False)["x"]
    if again.verdict == c.verdict:
        return None
    assert again.diff is not None and again.ci_low is not None and again.ci_high is not None
    return (
        f"errors alone could explain the difference: over the {int(clean.sum())} cases where "
        f"neither arm failed a call it is {again.diff * 100:+.1f} points (95% CI "
        f"{again.ci_low * 100:+.1f} to {again.ci_high * 100:+.1f}), "
        f"{again.verdict.replace('_', ' ')}"
    )
