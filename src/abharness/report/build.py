"""The figures of one run, as a dict: SPEC §9's JSON, and what the renderers format.

`build_report` computes everything from the database; `markdown` and `html` only
format it, so the JSON, the Markdown and the HTML always agree.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from ..store.queries import Results
from .stats import ALPHA, EQUIVALENCE_MARGIN, bootstrap_ci, compare_arms, wilson


def _clean(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if hasattr(value, "item"):  # numpy scalars
        return _clean(value.item())
    return value


def _arm_figures(calls: pd.DataFrame, n_cases: int) -> dict[str, Any]:
    n = len(calls)
    ok = int((calls["status"] == "ok").sum())
    timed = calls[(calls["status"] == "ok") & ~calls["cache_hit"].astype(bool)]
    latency = timed["latency_ms"].dropna().tolist()
    ttft = timed["ttft_ms"].dropna().tolist()
    passes = int(calls["passed"].sum())
    pass_lo, pass_hi = wilson(passes, n)
    score, score_lo, score_hi = bootstrap_ci(calls["score"].tolist())
    out: dict[str, Any] = {
        "n": n,
        "ok": ok,
        "errors": n - ok,
        "errors_by_type": {
            str(k): int(v) for k, v in calls["error_type"].dropna().value_counts().items()
        },
        "error_rate": (n - ok) / n if n else None,
        "cache_hits": int(calls["cache_hit"].astype(bool).sum()),
        "pass_rate": passes / n if n else None,
        "pass_rate_ci": [pass_lo, pass_hi],
        "mean_score": score,
        "mean_score_ci": [score_lo, score_hi],
    }
    for q, name in ((0.5, "p50"), (0.9, "p90"), (0.99, "p99")):
        est, lo, hi = bootstrap_ci(latency, "quantile", q)
        out[f"latency_{name}_ms"], out[f"latency_{name}_ci"] = est, [lo, hi]
    out["ttft_p50_ms"] = bootstrap_ci(ttft, "quantile", 0.5)[0]
    out["latency_ms"] = latency  # for charts; dropped from JSON
    for col in ("input_tokens", "output_tokens"):
        total = calls[col].sum(min_count=1)
        out[col] = int(total) if pd.notna(total) else None
    cost = calls["cost_usd"].sum(min_count=1)
    out["cost_usd"] = float(cost) if pd.notna(cost) else None
    out["cost_per_1k_cases_usd"] = (
        out["cost_usd"] / n_cases * 1000 if out["cost_usd"] is not None and n_cases else None
    )
    err = calls["est_error"].dropna()
    out["est_error_mean_tokens"] = float(err.mean()) if len(err) else None
    return out


def build_report(db: Results, run_id: str) -> dict[str, Any]:
    run = db.run(run_id)
    arms = db.arms(run_id)
    not_run: list[dict[str, Any]] = []
    if "not_run_reason" in arms.columns:  # migration 4
        skipped = arms["not_run_reason"].notna()
        not_run = [
            {"arm_id": a["arm_id"], "reason": a["not_run_reason"]}
            for _, a in arms[skipped].iterrows()
        ]
        arms = arms[~skipped]
    judge_cost = db.judge_costs(run_id)
    calls = db.call_table(run_id)
    n_cases = int(calls["case_id"].nunique()) if len(calls) else 0
    baseline_rows = arms[arms["is_baseline"]]
    baseline = str(baseline_rows.iloc[0]["arm_id"]) if len(baseline_rows) else None

    arm_list = []
    for _, a in arms.iterrows():
        figures = _arm_figures(calls[calls["arm_id"] == a["arm_id"]], n_cases)
        arm_list.append(
            {
                "arm_id": a["arm_id"],
                "provider": a["provider"],
                "model": a["model"],
                "tier": _clean(a["tier"]),
                "prompt": f"{a['prompt_name']}@{a['prompt_version']}",
                "prompt_hash": a["prompt_hash"],
                **figures,
                "judge_cost_usd": judge_cost.get(a["arm_id"]),
            }
        )
    arm_list.sort(key=lambda a: a["arm_id"] != baseline)  # stable: baseline first, then spec order

    comparisons: list[dict[str, Any]] = []
    if baseline is not None:
        keyed = calls.set_index(["arm_id", "case_id", "repeat"])
        base = keyed.loc[baseline] if baseline in keyed.index.get_level_values(0) else None
        others = [a for a in arm_list if a["arm_id"] != baseline]
        for metric, column in (("pass_rate", "passed"), ("mean_score", "score")):
            pairs = {}
            for a in others:
                mine = keyed.loc[a["arm_id"]]
                common = mine.index.intersection(base.index) if base is not None else []
                pairs[a["arm_id"]] = (
                    mine.loc[common, column].astype(float).tolist(),
                    base.loc[common, column].astype(float).tolist() if base is not None else [],
                )
            results = compare_arms(pairs, metric) if pairs else {}
            if metric == "pass_rate" and base is not None:
                for a in others:
                    mine = keyed.loc[a["arm_id"]]
                    common = mine.index.intersection(base.index)
                    outcome = mine.loc[common, "passed"].astype(int) - base.loc[
                        common, "passed"
                    ].astype(int)
                    a["case_outcomes"] = [
                        [str(case), int(rep), {1: "win", 0: "tie", -1: "loss"}[int(o)]]
                        for (case, rep), o in outcome.sort_index().items()
                    ]
            base_fig = arm_list[0]
            for a in others:
                c = results[a["arm_id"]]
                comparisons.append(
                    {
                        "arm_id": a["arm_id"],
                        "baseline": baseline,
                        "metric": metric,
                        "n_pairs": c.n_pairs,
                        "diff": c.diff,
                        "ci_low": c.ci_low,
                        "ci_high": c.ci_high,
                        "p_value": c.p_value,
                        "p_adjusted": c.p_adjusted,
                        "wins": c.wins,
                        "ties": c.ties,
                        "losses": c.losses,
                        "verdict": c.verdict,
                        "n_needed": c.n_needed,
                        "latency_p50_ratio": _ratio(
                            a["latency_p50_ms"], base_fig["latency_p50_ms"]
                        ),
                        "cost_ratio": _ratio(a["cost_usd"], base_fig["cost_usd"]),
                    }
                )
    return {
        "run_id": run_id,
        "experiment": run["experiment"],
        "description": run["description"],
        "status": run["status"],
        "started_at": f"{run['started_at']:%Y-%m-%d %H:%M:%S}",
        "finished_at": f"{run['finished_at']:%Y-%m-%d %H:%M:%S}"
        if pd.notna(run["finished_at"])
        else None,
        "wall_time_s": _clean(run["wall_time_s"]),
        "spec_hash": run["spec_hash"],
        "harness_version": run["harness_version"],
        "n_cases": n_cases,
        "baseline": baseline,
        "alpha": ALPHA,
        "equivalence_margin": EQUIVALENCE_MARGIN,
        "arms": arm_list,
        "comparisons": comparisons,
        "not_run": not_run,
        "examples": {
            a["arm_id"]: db.differing_cases(run_id, a["arm_id"], baseline)
            for a in arm_list
            if baseline is not None and a["arm_id"] != baseline
        },
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def to_json(report: dict[str, Any]) -> dict[str, Any]:
    """The report without chart-only data, JSON-safe."""
    arms = [{k: v for k, v in a.items() if k != "latency_ms"} for a in report["arms"]]
    return {**report, "arms": arms}


def write_report(
    results: Results, run_id: str, reports_dir: Path, db_path: str | None = None
) -> Path:
    """Write ``<experiment>/<run_id>.md`` and the self-contained ``.html`` beside it."""
    from .html import render_html
    from .markdown import render_markdown

    report = build_report(results, run_id)
    target = reports_dir / report["experiment"] / f"{run_id}.md"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(render_markdown(report, db_path), encoding="utf-8")
    target.with_suffix(".html").write_text(render_html(report, db_path), encoding="utf-8")
    return target
