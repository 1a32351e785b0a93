"""The report's figures as typed objects: what `build` computes, and the one thing every
renderer reads — Markdown (`markdown`), the HTML report (`html`), the JSON
(`Report.to_json`, SPEC §9's field names) and `abharness view`. A figure is computed
once, here; its words are spelled once, in `words`.

The JSON keeps every field SPEC §9 names and the fields earlier versions printed; new
fields are only ever added.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np


def _plain(value: Any) -> Any:
    """A JSON-safe value: NaN as None, numpy scalars as Python's, objects as dicts."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, Figures):
        return value.to_json()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, np.ndarray):
        return _plain(value.item())
    return value


class Figures:
    """A dataclass whose fields are its JSON, less those marked ``json=False``."""

    def to_json(self) -> dict[str, Any]:
        return {
            f.name: _plain(getattr(self, f.name))
            for f in fields(self)  # type: ignore[arg-type]
            if f.metadata.get("json", True)
        }


def chart_only() -> Any:
    """A field for charts only: left out of the JSON."""
    return field(default=None, repr=False, metadata={"json": False})


@dataclass
class ComparisonFigures(Figures):
    """One arm against another (the baseline, or a panel's member) on one metric."""

    arm_id: str
    baseline: str
    metric: str  # pass_rate | mean_score | latency | cost
    scale: str  # difference | ratio
    n_pairs: int
    n_units: int
    diff: float | None
    ci_low: float | None
    ci_high: float | None
    ci90_low: float | None
    ci90_high: float | None
    p_value: float | None
    p_adjusted: float | None
    wins: int
    ties: int
    losses: int
    verdict: str  # better | worse | no_difference | inconclusive
    compared: bool
    label: str | None
    negligible: bool
    reason: str | None
    mde: float | None
    n_needed: int | None
    excluded: dict[str, int]
    n_needed_range: list[int] | None
    n_needed_goal: str | None
    min_units: int | None
    caveats: list[str]


@dataclass
class Flakiness(Figures):
    """How often an arm's repeats of one case disagree. For a case with n calls made of
    which c passed, the unbiased estimators from c of n: pass@k = 1 − C(n−c, k)/C(n, k)
    (at least one of k tries passes; Chen et al. 2021) and pass^k = C(c, k)/C(n, k)
    (all k pass; Yao et al. 2024, τ-bench), each averaged over the cases with n ≥ k."""

    repeats: int  # the most calls made for one case
    cases: int  # cases with at least two calls made
    flaky_cases: int  # of those, cases whose repeats disagree (some passed, some not)
    flaky_share: float | None
    pass_at_k: dict[int, float]
    pass_pow_k: dict[int, float]


@dataclass
class PartFigures(Figures):
    """A composite arm's part: a panel's member or synthesizer, or one of a route's
    routes (listed in the order tried). Parts are never arms of the report."""

    arm_id: str
    role: str  # member | synthesizer | route
    parent_arm_id: str
    provider: str
    model: str


@dataclass
class RouteFigures(Figures):
    """One route of a route arm: how often it served the arm's call, and its errors."""

    route: str  # provider:model
    served: int
    errors: int
    errors_by_type: dict[str, int]


@dataclass
class MemberFigures(Figures):
    """A panel's member beside the panel, on the same cases and scorers."""

    arm_id: str  # the member's part id
    provider: str
    model: str
    n: int
    pass_rate: float | None
    mean_score: float | None
    best: bool  # the member with the highest pass rate (then mean score)
    comparisons: list[ComparisonFigures]  # the panel against this member


@dataclass
class ArmFigures(Figures):
    """One arm's figures: calls, errors, rates with 95% intervals, latency, tokens, cost."""

    arm_id: str
    provider: str
    model: str
    tier: int | None
    prompt: str
    prompt_hash: str | None
    n: int
    n_cases: int
    ok: int
    errors: int
    errors_by_type: dict[str, int]
    error_rate: float | None
    not_made: int
    not_made_by_type: dict[str, int]
    scorer_errors: int
    cache_hits: int
    pass_rate: float | None
    pass_rate_ci: list[float | None]
    mean_score: float | None
    mean_score_ci: list[float | None]
    timed_calls: int
    latency_p50_ms: float | None
    latency_p50_ci: list[float | None]
    latency_p90_ms: float | None
    latency_p90_ci: list[float | None]
    latency_p99_ms: float | None
    latency_p99_ci: list[float | None]
    ttft_p50_ms: float | None
    input_tokens: int | None
    output_tokens: int | None
    cost_usd: float | None
    cost_per_1k_cases_usd: float | None
    est_error_mean_tokens: float | None
    judge_cost_usd: float | None = None
    kind: str = "model"  # model | panel | route
    usage_missing: int = 0  # answered calls whose server reported no token counts
    usage_estimated: int = 0  # answered calls whose counts are a proxy's estimate
    batch: bool = False  # ran in batch mode (SPEC §13): no latency, the batch price
    flakiness: Flakiness | None = None
    parts: list[PartFigures] = field(default_factory=list)
    routes: list[RouteFigures] = field(default_factory=list)
    fallback_rate: float | None = None  # route arms: answered calls not served by route 1
    members: list[MemberFigures] = field(default_factory=list)  # panel arms
    case_outcomes: list[list[str]] | None = None  # against the baseline: [case, win|tie|loss]
    latency_ms: np.ndarray | None = chart_only()

    def to_json(self) -> dict[str, Any]:
        out = super().to_json()
        if self.case_outcomes is None:
            del out["case_outcomes"]  # the baseline's: as before, absent
        return out


@dataclass
class Example(Figures):
    """A (case, repeat) where an arm's pass differs from the baseline's."""

    case_id: str
    vars: dict[str, Any]
    arm_passed: bool
    arm_response: str | None
    baseline_passed: bool
    baseline_response: str | None


@dataclass
class NotRun(Figures):
    arm_id: str
    reason: str


@dataclass
class Completeness(Figures):
    """Whether every planned call has its outcome; if not, how many are missing, why,
    and how to finish the run (issue 19)."""

    status: str
    complete: bool
    never_made: int  # calls never sent (cost cap, an endpoint stopped)
    unfinished: int  # calls cut off when their endpoint or model went down
    by_type: dict[str, int]  # the missing calls by error type
    resume: str | None  # the command that finishes the run


@dataclass
class OnlineArmFigures(Figures):
    """One arm of an online run: its traffic, as the online report counts it."""

    arm_id: str
    assignment: str  # assigned | shadow
    requests: int
    subjects: int  # distinct subject hashes (a request without one counts as its own)
    failed: int  # requests whose own call failed
    answered_by_fallback: int  # of those, answered by a fallback arm
    feedback: int  # requests with a feedback score
    feedback_mean: float | None


@dataclass
class Report(Figures):
    """A run's report: SPEC §9's JSON, and what every renderer formats."""

    run_id: str
    experiment: str
    description: str | None
    status: str
    started_at: str
    finished_at: str | None
    wall_time_s: float | None
    spec_hash: str | None
    harness_version: str | None
    n_cases: int
    cluster: str | None
    n_clusters: int | None
    baseline: str | None
    alpha: float
    equivalence_margin: float
    ratio_margin: float
    arms: list[ArmFigures]
    comparisons: list[ComparisonFigures]
    not_run: list[NotRun]
    examples: dict[str, list[Example]]
    completeness: Completeness | None = None
    kind: str = "run"  # runs.kind: run | nightly | online | mcp
    # online runs (SPEC §16): each arm against the control, unpaired, by subject,
    # always-valid; `online_note` says why there are none
    online: list[ComparisonFigures] = field(default_factory=list)
    online_note: str | None = None
    online_arms: list[OnlineArmFigures] = field(default_factory=list)

    def arm(self, arm_id: str) -> ArmFigures:
        return next(a for a in self.arms if a.arm_id == arm_id)

    def verdicts(self) -> list[ComparisonFigures]:
        """The comparisons that lead the report: pass rate and latency."""
        return [c for c in self.comparisons if c.metric in ("pass_rate", "latency")]
