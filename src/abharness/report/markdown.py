"""The Markdown report, and the sentences and number formats the HTML report shares."""

from __future__ import annotations

from typing import Any


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
    if r.get("not_run"):
        lines += ["", "## Not run", "", "These arms could not run here; they get no verdict:", ""]
        lines += [f"- `{n['arm_id']}`: {n['reason']}" for n in r["not_run"]]
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
