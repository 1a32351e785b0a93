"""Compare two runs of one experiment and apply its gates (``abharness compare A B``,
and each experiment of ``abharness nightly`` against its previous night).

Run A is the reference, run B the candidate; each arm present in both is paired by
case (a case's repeats averaged, as in the report). A gate fails only when its paired
interval lies beyond its threshold, so noise between two clean runs does not fail it:

- ``score_drop: significant`` fails when B's pass rate is lower by the permutation
  test at `GATE_ALPHA` (Holm across arms) and the `GATE_LEVEL` interval lies below 0;
  a number (e.g. ``0.05``) fails when the interval's upper end lies below −0.05;
- ``latency_p50_increase_pct: 25`` fails when the lower end of the interval of the
  per-case ratio of ratios — (arm ÷ baseline arm in B) ÷ (arm ÷ baseline arm in A),
  median latency over repeats, geometric mean over cases — lies above 1.25. A night
  when the machine or the provider is slower for every arm cancels out; the baseline
  arm itself is the yardstick and gets no relative gate. ``cost_increase_pct`` likewise
  for the cost per call (against the arm's own cost when the baseline costs nothing).
- ``latency_p50_abs_increase_pct`` and ``cost_abs_increase_pct`` compare each arm with
  itself, drift included: the gates for single-arm specs, where nothing can cancel it.

A gate that cannot be evaluated says why, and is never a pass: an arm of B answered
from the response cache (its calls measure nothing new), a figure missing in either
run (no latency measured, no price), a latency gate on an arm that ran in batch mode in
either run (or whose baseline did: a batch call has no latency), a relative gate
without a second arm.
`nightly_default_gates` apply to nightly specs that set none. Expected false alarms:
README "Nightly runs".
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import yaml

from ..errors import InvalidInput
from ..spec.models import Gates
from ..store.queries import Results, RunNotFound
from .build import arm_rows, case_level
from .gate_power import GATE_ALPHA, GATE_LEVEL, Catch, observed_drop, observed_ratio
from .stats import Comparison, compare_arms, compare_paired, compare_ratio

NIGHTLY_DEFAULT_GATES = Gates(
    score_drop="significant", latency_p50_increase_pct=25, cost_increase_pct=10
)
NIGHTLY_DEFAULT_GATES_ONE_ARM = Gates(
    score_drop="significant", latency_p50_abs_increase_pct=25, cost_abs_increase_pct=10
)
RATIO_GATES = (  # gate, metric, relative to the baseline arm
    ("latency_p50_increase_pct", "latency", True),
    ("cost_increase_pct", "cost", True),
    ("latency_p50_abs_increase_pct", "latency", False),
    ("cost_abs_increase_pct", "cost", False),
)


def nightly_default_gates(arms: int) -> Gates:
    """The gates of a nightly spec that sets none: relative latency and cost gates when
    a second arm can cancel the night's drift, absolute ones for a single arm."""
    return NIGHTLY_DEFAULT_GATES if arms > 1 else NIGHTLY_DEFAULT_GATES_ONE_ARM


@dataclass
class GateResult:
    arm_id: str
    gate: str
    threshold: str
    value: str
    passed: bool | None  # None: not evaluated
    catches: Catch | None = None  # what the gate could catch here (80% power)
    cases: int = 0  # cases paired for it

    @property
    def detectable(self) -> str | None:
        return self.catches.text if self.catches else None

    @property
    def warning(self) -> str | None:
        return self.catches.warning(self.cases) if self.catches else None

    @property
    def status(self) -> str:
        return "not evaluated" if self.passed is None else ("pass" if self.passed else "FAIL")


@dataclass
class RunData:
    """What a comparison needs of one run, read once (the run may live in a staging
    file, and the main database may be busy later)."""

    run_id: str
    experiment: str
    spec_yaml: str
    spec_hash: str
    arms: list[str]  # spec order
    calls: pd.DataFrame
    batched: list[str] = field(default_factory=list)  # arms run in batch mode: no latency

    @classmethod
    def read(cls, db: Results, run_id: str) -> RunData:
        try:
            run = db.run(run_id)
        except RunNotFound as exc:
            raise InvalidInput(str(exc)) from exc
        return cls(
            run_id,
            run["experiment"],
            run["spec_yaml"] or "",
            run["spec_hash"] or "",
            [str(a) for a in db.arms(run_id)["arm_id"]],
            db.call_table(run_id),
            db.batched_arms(run_id),
        )

    @property
    def spec(self) -> dict[str, Any]:
        spec = yaml.safe_load(self.spec_yaml) or {}
        return spec if isinstance(spec, dict) else {}

    @property
    def gates(self) -> Gates:
        return Gates.model_validate(self.spec.get("gates") or {})

    @property
    def baseline(self) -> str | None:
        baseline = self.spec.get("baseline")
        return str(baseline) if baseline is not None else None


@dataclass
class RunComparison:
    reference: str
    candidate: str
    gates: list[GateResult]
    regressed: dict[str, list[str]] = field(default_factory=dict)  # arm → "case (1/1 → 0/1)"
    notes: list[str] = field(default_factory=list)  # spec changes, arms in one run only

    @property
    def failed(self) -> list[GateResult]:
        return [g for g in self.gates if g.passed is False]

    @property
    def not_evaluated(self) -> list[GateResult]:
        return [g for g in self.gates if g.passed is None]

    @property
    def warnings(self) -> list[str]:
        """One line per gate too small for its threshold (the arm that catches least)."""
        worst: dict[str, GateResult] = {}
        for g in self.gates:
            if g.warning is not None and (
                g.gate not in worst or _least_caught(g) > _least_caught(worst[g.gate])
            ):
                worst[g.gate] = g
        return [f"{g.arm_id}: {g.warning}" for g in worst.values()]

    def as_json(self) -> dict[str, Any]:
        return {
            "run_a": self.reference,
            "run_b": self.candidate,
            "regression": bool(self.failed),
            "gates": [
                {
                    "arm_id": g.arm_id,
                    "gate": g.gate,
                    "threshold": g.threshold,
                    "value": g.value,
                    "status": g.status,
                    "detectable": g.detectable,
                    "too_small": g.catches.too_small if g.catches else None,
                }
                for g in self.gates
            ],
            "regressed_cases": self.regressed,
            "notes": self.notes,
            "warnings": self.warnings,
        }


def _least_caught(g: GateResult) -> float:
    found = g.catches.detectable if g.catches else None
    return math.inf if found is None else found


def compare_runs(db: Results, run_a: str, run_b: str) -> RunComparison:
    return compare(RunData.read(db, run_a), RunData.read(db, run_b))


def compare(a: RunData, b: RunData, gates: Gates | None = None) -> RunComparison:
    """Apply `gates` (default: B's spec's) to candidate `b` against reference `a`."""
    if a.experiment != b.experiment:
        raise InvalidInput(
            f"{a.run_id} is experiment {a.experiment!r} but {b.run_id} is {b.experiment!r}"
        )
    cases_a, cases_b = set(a.calls["case_id"]), set(b.calls["case_id"])
    if cases_a != cases_b:
        raise InvalidInput(
            f"the runs cover different cases ({len(cases_a - cases_b)} only in {a.run_id}, "
            f"{len(cases_b - cases_a)} only in {b.run_id}): compare needs the same dataset"
        )
    gates = gates if gates is not None else b.gates
    out = RunComparison(a.run_id, b.run_id, [], notes=_spec_changes(a, b))
    arms = [arm for arm in b.arms if arm in a.arms]
    out.notes += [
        f"arm {arm!r} is only in {b.run_id}: not compared" for arm in b.arms if arm not in a.arms
    ]
    out.notes += [
        f"arm {arm!r} is only in {a.run_id}: not compared" for arm in a.arms if arm not in b.arms
    ]
    by_a, by_b = case_level(a.calls), case_level(b.calls)
    baseline = b.baseline if b.baseline in arms and b.baseline == a.baseline else None
    drops: dict[str, Comparison] = {}
    ratios: dict[tuple[str, bool], dict[str, Comparison]] = {
        (metric, relative): {} for _, metric, relative in RATIO_GATES
    }
    cached: dict[str, str] = {}
    for arm in arms:
        mine, base = _paired(by_b, by_a, arm)
        drops[arm] = compare_paired(mine["passed"], base["passed"], "pass_rate", level=GATE_LEVEL)
        for metric in ("latency", "cost"):
            ratios[(metric, False)][arm] = compare_ratio(
                mine[metric], base[metric], metric, level=GATE_LEVEL
            )
            if baseline is not None and arm != baseline:
                ratios[(metric, True)][arm] = _ratio_of_ratios(by_a, by_b, arm, baseline, metric)
        hits = b.calls[(b.calls["arm_id"] == arm) & b.calls["made"]]["cache_hit"].astype(bool)
        if hits.any():
            cached[arm] = (
                f"{int(hits.sum())} of {len(hits)} calls of {b.run_id} answered from the cache: "
                "they measure nothing new (run with --no-cache)"
            )
        out.regressed[arm] = _regressed(mine, base)
    compare_arms(drops, alpha=GATE_ALPHA, power=False)  # gate_power says what they catch
    context = _Context(a, b, baseline, len(arms))
    for arm in arms:
        out.gates += _arm_gates(arm, gates, drops[arm], ratios, cached.get(arm), context)
    return out


@dataclass
class _Context:
    a: RunData
    b: RunData
    baseline: str | None  # the baseline arm, when both runs have it and it is the same
    arms: int  # arms in both runs


def _paired(by_b: pd.DataFrame, by_a: pd.DataFrame, arm: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    mine, base = arm_rows(by_b, arm), arm_rows(by_a, arm)
    common = mine.index.intersection(base.index)
    return mine.loc[common], base.loc[common]


def _ratio_of_ratios(
    by_a: pd.DataFrame, by_b: pd.DataFrame, arm: str, baseline: str, metric: str
) -> Comparison:
    """Per case, (arm ÷ baseline arm) in B against the same in A: drift that slows
    every arm of a run alike cancels. Cases missing from any of the four are left out."""
    now = arm_rows(by_b, arm)[metric] / arm_rows(by_b, baseline)[metric]
    then = arm_rows(by_a, arm)[metric] / arm_rows(by_a, baseline)[metric]
    common = now.dropna().index.intersection(then.dropna().index)
    return compare_ratio(now.loc[common], then.loc[common], metric, level=GATE_LEVEL)


def _arm_gates(
    arm: str,
    gates: Gates,
    drop: Comparison,
    ratios: dict[tuple[str, bool], dict[str, Comparison]],
    cached: str | None,
    ctx: _Context,
) -> list[GateResult]:
    out: list[GateResult] = []
    level = f"{GATE_LEVEL * 100:.0f}% CI"
    if gates.score_drop is not None:
        threshold = (
            "significant"
            if gates.score_drop == "significant"
            else f"{gates.score_drop * 100:.1f} pts"
        )
        if cached:
            out.append(GateResult(arm, "score_drop", threshold, cached, None))
        elif not drop.compared:
            out.append(GateResult(arm, "score_drop", threshold, str(drop.reason), None))
        else:
            assert drop.diff is not None and drop.ci_low is not None and drop.ci_high is not None
            value = (
                f"{drop.diff * 100:+.1f} pts ({level} {drop.ci_low * 100:+.1f} to "
                f"{drop.ci_high * 100:+.1f}, p {drop.p_adjusted:.2g}, {drop.n_pairs} cases)"
            )
            if gates.score_drop == "significant":
                passed = drop.verdict != "worse"
            else:
                passed = not drop.ci_high < -float(gates.score_drop)
            catch = observed_drop(gates, drop, ctx.arms)
            out.append(GateResult(arm, "score_drop", threshold, value, passed, catch, drop.n_pairs))
    for gate, metric, relative in RATIO_GATES:
        pct = getattr(gates, gate)
        if pct is None:
            continue
        threshold = f"+{pct:g}%"
        if relative and (ctx.baseline is None or ctx.arms < 2):
            out.append(GateResult(arm, gate, threshold, _no_yardstick(ctx, gate), None))
            continue
        if relative and arm == ctx.baseline:
            continue  # the yardstick of the relative gates: only absolute ones apply to it
        if cached:
            out.append(GateResult(arm, gate, threshold, cached, None))
            continue
        batched = _batched(ctx, [arm, str(ctx.baseline)] if relative else [arm])
        if metric == "latency" and batched:
            out.append(GateResult(arm, gate, threshold, batched, None))
            continue
        comp, against = ratios[(metric, relative)][arm], ""
        if relative:
            against = f" against {ctx.baseline}"
            if not comp.compared and _costs_nothing(ctx, str(ctx.baseline), metric):
                comp = ratios[(metric, False)][arm]  # nothing to divide by: the arm's own cost
                against = f" (absolute: {ctx.baseline} costs 0 in both runs)"
        if not comp.compared:
            out.append(_unmeasured(arm, gate, threshold, comp, ctx.a, ctx.b))
            continue
        assert comp.diff is not None and comp.ci_low is not None and comp.ci_high is not None
        value = (
            f"×{comp.diff:.2f}{against} ({level} {comp.ci_low:.2f} to {comp.ci_high:.2f}, "
            f"{comp.n_pairs} cases)"
        )
        catch = observed_ratio(gate, pct, comp)
        passed = not comp.ci_low > 1 + pct / 100
        out.append(GateResult(arm, gate, threshold, value, passed, catch, comp.n_pairs))
    return out


def _batched(ctx: _Context, arms: list[str]) -> str | None:
    """Why latency cannot be compared for `arms`: one ran in batch mode in either run
    (batch calls have no per-call latency; SPEC §13). Never a pass, never a fail."""
    for run in (ctx.b, ctx.a):
        for arm in arms:
            if arm in run.batched:
                return (
                    f"latency not measured: {arm} ran in batch mode in {run.run_id} "
                    "(a batch call has no latency of its own)"
                )
    return None


def _no_yardstick(ctx: _Context, gate: str) -> str:
    absolute = gate.replace("_increase_pct", "_abs_increase_pct")
    if ctx.arms < 2:
        why = "one arm: no second arm to cancel a slower night with"
    else:
        why = f"the spec's baseline arm is not in both runs ({ctx.b.baseline!r})"
    return f"{why}; {absolute} is the absolute gate"


def _costs_nothing(ctx: _Context, arm: str, metric: str) -> bool:
    if metric != "cost":
        return False
    costs = [r.calls.loc[r.calls["arm_id"] == arm, "cost_usd"] for r in (ctx.a, ctx.b)]
    return all(c.notna().any() and c.fillna(0).sum() == 0 for c in costs)


def _unmeasured(
    arm: str, gate: str, threshold: str, comp: Comparison, a: RunData, b: RunData
) -> GateResult:
    """A ratio gate without a ratio: a cost gate on an arm that cost nothing in both
    runs passes; any other missing figure leaves the gate not evaluated."""
    if _costs_nothing(_Context(a, b, None, 0), arm, comp.metric):
        return GateResult(arm, gate, threshold, "0 USD in both runs", True)
    return GateResult(arm, gate, threshold, f"not measured in both runs ({comp.reason})", None)


def _regressed(mine: pd.DataFrame, base: pd.DataFrame) -> list[str]:
    """Cases whose pass rate fell, largest fall first: 'c07 (1/1 → 0/1)'."""
    fell = (base["passed"] - mine["passed"]).where(lambda d: d > 1e-12).dropna()
    order = sorted(fell.index, key=lambda case: (-fell[case], str(case)))

    def frac(rows: pd.DataFrame, case: Any) -> str:
        calls = int(rows.at[case, "calls"])
        return f"{round(rows.at[case, 'passed'] * calls)}/{calls}"

    return [f"{case} ({frac(base, case)} → {frac(mine, case)})" for case in order]


def _spec_changes(a: RunData, b: RunData, limit: int = 30) -> list[str]:
    if a.spec_hash == b.spec_hash:
        return []
    diff = list(
        difflib.unified_diff(
            a.spec_yaml.splitlines(), b.spec_yaml.splitlines(), a.run_id, b.run_id, lineterm="", n=0
        )
    )
    lines = [d for d in diff if d[:1] in "+-" and not d.startswith(("---", "+++"))]
    more = f" (and {len(lines) - limit} more lines)" if len(lines) > limit else ""
    return [f"the runs' specs differ{more}:"] + lines[:limit]
