"""The Markdown report, and the sentences and number formats the HTML report shares."""

from __future__ import annotations

from typing import Any

from .stats import MIN_CALLS_FOR


def _fmt(value: Any, spec: str = "", suffix: str = "") -> str:
    if value is None:
        return "–"
    if spec == "pct":
        return f"{value * 100:.1f}%"
    if spec == "," and float(value).is_integer():
        value = int(value)
    return f"{value:{spec}}{suffix}"


METRIC_WORDS = {
    "pass_rate": "pass rate",
    "mean_score": "mean score",
    "latency": "latency",
    "cost": "cost",
}
RATIO_WORDS = {
    ("latency", "better"): "faster",
    ("latency", "worse"): "slower",
    ("cost", "better"): "cheaper",
    ("cost", "worse"): "dearer",
}


def verdict_word(c: dict[str, Any]) -> str:
    if not c["compared"]:
        return c.get("label") or "not compared"
    return RATIO_WORDS.get((c["metric"], c["verdict"]), c["verdict"].replace("_", " "))


def effect_text(c: dict[str, Any]) -> str:
    """The estimate and its 95% interval: points for differences, × for ratios."""
    if not c["compared"]:
        return "–"
    if c["scale"] == "ratio":
        return f"×{c['diff']:.2f} (95% CI {c['ci_low']:.2f} to {c['ci_high']:.2f})"
    return (
        f"{c['diff'] * 100:+.1f} points (95% CI {c['ci_low'] * 100:+.1f} to "
        f"{c['ci_high'] * 100:+.1f})"
    )


def excluded_text(c: dict[str, Any]) -> str:
    if not c.get("excluded"):
        return ""
    n = sum(c["excluded"].values())
    why = ", ".join(f"{k}: {v}" for k, v in c["excluded"].items())
    return f" {n} case{'s' if n != 1 else ''} left out ({why})."


def verdict_sentence(c: dict[str, Any], margin: float, ratio_margin: float = 0.1) -> str:
    """The comparison in words, saying when the sample is too small to tell and why."""
    arm, base, metric = c["arm_id"], c["baseline"], METRIC_WORDS[c["metric"]]
    word = verdict_word(c)
    if not c["compared"]:
        return f"`{arm}` against `{base}` on {metric}: **{word}**: {c['reason']}.{excluded_text(c)}"
    unit = "cases" if c["n_units"] == c["n_pairs"] else f"cases in {c['n_units']} clusters"
    tally = f"{c['wins']} wins, {c['ties']} ties, {c['losses']} losses over {c['n_pairs']} {unit}"
    p = f"p = {c['p_adjusted']:.2g} after Holm"
    effect = effect_text(c)
    ratio = c["scale"] == "ratio"
    band = f"±{ratio_margin * 100:.0f}%" if ratio else f"±{margin * 100:.0f} points"
    if c["verdict"] in ("better", "worse"):
        text = f"`{arm}` is **{word}** than `{base}` on {metric}: {effect}; {tally}; {p}."
        if c["negligible"]:
            text += f" The whole 90% interval is within {band}: the difference is **negligible**."
    elif c["verdict"] == "no_difference":
        if ratio:
            lo, hi = f"×{c['ci90_low']:.2f}", f"×{c['ci90_high']:.2f}"
        else:
            lo, hi = f"{c['ci90_low'] * 100:+.1f}", f"{c['ci90_high'] * 100:+.1f}"
        text = (
            f"`{arm}` and `{base}` show **no difference** on {metric}: the 90% interval "
            f"({lo} to {hi}) lies within {band}; {effect}; {tally}."
        )
    else:
        text = f"`{arm}` against `{base}` on {metric} is **inconclusive**: {effect}; {tally}; {p}."
        if c.get("reason"):
            text += f" Not called: {c['reason']}."
        text += power_text(c, band)
    for caveat in c.get("caveats") or []:
        text += f" **Caveat**: {caveat}."
    return text + excluded_text(c)


def power_text(c: dict[str, Any], band: str) -> str:
    """What these cases could detect and, when more would help, how many: a sentence
    for an inconclusive verdict. Says when no test could reject at all."""
    n, units = c["n_pairs"], c["n_units"]
    least = c.get("min_units")
    if least is not None and units < least:
        if units != n:
            return (
                f" No verdict is possible with {units} clusters: the test needs at least {least} "
                "clusters that differ to reject at this level (more cases per cluster do not help)."
            )
        return (
            f" No verdict is possible with {n} case{'s' if n != 1 else ''}: the test needs at "
            f"least {least} cases that differ to reject at this level."
        )
    ratio = c["scale"] == "ratio"
    if c.get("mde") is None:
        text = f" With {n} cases no difference that can exist here would be detected reliably"
    elif ratio:
        text = (
            f" With {n} cases only a ratio beyond ×{c['mde']:.2f} (or below ×{1 / c['mde']:.2f}) "
            "would be detected reliably"
        )
    else:
        text = (
            f" With {n} cases only a difference of about ±{c['mde'] * 100:.0f} points would be "
            "detected reliably"
        )
    text += " (80% power)"
    if c.get("n_needed"):
        lo, hi = c.get("n_needed_range") or (c["n_needed"], c["n_needed"])
        spread = f" ({lo:,}–{hi:,} within the spread's 90% interval)" if lo != hi else ""
        goal = (
            f"to show a difference within {band}"
            if c.get("n_needed_goal") == "equivalence"
            else f"to detect a difference of {band.lstrip('±')}"
        )
        text += f"; about {c['n_needed']:,} cases{spread} would be needed {goal}"
    return text + "."


def detectable_text(c: dict[str, Any]) -> str:
    """The table's "detectable (80% power)" cell."""
    least = c.get("min_units")
    if c["compared"] and least is not None and c["n_units"] < least:
        return f"none (< {least} units)"
    if c.get("mde") is None:
        return "–"
    if c["scale"] == "ratio":
        return f"×{c['mde']:.2f}"
    return f"±{c['mde'] * 100:.0f} pts"


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
            f"- {verdict_sentence(c, r['equivalence_margin'], r['ratio_margin'])}"
            for c in comparisons
            if c["metric"] in ("pass_rate", "latency")
        ]
    if r.get("not_run"):
        lines += ["", "## Not run", "", "These arms could not run here; they get no verdict:", ""]
        lines += [f"- `{n['arm_id']}`: {n['reason']}" for n in r["not_run"]]
    lines += [
        "",
        "## Arms",
        "",
        "Rates are over the calls made, averaged per case first (a case's repeats are one unit). "
        "95% intervals in brackets: over case means with a pseudo-case at each end of the scale for "
        "pass rate, order statistics for latency. A call passes when it succeeded and every scorer passed; "
        "failed calls and scorer errors count as not passed, score 0. Calls never made (cost cap, "
        f"endpoint stopped) are left out. p90 needs {MIN_CALLS_FOR[0.9]} timed calls and p99 "
        f"{MIN_CALLS_FOR[0.99]}; below that they are not estimable (–).",
        "",
        "| arm | model | prompt | cases | calls | not made | errors | cached | pass rate % | mean score | p50 ms | p90 ms | p99 ms | TTFT p50 ms | input tok | output tok | cost USD | per 1k cases | estimate error (tok/call) |",
        "|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for a in r["arms"]:
        name = f"**{a['arm_id']}** (baseline)" if a["arm_id"] == r["baseline"] else a["arm_id"]
        errors = f"{a['errors']}" + (
            " (" + ", ".join(f"{n} {t}" for t, n in a["errors_by_type"].items()) + ")"
            if a["errors"]
            else ""
        )
        if a["scorer_errors"]:
            errors += f"; {a['scorer_errors']} scorer errors"
        not_made = f"{a['not_made']}" + (
            " (" + ", ".join(f"{n} {t}" for t, n in a["not_made_by_type"].items()) + ")"
            if a["not_made"]
            else ""
        )
        lines.append(
            f"| {name} | {a['provider']}/{a['model']} | {a['prompt']} | {a['n_cases']} | {a['n']} | {not_made} | "
            f"{errors} | {a['cache_hits']} | "
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
            METHOD_NOTE.format(margin=r["equivalence_margin"] * 100, ratio=r["ratio_margin"] * 100),
            "",
            "| arm | metric | estimate | 95% CI | cases | wins | ties | losses | p | p (Holm) | verdict | detectable (80% power) |",
            "|---|---|--:|---|--:|--:|--:|--:|--:|--:|---|--:|",
        ]
        for c in comparisons:
            lines.append(
                f"| {c['arm_id']} | {METRIC_WORDS[c['metric']]} | {_estimate(c)} | {_interval(c)} | "
                f"{c['n_pairs']} | {c['wins']} | {c['ties']} | {c['losses']} | {_fmt(c['p_value'], '.3g')} | "
                f"{_fmt(c['p_adjusted'], '.3g')} | {verdict_word(c)}{' (negligible)' if c['negligible'] else ''} | "
                f"{detectable_text(c)} |"
            )
        lines += [""] + [
            f"- {verdict_sentence(c, r['equivalence_margin'], r['ratio_margin'])}"
            for c in comparisons
            if c["metric"] in ("mean_score", "cost")
        ]
    for arm_id, examples in r.get("examples", {}).items():
        if not examples:
            continue
        lines += ["", f"### Where `{arm_id}` and `{r['baseline']}` differ", ""]
        for e in examples:
            vars_ = ", ".join(f"{k}={v!r}" for k, v in e["vars"].items())
            vars_ = f" ({vars_})" if vars_ else ""
            lines += [
                f"- case `{e['case_id']}`{vars_}: {arm_id} {'passed' if e['arm_passed'] else 'failed'} "
                f"with {_quote(e['arm_response'])}; {r['baseline']} {'passed' if e['baseline_passed'] else 'failed'} "
                f"with {_quote(e['baseline_response'])}"
            ]
    return "\n".join(lines) + "\n"


METHOD_NOTE = (
    "The case is the unit: a case's repeats are averaged first. Pass rate and mean score: "
    "difference with an adjusted interval (two pseudo-cases, cluster-robust, Student's t), "
    "sign-flip permutation test (exact McNemar with one call per case), Holm-adjusted across "
    "arms; no difference means the 90% interval lies within ±{margin:.0f} points (TOST). "
    "Latency (median per case) and cost (per call): geometric mean of per-case ratios, "
    "Student's t interval on their logs; no difference within ±{ratio:.0f}% (from 5 cases)."
)


def _estimate(c: dict[str, Any]) -> str:
    if not c["compared"]:
        return "–"
    return f"×{c['diff']:.2f}" if c["scale"] == "ratio" else f"{c['diff'] * 100:+.1f} pts"


def _interval(c: dict[str, Any]) -> str:
    if not c["compared"]:
        return c["reason"]
    if c["scale"] == "ratio":
        return f"{c['ci_low']:.2f} to {c['ci_high']:.2f}"
    return f"{c['ci_low'] * 100:+.1f} to {c['ci_high'] * 100:+.1f}"


def _quote(text: str | None, limit: int = 80) -> str:
    if text is None:
        return "no response"
    text = " ".join(text.split())
    return "`" + (text if len(text) <= limit else text[: limit - 1] + "…").replace("`", "'") + "`"
