"""The figures of one run: `build_report` computes everything from the database into
the typed `figures.Report`, which the JSON (SPEC §9), `markdown`, `html` and `abharness
view` only render, so they always agree.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from ..store.health import environment_failure
from ..store.queries import Results
from .caveats import error_rate_caveats, explained_by_errors
from .figures import (
    ArmFigures,
    ComparisonFigures,
    Completeness,
    Example,
    MemberFigures,
    NotRun,
    OnlineArmFigures,
    PartFigures,
    Report,
    RouteFigures,
)
from .flakiness import flakiness
from .online import online_arms, online_comparisons
from .stats import (
    ALPHA,
    EQUIVALENCE_MARGIN,
    RATIO_MARGIN,
    RATIO_METRICS,
    Comparison,
    compare_arms,
    compare_paired,
    compare_ratio,
    mean_ci,
    not_compared,
    quantile_ci,
)


def _clean(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if hasattr(value, "item"):  # numpy scalars
        return _clean(value.item())
    return value


METRICS = ("pass_rate", "mean_score", *RATIO_METRICS)


def case_level(calls: pd.DataFrame) -> pd.DataFrame:
    """Per (arm, case), over the calls made: repeats, mean pass, mean score, median
    latency of timed calls, mean cost per call, calls that succeeded."""
    made = calls[calls["made"]]
    timed = made["latency_ms"].where((made["status"] == "ok") & ~made["cache_hit"].astype(bool))
    frame = made.assign(
        passed=made["passed"].astype(float),
        ok=(made["status"] == "ok").astype(int),
        timed=timed,
        cached=made["cache_hit"].astype(bool).astype(int),
    )
    return frame.groupby(["arm_id", "case_id"], sort=True).agg(
        calls=("passed", "size"),
        passed=("passed", "mean"),
        score=("score", "mean"),
        latency=("timed", "median"),
        cost=("cost_usd", "mean"),
        ok=("ok", "sum"),
        cached=("cached", "sum"),
    )


def arm_rows(by_case: pd.DataFrame, arm: str) -> pd.DataFrame:
    """One arm's rows of `case_level` (none if it made no call), indexed by case."""
    if arm in by_case.index.get_level_values(0):
        return by_case.loc[arm]
    return by_case.iloc[:0].droplevel(0)


def _arm_figures(calls: pd.DataFrame, cases: pd.DataFrame) -> dict[str, Any]:
    made = calls[calls["made"]]
    n = len(made)
    ok = int((made["status"] == "ok").sum())
    timed = made[(made["status"] == "ok") & ~made["cache_hit"].astype(bool)]
    latency = timed["latency_ms"].dropna().to_numpy()
    ttft = timed["ttft_ms"].dropna().to_numpy()
    pass_means = cases["passed"].to_numpy(dtype=float)
    pass_rate = float(pass_means.mean()) if len(pass_means) else None
    score_means = cases["score"].to_numpy(dtype=float)
    score_lo, score_hi = mean_ci(score_means, *_score_range(score_means))
    not_made = calls[~calls["made"]]
    out: dict[str, Any] = {
        "n": n,
        "n_cases": len(cases),
        "ok": ok,
        "errors": n - ok,
        "errors_by_type": {
            str(k): int(v) for k, v in made["error_type"].dropna().value_counts().items()
        },
        "error_rate": (n - ok) / n if n else None,
        "not_made": len(not_made),
        "not_made_by_type": {
            str(k): int(v) for k, v in not_made["error_type"].fillna("other").value_counts().items()
        },
        "scorer_errors": int(made["scorer_errors"].sum()),
        "cache_hits": int(made["cache_hit"].astype(bool).sum()),
        "pass_rate": pass_rate,
        "pass_rate_ci": list(mean_ci(pass_means, 0.0, 1.0)),
        "mean_score": float(score_means.mean()) if len(score_means) else None,
        "mean_score_ci": [score_lo, score_hi],
        "timed_calls": int(latency.size),
    }
    for q, name in ((0.5, "p50"), (0.9, "p90"), (0.99, "p99")):
        est, lo, hi = quantile_ci(latency, q)
        out[f"latency_{name}_ms"], out[f"latency_{name}_ci"] = est, [lo, hi]
    out["ttft_p50_ms"] = quantile_ci(ttft, 0.5)[0]
    out["latency_ms"] = latency  # for charts (an array, not a list); dropped from JSON
    for col in ("input_tokens", "output_tokens"):
        total = made[col].sum(min_count=1)
        out[col] = int(total) if pd.notna(total) else None
    cost = made["cost_usd"].sum(min_count=1)
    out["cost_usd"] = float(cost) if pd.notna(cost) else None
    out["cost_per_1k_cases_usd"] = (
        out["cost_usd"] / len(cases) * 1000 if out["cost_usd"] is not None and len(cases) else None
    )
    err = made["est_error"].dropna()
    out["est_error_mean_tokens"] = float(err.mean()) if len(err) else None
    return out


def _score_range(values: np.ndarray) -> tuple[float, float]:
    """Scores are taken to lie in [0, 1] unless the data say otherwise."""
    if values.size == 0:
        return 0.0, 1.0
    return min(0.0, float(values.min())), max(1.0, float(values.max()))


def _pair(
    by_case: pd.DataFrame, arm: str, baseline: str
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, int]]:
    """The two arms' case rows on the cases both made a call for, and the cases left
    out, by reason."""
    mine, base = arm_rows(by_case, arm), arm_rows(by_case, baseline)
    common = mine.index.intersection(base.index)
    excluded: dict[str, int] = {}
    if len(mine.index.difference(common)):
        excluded[f"no call made by {baseline}"] = len(mine.index.difference(common))
    if len(base.index.difference(common)):
        excluded[f"no call made by {arm}"] = len(base.index.difference(common))
    return mine.loc[common], base.loc[common], excluded


def _comparisons(
    by_case: pd.DataFrame,
    arm_ids: list[str],
    baseline: str,
    clusters: dict[str, str] | None,
    n_cases: int,
    error_types: dict[str, dict[str, int]] | None = None,
    batched: frozenset[str] = frozenset(),
) -> tuple[list[tuple[str, Comparison]], dict[str, list[list[str]]]]:
    """Every arm against the baseline on pass rate, mean score, latency and cost, with
    caveats where errors may be what differs (`caveats`). Latency is not compared for
    an arm that ran in batch mode, or against a baseline that did (`batched`)."""
    results: dict[str, dict[str, Comparison]] = {m: {} for m in METRICS}
    outcomes: dict[str, list[list[str]]] = {}
    score_range = _score_range(by_case["score"].to_numpy(dtype=float))
    paired: dict[str, tuple[pd.DataFrame, pd.DataFrame, list[str] | None]] = {}
    for arm in arm_ids:
        mine, base, excluded = _pair(by_case, arm, baseline)
        made_nothing = [a for a, rows in ((arm, mine), (baseline, base)) if len(rows) == 0]
        unmade = n_cases - len(mine) - sum(excluded.values())
        if unmade > 0:
            excluded["no call made by either arm"] = unmade
        cl = [clusters.get(str(c), str(c)) for c in mine.index] if clusters else None
        paired[arm] = (mine, base, cl)
        for metric, column in (("pass_rate", "passed"), ("mean_score", "score")):
            if made_nothing:
                comp = not_compared(metric, f"{made_nothing[0]} made no call", excluded)
            elif mine["ok"].sum() == 0 and base["ok"].sum() == 0:
                comp = not_compared(metric, "every call failed in both arms", excluded)
            else:
                low, high = (0.0, 1.0) if column == "passed" else score_range
                comp = compare_paired(
                    mine[column], base[column], metric, clusters=cl, bound=high - low, low=low
                )
                comp.excluded = excluded
            results[metric][arm] = comp
        for metric in RATIO_METRICS:
            comp = _ratio(metric, mine, base, arm, baseline, batched)
            comp.excluded = excluded
            results[metric][arm] = comp
        diff = (mine["passed"] - base["passed"]).sort_index()
        outcomes[arm] = [
            [str(case), "win" if d > 1e-12 else "loss" if d < -1e-12 else "tie"]
            for case, d in diff.items()
        ]
    out: list[tuple[str, Comparison]] = []
    for metric in METRICS:
        out += list(compare_arms(results[metric]).items())
    for arm, c in out:
        if not c.compared:
            continue
        mine, base, cl = paired[arm]
        c.caveats = error_rate_caveats(c.metric, ((arm, mine), (baseline, base)), error_types or {})
        if c.metric in ("pass_rate", "mean_score"):
            column = "passed" if c.metric == "pass_rate" else "score"
            low, high = (0.0, 1.0) if column == "passed" else score_range
            why = explained_by_errors(c, column, mine, base, cl, high - low, low)
            c.caveats += [why] if why else []
    return out, outcomes


def _ratio(
    metric: str,
    mine: pd.DataFrame,
    base: pd.DataFrame,
    arm: str,
    baseline: str,
    batched: frozenset[str] = frozenset(),
) -> Comparison:
    """Latency or cost of `arm` as a ratio to `baseline`'s, or why it is not compared:
    a cost that is 0 or unknown, an arm run in batch mode (no latency), few timed cases
    because calls came from the cache."""
    if metric == "cost":
        return _zero_or_unknown_cost(mine, base, arm, baseline) or compare_ratio(
            mine[metric], base[metric], metric
        )
    in_batch = [a for a in (arm, baseline) if a in batched]
    if in_batch:
        return not_compared(metric, f"latency not measured: {in_batch[0]} ran in batch mode")
    comp = compare_ratio(mine[metric], base[metric], metric)
    if not comp.compared:
        comp.reason = f"{comp.reason}{_cached_note(mine, base, arm, baseline)}"
    return comp


def _cached_note(mine: pd.DataFrame, base: pd.DataFrame, arm: str, baseline: str) -> str:
    """Why few cases have a latency, when it is the response cache: cached calls are not
    timed."""
    notes = [
        f"{int(rows['cached'].sum())} of {int(rows['calls'].sum())} calls of {who}"
        for who, rows in ((arm, mine), (baseline, base))
        if len(rows) and rows["cached"].sum()
    ]
    if not notes:
        return ""
    return (
        f": {' and '.join(notes)} came from the cache, which is not timed; `--no-cache` times them"
    )


def _zero_or_unknown_cost(
    mine: pd.DataFrame, base: pd.DataFrame, arm: str, baseline: str
) -> Comparison | None:
    """Cost that is not a ratio: unknown in an arm (no price, or no call succeeded) —
    the only "not compared" — or 0 in both arms or in one (local models, calls
    answered from the cache)."""
    if len(mine) == 0:
        return None
    sides = ((arm, mine), (baseline, base))
    for who, rows in sides:
        if rows["cost"].isna().all():
            why = "no call succeeded" if rows["ok"].sum() == 0 else "no price"
            return not_compared("cost", f"cost unknown for {who} ({why})")
    free = [a for a, rows in sides if rows["cost"].fillna(0).sum() == 0]
    if not free:
        return None
    cached = [a for a, rows in sides if rows["cached"].sum() == rows["calls"].sum()]
    why = "every call answered from the cache" if set(free) <= set(cached) else "0 USD per call"
    if len(free) == 2:
        c = not_compared("cost", f"{why} in both arms")
        c.label = "0 in both"
    else:
        paid = baseline if free == [arm] else arm
        cost = (base if paid == baseline else mine)["cost"].mean()
        c = not_compared("cost", f"{free[0]}: {why}; {paid}: {cost:.4g} USD per call")
        c.label = f"0 for {free[0]}"
    return c


def _examples(
    db: Results, run_id: str, calls: pd.DataFrame, arm: str, baseline: str, limit: int = 3
) -> list[Example]:
    """A few (case, repeat) pairs where the arm's pass differs from the baseline's, the
    arm's passes first, then by case and repeat, with both responses. Paired here from
    the call table rather than in SQL: DuckDB's join for it held ~40 MB at 100k calls."""
    keys = ["case_id", "repeat"]
    mine = calls.loc[calls["arm_id"] == arm, [*keys, "passed"]]
    base = calls.loc[calls["arm_id"] == baseline, [*keys, "passed"]]
    both = mine.merge(base, on=keys, suffixes=("", "_base"))
    differ = both[both["passed"] != both["passed_base"]].sort_values(
        ["passed", *keys], ascending=[False, True, True]
    )
    out = []
    for case, repeat, passed, base_passed in differ.head(limit).itertuples(index=False):
        found = db.example(run_id, str(case), int(repeat), arm, baseline)
        if found is not None:
            variables, arm_text, base_text = found
            out.append(
                Example(str(case), variables, bool(passed), arm_text, bool(base_passed), base_text)
            )
    return out


def comparison_figures(arm: str, baseline: str, c: Comparison) -> ComparisonFigures:
    return ComparisonFigures(
        arm_id=arm,
        baseline=baseline,
        metric=c.metric,
        scale="ratio" if c.metric in RATIO_METRICS else "difference",
        n_pairs=c.n_pairs,
        n_units=c.n_units,
        diff=_clean(c.diff),
        ci_low=_clean(c.ci_low),
        ci_high=_clean(c.ci_high),
        ci90_low=_clean(c.ci90_low),
        ci90_high=_clean(c.ci90_high),
        p_value=_clean(c.p_value),
        p_adjusted=_clean(c.p_adjusted),
        wins=c.wins,
        ties=c.ties,
        losses=c.losses,
        verdict=c.verdict,
        compared=c.compared,
        label=c.label,
        negligible=c.negligible,
        reason=c.reason,
        mde=_clean(c.mde),
        n_needed=c.n_needed,
        excluded=c.excluded,
        n_needed_range=list(c.n_needed_range) if c.n_needed_range else None,
        n_needed_goal=c.n_needed_goal,
        min_units=c.min_units,
        caveats=c.caveats,
    )


def _completeness(run: dict[str, Any], calls: pd.DataFrame) -> Completeness:
    """Whether every planned call of the arms has its outcome (issue 19): a run that is
    not `completed`, or has calls never made or left unfinished, says so and how to
    finish it."""
    missing = calls[~calls["made"]]
    unfinished = int(missing["unfinished"].astype(bool).sum())
    status = str(run["status"])
    resumable = status in ("incomplete", "interrupted", "running")
    return Completeness(
        status=status,
        complete=status == "completed" and missing.empty,
        never_made=len(missing) - unfinished,
        unfinished=unfinished,
        by_type={
            str(k): int(v) for k, v in missing["error_type"].fillna("other").value_counts().items()
        },
        resume=f"abharness run --resume {run['run_id']}" if resumable else None,
    )


def _routes(db: Results, run_id: str, arm: ArmFigures) -> None:
    """A route arm: per route, how often it served and its errors; the fallback rate."""
    served, errors = db.route_outcomes(run_id, arm.arm_id)
    labels = [f"{p.provider}:{p.model}" for p in arm.parts]
    labels += [r for r in served if r not in labels]
    routes = []
    for label in labels:
        by_type = {str(t): int(n) for route, t, n in errors if route == label}
        routes.append(RouteFigures(label, served.get(label, 0), sum(by_type.values()), by_type))
    arm.routes = routes
    total = sum(served.values())
    arm.fallback_rate = (total - served.get(labels[0], 0)) / total if total and labels else None


def _members(db: Results, run_id: str, panels: list[ArmFigures], by_case: pd.DataFrame) -> None:
    """Each panel against each of its members, on the same cases and scorers, with the
    panel's cost and latency multiples; Holm across a panel's members."""
    member_calls = db.call_table(run_id, roles=("member",))
    if member_calls.empty:
        return
    members_by_case = case_level(member_calls)
    both = pd.concat([by_case, members_by_case])
    for panel in panels:
        members = [p for p in panel.parts if p.role == "member"]
        results: dict[str, dict[str, Comparison]] = {m: {} for m in METRICS}
        for m in members:
            mine, base, excluded = _pair(both, panel.arm_id, m.arm_id)
            for metric, column in (("pass_rate", "passed"), ("mean_score", "score")):
                if len(mine) == 0:
                    comp = not_compared(metric, "no case made by both", excluded)
                else:
                    comp = compare_paired(mine[column], base[column], metric)
                    comp.excluded = excluded
                results[metric][m.arm_id] = comp
            for metric in RATIO_METRICS:
                results[metric][m.arm_id] = _ratio(metric, mine, base, panel.arm_id, m.arm_id)
        for metric in METRICS:
            compare_arms(results[metric])
        figures = []
        for m in members:
            rows = arm_rows(members_by_case, m.arm_id)
            made = member_calls[(member_calls["arm_id"] == m.arm_id) & member_calls["made"]]
            figures.append(
                MemberFigures(
                    arm_id=m.arm_id,
                    provider=m.provider,
                    model=m.model,
                    n=len(made),
                    pass_rate=float(rows["passed"].mean()) if len(rows) else None,
                    mean_score=float(rows["score"].mean()) if len(rows) else None,
                    best=False,
                    comparisons=[
                        comparison_figures(panel.arm_id, m.arm_id, results[metric][m.arm_id])
                        for metric in METRICS
                    ],
                )
            )
        scored = [f for f in figures if f.pass_rate is not None]
        if scored:
            best = max(scored, key=lambda f: (f.pass_rate or 0.0, f.mean_score or 0.0))
            best.best = True
        panel.members = figures


def _kind(parts: list[PartFigures]) -> str:
    if not parts:
        return "model"
    return "route" if any(p.role == "route" for p in parts) else "panel"


def build_report(db: Results, run_id: str) -> Report:
    run = db.run(run_id)
    arms = db.arms(run_id)
    not_run: list[NotRun] = []
    if "not_run_reason" in arms.columns:  # migration 4
        skipped = arms["not_run_reason"].notna()
        not_run = [NotRun(a["arm_id"], a["not_run_reason"]) for _, a in arms[skipped].iterrows()]
        arms = arms[~skipped]
    spec = yaml.safe_load(run["spec_yaml"] or "") or {}
    cluster = spec.get("cluster") if isinstance(spec, dict) else None
    clusters = db.case_field(run_id, cluster) if cluster else None
    judge_cost = db.judge_costs(run_id)
    usage = db.usage_sources(run_id)
    batched = frozenset(db.batched_arms(run_id))
    parts = db.arm_parts(run_id)
    calls = db.call_table(run_id)
    by_case = case_level(calls)
    n_cases = int(calls["case_id"].nunique()) if len(calls) else 0
    baseline_rows = arms[arms["is_baseline"]]
    baseline = str(baseline_rows.iloc[0]["arm_id"]) if len(baseline_rows) else None

    arm_list: list[ArmFigures] = []
    for _, a in arms.iterrows():
        arm_id = a["arm_id"]
        cases = arm_rows(by_case, arm_id)
        figures = _arm_figures(calls[calls["arm_id"] == arm_id], cases)
        own_parts = [PartFigures(**p) for p in parts if p["parent_arm_id"] == arm_id]
        sources = usage.get(arm_id, {})
        arm = ArmFigures(
            arm_id=arm_id,
            provider=a["provider"],
            model=a["model"],
            tier=_clean(a["tier"]),
            prompt=f"{a['prompt_name']}@{a['prompt_version']}",
            prompt_hash=a["prompt_hash"],
            **figures,
            judge_cost_usd=judge_cost.get(arm_id),
            kind=_kind(own_parts),
            usage_missing=sources.get("missing", 0),
            usage_estimated=sources.get("proxy_estimate", 0),
            batch=arm_id in batched,
            flakiness=flakiness(cases),
            parts=own_parts,
        )
        if arm.kind == "route":
            _routes(db, run_id, arm)
        arm_list.append(arm)
    arm_list.sort(key=lambda a: a.arm_id != baseline)  # stable: baseline first, then spec order
    examples = {
        a.arm_id: _examples(db, run_id, calls, a.arm_id, baseline)
        for a in arm_list
        if baseline is not None and a.arm_id != baseline
    }
    completeness = _completeness(run, calls)
    del calls  # a frame of every call: what follows needs only the case-level rows
    panels = [a for a in arm_list if a.kind == "panel"]
    if panels:
        _members(db, run_id, panels, by_case)

    comparisons: list[ComparisonFigures] = []
    kind = str(run.get("kind") or "run")
    online: list[ComparisonFigures] = []
    online_note = None
    traffic: list[OnlineArmFigures] = []
    if kind == "online" and baseline is not None:
        # live traffic: arms never answer the same request, so nothing pairs by case
        decided_online, online_note = online_comparisons(db, run_id, baseline)
        online = [comparison_figures(arm, baseline, c) for arm, c in decided_online]
        traffic = online_arms(db, run_id)
    elif baseline is not None:
        others = [a.arm_id for a in arm_list if a.arm_id != baseline]
        error_types = {a.arm_id: a.errors_by_type for a in arm_list}
        decided, outcomes = _comparisons(
            by_case, others, baseline, clusters, n_cases, error_types, batched
        )
        comparisons = [comparison_figures(arm, baseline, c) for arm, c in decided]
        for a in arm_list:
            if a.arm_id in outcomes:
                a.case_outcomes = outcomes[a.arm_id]
    return Report(
        run_id=run_id,
        experiment=run["experiment"],
        description=run["description"],
        status=run["status"],
        started_at=f"{run['started_at']:%Y-%m-%d %H:%M:%S}",
        finished_at=f"{run['finished_at']:%Y-%m-%d %H:%M:%S}"
        if pd.notna(run["finished_at"])
        else None,
        wall_time_s=_clean(run["wall_time_s"]),
        spec_hash=run["spec_hash"],
        harness_version=run["harness_version"],
        n_cases=n_cases,
        cluster=cluster,
        n_clusters=len(set(clusters.values())) if clusters else None,
        baseline=baseline,
        alpha=ALPHA,
        equivalence_margin=EQUIVALENCE_MARGIN,
        ratio_margin=RATIO_MARGIN,
        arms=arm_list,
        comparisons=comparisons,
        not_run=not_run,
        examples=examples,
        completeness=completeness,
        kind=kind,
        online=online,
        online_note=online_note,
        online_arms=traffic,
    )


def to_json(report: Report) -> dict[str, Any]:
    """The report without chart-only data, JSON-safe (SPEC §9's fields, and more)."""
    return report.to_json()


def write_report(
    results: Results, run_id: str, reports_dir: Path, db_path: str | None = None
) -> Path:
    """Write ``<experiment>/<run_id>.md`` and the self-contained ``.html`` beside it."""
    from .cases import case_data
    from .html import cases_section, render_html
    from .markdown import render_markdown

    report = build_report(results, run_id)
    cases = cases_section(case_data(results, report), run_id, db_path)
    target = reports_dir / report.experiment / f"{run_id}.md"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(render_markdown(report, db_path), encoding="utf-8")
        target.with_suffix(".html").write_text(
            render_html(report, db_path, cases), encoding="utf-8"
        )
    except OSError as exc:
        where = f" --db {db_path}" if db_path else ""
        raise environment_failure(
            exc,
            f"could not write the report {target}",
            f"the run is safe in {db_path or results.path}; `abharness report {run_id}{where}` "
            "writes it again",
        ) from exc
    return target


def compare_sides(db: Results, a: tuple[str, str], b: tuple[str, str]) -> list[ComparisonFigures]:
    """Arm b (run, arm) against arm a, paired by case id — two arms of one run, or one
    arm across two runs (`abharness view`'s compare page): pass rate, mean score,
    latency and cost, as the report compares an arm with its baseline, for this one
    pair (no Holm correction across other arms; clusters are not used)."""
    frames = {run: db.call_table(run) for run in {a[0], b[0]}}
    key_a, key_b = "a", "b"
    rows = pd.concat(
        [
            frames[a[0]][frames[a[0]]["arm_id"] == a[1]].assign(arm_id=key_a),
            frames[b[0]][frames[b[0]]["arm_id"] == b[1]].assign(arm_id=key_b),
        ],
        ignore_index=True,
    )
    by_case = case_level(rows) if len(rows) else case_level(frames[a[0]].iloc[:0])
    n_cases = int(rows["case_id"].nunique()) if len(rows) else 0
    decided, _ = _comparisons(by_case, [key_b], key_a, None, n_cases)
    out = []
    for _, c in decided:
        c.excluded = {
            k.replace(f"by {key_a}", f"by {a[0]}:{a[1]}").replace(
                f"by {key_b}", f"by {b[0]}:{b[1]}"
            ): v
            for k, v in c.excluded.items()
        }
        out.append(comparison_figures(f"{b[0]}:{b[1]}", f"{a[0]}:{a[1]}", c))
    return out
