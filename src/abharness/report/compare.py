"""Compare two runs of one experiment and apply its gates (``abharness compare A B``).

Run A is the reference (say, last night's), run B the candidate. Each arm present in
both is paired by (case, repeat) across the runs. Gates come from B's spec:

- ``score_drop: significant`` fails when B's pass rate is worse than A's by the paired
  test and interval (Holm across arms); a number (e.g. 0.05) fails when the pass rate
  dropped by more than that fraction;
- ``latency_p50_increase_pct`` fails when B's median latency (cache hits excluded) is
  more than that percentage above A's;
- ``cost_increase_pct`` likewise for the arm's total cost.
A gate whose figure is missing in either run (no latency measured, no price) is
reported as not evaluated and does not fail.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

from ..errors import InvalidInput
from ..spec.models import Gates
from ..store.queries import Results, RunNotFound
from .build import case_level
from .stats import compare_arms, compare_paired


@dataclass
class GateResult:
    arm_id: str
    gate: str
    threshold: str
    value: str
    passed: bool | None  # None: not evaluated

    @property
    def status(self) -> str:
        return "not evaluated" if self.passed is None else ("pass" if self.passed else "FAIL")


def _run(db: Results, run_id: str) -> dict[str, Any]:
    try:
        return db.run(run_id)
    except RunNotFound as exc:
        raise InvalidInput(str(exc)) from exc


def compare_runs(db: Results, run_a: str, run_b: str) -> list[GateResult]:
    a, b = _run(db, run_a), _run(db, run_b)
    if a["experiment"] != b["experiment"]:
        raise InvalidInput(
            f"{run_a} is experiment {a['experiment']!r} but {run_b} is {b['experiment']!r}"
        )
    gates = Gates.model_validate((yaml.safe_load(b["spec_yaml"] or "") or {}).get("gates") or {})
    calls_a, calls_b = db.call_table(run_a), db.call_table(run_b)
    cases_a, cases_b = set(calls_a["case_id"]), set(calls_b["case_id"])
    if cases_a != cases_b:
        raise InvalidInput(
            f"the runs cover different cases ({len(cases_a - cases_b)} only in {run_a}, "
            f"{len(cases_b - cases_a)} only in {run_b}): compare needs the same dataset"
        )
    arms = [arm for arm in dict.fromkeys(calls_b["arm_id"]) if arm in set(calls_a["arm_id"])]
    by_a, by_b = case_level(calls_a), case_level(calls_b)
    pairs = {}
    for arm in arms:
        mine, base = by_b.loc[arm], by_a.loc[arm]
        common = mine.index.intersection(base.index)
        pairs[arm] = compare_paired(
            mine.loc[common, "passed"], base.loc[common, "passed"], "pass_rate"
        )
    tests = compare_arms(pairs)
    results = []
    for arm in arms:
        t = tests[arm]
        if gates.score_drop is not None and not t.compared:
            results.append(
                GateResult(arm, "score_drop", str(gates.score_drop), str(t.reason), None)
            )
        elif gates.score_drop == "significant":
            assert t.diff is not None and t.ci_low is not None and t.ci_high is not None
            results.append(
                GateResult(
                    arm,
                    "score_drop",
                    "significant",
                    f"{t.diff * 100:+.1f} pts "
                    f"(CI {t.ci_low * 100:+.1f} to {t.ci_high * 100:+.1f}, p {t.p_adjusted:.2g})",
                    t.verdict != "worse",
                )
            )
        elif gates.score_drop is not None:
            assert t.diff is not None
            results.append(
                GateResult(
                    arm,
                    "score_drop",
                    f"{gates.score_drop * 100:.1f} pts",
                    f"{t.diff * 100:+.1f} pts",
                    t.diff >= -gates.score_drop,
                )
            )
        a_arm, b_arm = calls_a[calls_a["arm_id"] == arm], calls_b[calls_b["arm_id"] == arm]
        if gates.latency_p50_increase_pct is not None:
            results.append(
                _increase(
                    arm,
                    "latency_p50_increase_pct",
                    gates.latency_p50_increase_pct,
                    _p50(a_arm),
                    _p50(b_arm),
                    "ms",
                )
            )
        if gates.cost_increase_pct is not None:
            results.append(
                _increase(
                    arm,
                    "cost_increase_pct",
                    gates.cost_increase_pct,
                    _sum(a_arm["cost_usd"]),
                    _sum(b_arm["cost_usd"]),
                    "USD",
                )
            )
    return results


def _p50(calls: Any) -> float | None:
    timed = calls[(calls["status"] == "ok") & ~calls["cache_hit"].astype(bool)][
        "latency_ms"
    ].dropna()
    return float(timed.median()) if len(timed) else None


def _sum(column: Any) -> float | None:
    total = column.sum(min_count=1)
    return None if total != total else float(total)  # NaN: nothing priced


def _increase(
    arm: str, gate: str, limit: float, before: float | None, after: float | None, unit: str
) -> GateResult:
    if before is None or after is None:
        return GateResult(arm, gate, f"{limit:g}%", "not measured in both runs", None)
    if before == 0:
        value, passed = f"{before:g} → {after:g} {unit}", after == 0
    else:
        change = (after / before - 1) * 100
        value, passed = f"{change:+.1f}% ({before:.4g} → {after:.4g} {unit})", change <= limit
    return GateResult(arm, gate, f"{limit:g}%", value, passed)
