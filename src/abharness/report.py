"""Reports: the figures of one run, as a dict (SPEC §9's JSON) and as Markdown.

`build_report` computes everything from the database; renderers only format it, so
the JSON, the Markdown and (later) the HTML always agree.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd

from .stats import ALPHA, EQUIVALENCE_MARGIN, bootstrap_ci, compare_arms, wilson
from .store import has_column


class RunNotFound(LookupError):
    pass


def resolve_run_id(con: duckdb.DuckDBPyConnection, run: str | None) -> str:
    """`run` itself if recorded, or the latest run when `run` is None or 'last'."""
    if run in (None, "last", "--last"):
        row = con.execute(
            "SELECT run_id FROM runs ORDER BY started_at DESC, run_id DESC LIMIT 1"
        ).fetchone()
        if row is None:
            raise RunNotFound("the database has no runs yet")
        return str(row[0])
    row = con.execute("SELECT run_id FROM runs WHERE run_id = ?", [run]).fetchone()
    if row is None:
        raise RunNotFound(f"no run {run!r} in the database")
    return str(row[0])


def _clean(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if hasattr(value, "item"):  # numpy scalars
        return _clean(value.item())
    return value


def _call_table(con: duckdb.DuckDBPyConnection, run_id: str) -> pd.DataFrame:
    """One row per call with its pass/fail and score (errors: not passed, score 0)."""
    judges = has_column(con, "calls", "judged_call_id")  # migration 3
    return con.execute(
        f"""
        SELECT c.arm_id, c.case_id, c.repeat, c.status, c.error_type, c.cache_hit, c.latency_ms,
               c.ttft_ms, c.input_tokens, c.output_tokens, c.cost_usd,
               c.est_input_tokens - c.input_tokens AS est_error,
               c.status = 'ok' AND coalesce(bool_and(coalesce(s.passed, FALSE)), FALSE) AS passed,
               CASE WHEN c.status = 'ok' THEN coalesce(avg(s.value), 0) ELSE 0 END AS score
        FROM calls c LEFT JOIN scores s ON s.call_id = c.call_id
        WHERE c.run_id = ? {"AND c.judged_call_id IS NULL" if judges else ""}
        GROUP BY c.call_id, c.arm_id, c.case_id, c.repeat, c.status, c.error_type, c.cache_hit,
                 c.latency_ms, c.ttft_ms, c.input_tokens, c.output_tokens, c.cost_usd,
                 c.est_input_tokens
        """,
        [run_id],
    ).df()


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


def build_report(con: duckdb.DuckDBPyConnection, run_id: str) -> dict[str, Any]:
    run = con.execute("SELECT * FROM runs WHERE run_id = ?", [run_id]).df().iloc[0].to_dict()
    judges = has_column(con, "arms", "role")  # migration 3
    arms = con.execute(
        "SELECT * FROM arms WHERE run_id = ? "
        + ("AND coalesce(role, 'arm') = 'arm' " if judges else "")
        + "ORDER BY position, arm_id",
        [run_id],
    ).df()
    judge_cost = (
        dict(
            con.execute(
                "SELECT j.arm_id, sum(c.cost_usd) FROM calls c JOIN calls j ON c.judged_call_id = j.call_id "
                "WHERE c.run_id = ? GROUP BY 1",
                [run_id],
            ).fetchall()
        )
        if judges
        else {}
    )
    calls = _call_table(con, run_id)
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
        "examples": _examples(
            con, run_id, baseline, [a["arm_id"] for a in arm_list if a["arm_id"] != baseline]
        ),
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def to_json(report: dict[str, Any]) -> dict[str, Any]:
    """The report without chart-only data, JSON-safe."""
    arms = [{k: v for k, v in a.items() if k != "latency_ms"} for a in report["arms"]]
    return {**report, "arms": arms}


def _examples(
    con: duckdb.DuckDBPyConnection,
    run_id: str,
    baseline: str | None,
    arm_ids: list[str],
    per_arm: int = 3,
) -> dict[str, list[dict[str, Any]]]:
    """A few cases per arm where its outcome differs from the baseline's."""
    if baseline is None:
        return {}
    out: dict[str, list[dict[str, Any]]] = {}
    for arm_id in arm_ids:
        rows = con.execute(
            """
            WITH p AS (
                SELECT c.arm_id, c.case_id, c.repeat, c.response_text, c.error_type,
                       c.status = 'ok' AND coalesce(bool_and(coalesce(s.passed, FALSE)), FALSE) AS passed
                FROM calls c LEFT JOIN scores s ON s.call_id = c.call_id
                WHERE c.run_id = ? AND c.arm_id IN (?, ?)
                GROUP BY c.arm_id, c.case_id, c.repeat, c.response_text, c.error_type, c.status
            )
            SELECT a.case_id, k.vars_json, a.passed, a.response_text, b.passed, b.response_text
            FROM p a JOIN p b ON a.case_id = b.case_id AND a.repeat = b.repeat
            JOIN cases k ON k.run_id = ? AND k.case_id = a.case_id
            WHERE a.arm_id = ? AND b.arm_id = ? AND a.passed <> b.passed
            ORDER BY a.passed DESC, a.case_id LIMIT ?
            """,
            [run_id, arm_id, baseline, run_id, arm_id, baseline, per_arm],
        ).fetchall()
        out[arm_id] = [
            {
                "case_id": r[0],
                "vars": json.loads(r[1] or "{}"),
                "arm_passed": r[2],
                "arm_response": r[3],
                "baseline_passed": r[4],
                "baseline_response": r[5],
            }
            for r in rows
        ]
    return out


def _fmt(value: Any, spec: str = "", suffix: str = "") -> str:
    if value is None:
        return "–"
    if spec == "pct":
        return f"{value * 100:.1f}%"
    if spec == "," and float(value).is_integer():
        value = int(value)
    return f"{value:{spec}}{suffix}"


METRIC_WORDS = {"pass_rate": "pass rate", "mean_score": "mean score"}


def verdict_sentence(c: dict[str, Any], margin: float) -> str:
    """The comparison in words, saying when the sample is too small to tell."""
    arm, base, metric = c["arm_id"], c["baseline"], METRIC_WORDS[c["metric"]]
    diff = f"{c['diff'] * 100:+.1f} points (95% CI {c['ci_low'] * 100:+.1f} to {c['ci_high'] * 100:+.1f})"
    tally = f"{c['wins']} wins, {c['ties']} ties, {c['losses']} losses over {c['n_pairs']} pairs"
    p = f"p = {c['p_adjusted']:.2g} after Holm"
    if c["verdict"] == "better":
        return f"`{arm}` is **better** than `{base}` on {metric}: {diff}; {tally}; {p}."
    if c["verdict"] == "worse":
        return f"`{arm}` is **worse** than `{base}` on {metric}: {diff}; {tally}; {p}."
    if c["verdict"] == "no_difference":
        return (
            f"`{arm}` and `{base}` show **no difference** on {metric} beyond ±{margin * 100:.0f} points: "
            f"{diff}; {tally}."
        )
    need = f" About {c['n_needed']} pairs would be needed to tell." if c.get("n_needed") else ""
    return (
        f"`{arm}` against `{base}` on {metric} is **inconclusive**: {diff}; {tally}; {p}. "
        f"The sample is too small to tell.{need}"
    )


def _ci(lo: float | None, hi: float | None, pct: bool = False) -> str:
    if lo is None or hi is None:
        return ""
    return f" ({lo * 100:.1f}–{hi * 100:.1f})" if pct else f" ({lo:.0f}–{hi:.0f})"


def render_markdown(r: dict[str, Any], db_path: str | None = None) -> str:
    lines = [f"# {r['experiment']} — run `{r['run_id']}`", ""]
    if r.get("description"):
        lines += [r["description"], ""]
    lines += [
        f"- status: **{r['status']}**, started {r['started_at']} UTC, wall time {_fmt(r['wall_time_s'], '.1f', ' s')}",
        f"- {r['n_cases']} cases; baseline `{r['baseline']}`; spec hash `{r['spec_hash']}`; abharness {r['harness_version']}",
    ]
    if db_path:
        lines.append(f"- database: `{db_path}` (tables `calls`, `scores`; view `call_facts`)")
    comparisons = r["comparisons"]
    if comparisons:
        lines += ["", "## Verdicts", ""]
        lines += [
            f"- {verdict_sentence(c, r['equivalence_margin'])}"
            for c in comparisons
            if c["metric"] == "pass_rate"
        ]
    lines += [
        "",
        "## Arms",
        "",
        "95% intervals in brackets: Wilson for pass rate, bootstrap for the rest. A call passes when it "
        "succeeded and every scorer passed; failed calls count as not passed, score 0.",
        "",
        "| arm | model | prompt | n | errors | cached | pass rate % | mean score | p50 ms | p90 ms | p99 ms | TTFT p50 ms | input tok | output tok | cost USD | per 1k cases | estimate error (tok/call) |",
        "|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for a in r["arms"]:
        name = f"**{a['arm_id']}** (baseline)" if a["arm_id"] == r["baseline"] else a["arm_id"]
        errors = f"{a['errors']}" + (
            " (" + ", ".join(f"{n} {t}" for t, n in a["errors_by_type"].items()) + ")"
            if a["errors"]
            else ""
        )
        lines.append(
            f"| {name} | {a['provider']}/{a['model']} | {a['prompt']} | {a['n']} | {errors} | {a['cache_hits']} | "
            f"{_fmt(a['pass_rate'], 'pct')}{_ci(a['pass_rate_ci'][0], a['pass_rate_ci'][1], pct=True)} | "
            f"{_fmt(a['mean_score'], '.3f')} | {_fmt(a['latency_p50_ms'], '.0f')}{_ci(*a['latency_p50_ci'])} | "
            f"{_fmt(a['latency_p90_ms'], '.0f')} | {_fmt(a['latency_p99_ms'], '.0f')} | {_fmt(a['ttft_p50_ms'], '.0f')} | "
            f"{_fmt(a['input_tokens'], ',')} | {_fmt(a['output_tokens'], ',')} | {_fmt(a['cost_usd'], '.4f')} | "
            f"{_fmt(a['cost_per_1k_cases_usd'], '.4f')} | {_fmt(a['est_error_mean_tokens'], '+.1f')} |"
        )
    judged = [a for a in r["arms"] if a.get("judge_cost_usd") is not None]
    if judged:
        lines += [
            "",
            "Judging cost (llm_judge calls, not in the arm's own cost): "
            + "; ".join(f"{a['arm_id']} {a['judge_cost_usd']:.4f} USD" for a in judged),
        ]
    if any(a["cache_hits"] for a in r["arms"]):
        lines += [
            "",
            "Cached calls were answered from the response cache: they cost nothing and are "
            "left out of latency and TTFT (run with `--no-cache` to measure them).",
        ]
    if comparisons:
        lines += [
            "",
            f"## Against the baseline `{r['baseline']}`",
            "",
            f"Paired by case and repeat. Interval: paired bootstrap (2,000 resamples, fixed seed). Test: exact "
            f"McNemar for pass rate, sign test for mean score, Holm-adjusted across arms. Equivalence margin "
            f"±{r['equivalence_margin'] * 100:.0f} points.",
            "",
            "| arm | metric | difference (pts) | 95% CI | wins | ties | losses | p | p (Holm) | verdict | latency p50 × | cost × |",
            "|---|---|--:|---|--:|--:|--:|--:|--:|---|--:|--:|",
        ]
        for c in comparisons:
            lines.append(
                f"| {c['arm_id']} | {METRIC_WORDS[c['metric']]} | {c['diff'] * 100:+.1f} | "
                f"{c['ci_low'] * 100:+.1f} to {c['ci_high'] * 100:+.1f} | {c['wins']} | {c['ties']} | {c['losses']} | "
                f"{c['p_value']:.3g} | {c['p_adjusted']:.3g} | {c['verdict']} | "
                f"{_fmt(c['latency_p50_ratio'], '.2f')} | {_fmt(c['cost_ratio'], '.2f')} |"
            )
        lines += [""] + [
            f"- {verdict_sentence(c, r['equivalence_margin'])}"
            for c in comparisons
            if c["metric"] == "mean_score"
        ]
    for arm_id, examples in r.get("examples", {}).items():
        if not examples:
            continue
        lines += ["", f"### Where `{arm_id}` and `{r['baseline']}` differ", ""]
        for e in examples:
            vars_ = ", ".join(f"{k}={v!r}" for k, v in e["vars"].items())
            lines += [
                f"- case `{e['case_id']}` ({vars_}): {arm_id} {'passed' if e['arm_passed'] else 'failed'} "
                f"with {_quote(e['arm_response'])}; {r['baseline']} {'passed' if e['baseline_passed'] else 'failed'} "
                f"with {_quote(e['baseline_response'])}"
            ]
    return "\n".join(lines) + "\n"


def _quote(text: str | None, limit: int = 80) -> str:
    if text is None:
        return "no response"
    text = " ".join(text.split())
    return "`" + (text if len(text) <= limit else text[: limit - 1] + "…").replace("`", "'") + "`"


def write_report(
    con: duckdb.DuckDBPyConnection, run_id: str, reports_dir: Path, db_path: str | None = None
) -> Path:
    """Write ``<experiment>/<run_id>.md`` and the self-contained ``.html`` beside it."""
    from .report_html import render_html

    report = build_report(con, run_id)
    target = reports_dir / report["experiment"] / f"{run_id}.md"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(render_markdown(report, db_path), encoding="utf-8")
    target.with_suffix(".html").write_text(render_html(report, db_path), encoding="utf-8")
    return target
