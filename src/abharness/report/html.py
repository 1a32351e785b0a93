"""The HTML report: one self-contained file (inline CSS and SVG, no external URL).

It shows what the Markdown shows, plus three charts: latency distribution per arm,
score against cost with the Pareto front marked, and per-case wins/losses against
the baseline.
"""

from __future__ import annotations

import math
import re
from html import escape
from typing import Any

import numpy as np

from .markdown import (
    METHOD_NOTE,
    METRIC_WORDS,
    _estimate,
    _fmt,
    _interval,
    detectable_text,
    verdict_sentence,
    verdict_word,
)

PALETTE = ["#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2", "#b279a2", "#ff9da6", "#9d755d"]
CSS = """
body{font:15px/1.5 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;color:#1f2328;margin:0;background:#f6f8fa}
main{max-width:1180px;margin:0 auto;padding:28px 32px;background:#fff;min-height:100vh}
h1{font-size:26px;margin:0 0 4px} h2{font-size:19px;margin:32px 0 10px;border-bottom:1px solid #d0d7de;padding-bottom:4px}
.meta{color:#57606a;font-size:13px} .desc{margin:8px 0 0}
table{border-collapse:collapse;font-size:13px;width:100%;margin:6px 0}
th,td{padding:5px 7px;border-bottom:1px solid #eaeef2;text-align:right;white-space:nowrap}
th{background:#f6f8fa;font-weight:600;white-space:normal;vertical-align:bottom}
.wide{overflow-x:auto} td:first-child,th:first-child{text-align:left}
td.l,th.l{text-align:left} .ci{color:#6e7781;font-size:11px;white-space:normal}
td.wrap{white-space:normal;overflow-wrap:anywhere;min-width:7em}
.verdicts li{margin:6px 0} .better{color:#1a7f37;font-weight:600} .worse{color:#cf222e;font-weight:600}
.no_difference{color:#57606a;font-weight:600} .inconclusive{color:#9a6700;font-weight:600}
.charts{display:flex;flex-wrap:wrap;gap:24px} .chart{flex:1 1 520px} .note{color:#57606a;font-size:12px}
code{background:#f6f8fa;padding:1px 4px;border-radius:4px;font-size:12px}
.ex li{margin:6px 0;font-size:13px}
"""


def _label(name: str, limit: int = 16) -> str:
    """An arm's name for a chart's 130-px margin: cut with an ellipsis past `limit`
    characters (the full name on hover), where the SVG would clip its start."""
    if len(name) <= limit:
        return escape(name)
    return f"<title>{escape(name)}</title>{escape(name[: limit - 1])}…"


def _color(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def latency_chart(arms: list[dict[str, Any]]) -> str:
    """Horizontal box plots: whiskers p5–p95, box p25–p75, line at the median."""
    data = [(a["arm_id"], np.asarray(a.get("latency_ms", ()), dtype=float)) for a in arms]
    measured = [d for _, d in data if d.size]
    if not measured:
        return '<p class="note">No latency measured (every call failed or came from the cache).</p>'
    hi = max(float(np.quantile(d, 0.95)) for d in measured) * 1.08 or 1.0
    width, left, row = 540, 130, 34
    height = row * len(data) + 40
    x = lambda v: left + (width - left - 16) * v / hi  # noqa: E731
    parts = [
        f'<svg viewBox="0 0 {width} {height}" width="100%" role="img" aria-label="latency per arm">'
    ]
    for t in np.linspace(0, hi, 5):
        parts.append(
            f'<line x1="{x(t):.1f}" x2="{x(t):.1f}" y1="8" y2="{height - 28}" stroke="#eaeef2"/>'
            f'<text x="{x(t):.1f}" y="{height - 12}" font-size="11" text-anchor="middle" fill="#57606a">{t:.0f}</text>'
        )
    parts.append(
        f'<text x="{width - 16}" y="{height - 1}" font-size="11" text-anchor="end" fill="#57606a">ms</text>'
    )
    for i, (name, d) in enumerate(data):
        y = 14 + i * row
        parts.append(
            f'<text x="{left - 8}" y="{y + 13}" font-size="12" text-anchor="end">{_label(name)}</text>'
        )
        if not d.size:
            parts.append(
                f'<text x="{left}" y="{y + 13}" font-size="11" fill="#6e7781">not measured</text>'
            )
            continue
        p5, p25, p50, p75, p95 = (float(np.quantile(d, q)) for q in (0.05, 0.25, 0.5, 0.75, 0.95))
        c = _color(i)
        parts.append(
            f'<line x1="{x(p5):.1f}" x2="{x(p95):.1f}" y1="{y + 9}" y2="{y + 9}" stroke="{c}"/>'
            f'<rect x="{x(p25):.1f}" y="{y}" width="{max(x(p75) - x(p25), 1):.1f}" height="18" fill="{c}" fill-opacity=".25" stroke="{c}"/>'
            f'<line x1="{x(p50):.1f}" x2="{x(p50):.1f}" y1="{y}" y2="{y + 18}" stroke="{c}" stroke-width="2.5"/>'
            f"<title>{escape(name)}: p5 {p5:.0f}, p25 {p25:.0f}, median {p50:.0f}, p75 {p75:.0f}, p95 {p95:.0f} ms (n={d.size})</title>"
        )
    parts.append("</svg>")
    return "".join(parts)


def pareto_front(points: list[tuple[str, float, float]]) -> set[str]:
    """Arms no other arm beats on both cost (lower) and score (higher)."""
    front = set()
    for name, cost, score in points:
        dominated = any(
            c2 <= cost and s2 >= score and (c2 < cost or s2 > score) for _, c2, s2 in points
        )
        if not dominated:
            front.add(name)
    return front


def score_cost_chart(arms: list[dict[str, Any]]) -> str:
    points = [
        (a["arm_id"], a["cost_per_1k_cases_usd"] or 0.0, a["mean_score"] or 0.0) for a in arms
    ]
    front = pareto_front(points)
    width, height, left, bottom = 540, 300, 56, 40
    max_cost = max(p[1] for p in points) * 1.15 or 1.0
    x = lambda v: left + (width - left - 20) * v / max_cost  # noqa: E731
    y = lambda v: 12 + (height - bottom - 12) * (1 - v)  # noqa: E731
    parts = [
        f'<svg viewBox="0 0 {width} {height}" width="100%" role="img" aria-label="score against cost">'
    ]
    for t in (0, 0.25, 0.5, 0.75, 1):
        parts.append(
            f'<line x1="{left}" x2="{width - 20}" y1="{y(t):.1f}" y2="{y(t):.1f}" stroke="#eaeef2"/>'
            f'<text x="{left - 6}" y="{y(t) + 4:.1f}" font-size="11" text-anchor="end" fill="#57606a">{t:.2f}</text>'
        )
    for t in np.linspace(0, max_cost, 4):
        parts.append(
            f'<text x="{x(t):.1f}" y="{height - bottom + 16}" font-size="11" text-anchor="middle" fill="#57606a">{t:.3g}</text>'
        )
    parts.append(
        f'<text x="{(width + left) / 2:.0f}" y="{height - 6}" font-size="11" text-anchor="middle" fill="#57606a">cost per 1,000 cases (USD)</text>'
        f'<text x="14" y="{height / 2:.0f}" font-size="11" fill="#57606a" transform="rotate(-90 14 {height / 2:.0f})" text-anchor="middle">mean score</text>'
    )
    ordered = sorted((p for p in points if p[0] in front), key=lambda p: p[1])
    if len(ordered) > 1:
        path = " ".join(f"{x(c):.1f},{y(s):.1f}" for _, c, s in ordered)
        parts.append(
            f'<polyline points="{path}" fill="none" stroke="#1a7f37" stroke-dasharray="5 4" stroke-width="1.5"/>'
        )
    for i, (name, cost, score) in enumerate(points):
        on_front = name in front
        parts.append(
            f'<circle cx="{x(cost):.1f}" cy="{y(score):.1f}" r="{7 if on_front else 5}" fill="{_color(i)}" '
            f'stroke="{"#1a7f37" if on_front else "#fff"}" stroke-width="2"><title>{escape(name)}: score {score:.3f}, '
            f"{cost:.4g} USD per 1,000 cases{' (Pareto front)' if on_front else ''}</title></circle>"
            f'<text x="{x(cost) + 10:.1f}" y="{y(score) - 8 - 12 * (i % 2):.1f}" font-size="12">{escape(name)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


OUTCOME_CELLS = 500  # past this many cases, a cell holds several (the page stays small)


def outcomes_chart(arms: list[dict[str, Any]], baseline: str) -> str:
    rows = [a for a in arms if a.get("case_outcomes")]
    if not rows:
        return ""
    n = max(len(a["case_outcomes"]) for a in rows)
    per = math.ceil(n / OUTCOME_CELLS)  # cases per cell
    cells = math.ceil(n / per)
    cell, left = max(4, min(14, 1000 // max(cells, 1))), 130
    width, height = left + cell * cells + 10, 26 * len(rows) + 24
    colors = {"win": "#2da44e", "tie": "#d0d7de", "loss": "#cf222e"}
    parts = [
        f'<svg viewBox="0 0 {width} {height}" width="100%" role="img" aria-label="per-case outcomes">'
    ]
    for r, a in enumerate(rows):
        yy = 6 + r * 26
        parts.append(
            f'<text x="{left - 8}" y="{yy + 13}" font-size="12" text-anchor="end">{_label(a["arm_id"])}</text>'
        )
        outcomes = a["case_outcomes"]
        for i in range(0, len(outcomes), per):
            group = outcomes[i : i + per]
            counts = {k: sum(o == k for _, o in group) for k in colors}
            if per == 1:
                outcome, title = group[0][1], f"case {group[0][0]}: {group[0][1]}"
            else:
                net = counts["win"] - counts["loss"]
                outcome = "win" if net > 0 else "loss" if net < 0 else "tie"
                title = (
                    f"cases {group[0][0]} … {group[-1][0]}: {counts['win']} wins, "
                    f"{counts['loss']} losses, {counts['tie']} ties"
                )
            parts.append(
                f'<rect x="{left + i // per * cell}" y="{yy}" width="{cell - 1}" height="18" '
                f'fill="{colors[outcome]}"><title>{escape(title)} against {escape(baseline)}'
                "</title></rect>"
            )
    what = "one case" if per == 1 else f"{per} cases in id order (coloured by wins minus losses)"
    parts.append(
        f'<text x="{left}" y="{height - 4}" font-size="11" fill="#57606a">each cell is {what} '
        "(hover for ids): green win, grey tie, red loss against the baseline, repeats averaged</text></svg>"
    )
    return "".join(parts)


def sentence_html(c: dict[str, Any], r: dict[str, Any]) -> str:
    """The verdict sentence with its code spans and its one bold verdict word styled."""
    text = escape(verdict_sentence(c, r["equivalence_margin"], r["ratio_margin"]))
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    return re.sub(
        r"\*\*([^*]+)\*\*", lambda m: f'<span class="{_css(c, m[1])}">{m[1]}</span>', text
    )


def _css(c: dict[str, Any], word: str) -> str:
    if word == "negligible":
        return "no_difference"
    if word == "Caveat":
        return "inconclusive"
    if not c["compared"]:
        return "no_difference" if c.get("label") else "inconclusive"
    return c["verdict"]


def render_html(r: dict[str, Any], db_path: str | None = None) -> str:
    e = escape
    arms, comps, base = r["arms"], r["comparisons"], r["baseline"]
    out = [
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{e(r["experiment"])} — {e(r["run_id"])}</title>'
        f'<meta name="viewport" content="width=device-width,initial-scale=1"><style>{CSS}</style></head><body><main>',
        f'<h1>{e(r["experiment"])}</h1><div class="meta">run <code>{e(r["run_id"])}</code> · {e(r["status"])} · '
        f"started {e(r['started_at'])} UTC · wall time {_fmt(r['wall_time_s'], '.1f', ' s')} · {r['n_cases']} cases · "
        f"baseline <code>{e(str(base))}</code> · abharness {e(r['harness_version'] or '')}"
        + (f" · database <code>{e(db_path)}</code>" if db_path else "")
        + "</div>",
    ]
    if r.get("description"):
        out.append(f'<p class="desc">{e(r["description"])}</p>')
    if comps:
        out.append('<h2>Verdicts</h2><ul class="verdicts">')
        out += [
            f"<li>{sentence_html(c, r)}</li>"
            for c in comps
            if c["metric"] in ("pass_rate", "latency")
        ]
        out.append("</ul>")
    if r.get("not_run"):
        out.append("<h2>Not run</h2><p>These arms could not run here; they get no verdict:</p><ul>")
        out += [f"<li><code>{e(n['arm_id'])}</code>: {e(n['reason'])}</li>" for n in r["not_run"]]
        out.append("</ul>")
    out.append(
        '<h2>Arms</h2><div class="wide"><table class="arms"><tr><th>arm</th><th class="l">model · prompt</th>'
        "<th>cases</th><th>calls</th><th>errors</th><th>pass rate</th><th>mean score</th>"
        "<th>p50 ms</th><th>p90 · p99 ms</th><th>TTFT p50 ms</th><th>tokens in · out</th>"
        "<th>cost USD</th><th>estimate error (tok/call)</th></tr>"
    )
    for a in arms:
        lo, hi = a["pass_rate_ci"]
        pr = _fmt(a["pass_rate"], "pct") + (
            f'<div class="ci">{lo * 100:.1f}–{hi * 100:.1f}</div>' if lo is not None else ""
        )
        plo, phi = a["latency_p50_ci"]
        p50 = _fmt(a["latency_p50_ms"], ".0f") + (
            f'<div class="ci">{plo:.0f}–{phi:.0f}</div>' if plo is not None else ""
        )
        errs = str(a["errors"]) + (
            f'<div class="ci">{e(", ".join(f"{n} {t}" for t, n in a["errors_by_type"].items()))}</div>'
            if a["errors"]
            else ""
        )
        if a["scorer_errors"]:
            errs += f'<div class="ci">{a["scorer_errors"]} scorer errors</div>'
        calls = str(a["n"])
        if a["not_made"]:
            why = ", ".join(f"{n} {t}" for t, n in a["not_made_by_type"].items())
            calls += f'<div class="ci">{a["not_made"]} not made ({e(why)})</div>'
        if a["cache_hits"]:
            calls += f'<div class="ci">{a["cache_hits"]} cached</div>'
        name = (
            f'<b>{e(a["arm_id"])}</b> <span class="ci">baseline</span>'
            if a["arm_id"] == base
            else e(a["arm_id"])
        )
        cost = _fmt(a["cost_usd"], ".4f") + (
            f'<div class="ci">{_fmt(a["cost_per_1k_cases_usd"], ".4f")} per 1k cases</div>'
            if a["cost_per_1k_cases_usd"] is not None
            else ""
        )
        out.append(
            f'<tr><td class="wrap">{name}</td><td class="l wrap">{e(a["provider"])}/{e(a["model"])}'
            f'<div class="ci">{e(a["prompt"])}</div></td>'
            f"<td>{a['n_cases']}</td><td>{calls}</td><td>{errs}</td><td>{pr}</td><td>{_fmt(a['mean_score'], '.3f')}</td>"
            f"<td>{p50}</td><td>{_fmt(a['latency_p90_ms'], '.0f')} · {_fmt(a['latency_p99_ms'], '.0f')}</td>"
            f"<td>{_fmt(a['ttft_p50_ms'], '.0f')}</td><td>{_fmt(a['input_tokens'], ',')} · {_fmt(a['output_tokens'], ',')}</td>"
            f"<td>{cost}</td><td>{_fmt(a['est_error_mean_tokens'], '+.1f')}</td></tr>"
        )
    out.append("</table></div>")
    judged = [a for a in arms if a.get("judge_cost_usd") is not None]
    if judged:
        out.append(
            '<p class="note">Judging cost (llm_judge calls, not in the arm\'s own cost): '
            + "; ".join(f"{e(a['arm_id'])} {a['judge_cost_usd']:.4f} USD" for a in judged)
            + "</p>"
        )
    out.append(
        '<p class="note">Rates are over the calls made, a case\'s repeats averaged first. 95% intervals '
        "under the figures: over case means with a pseudo-case at each end of the scale for pass "
        "rate, order statistics for latency (p90 needs 20 timed calls, p99 200; – below that). A call passes when "
        "it succeeded and every scorer passed; failed calls and scorer errors count as not passed. "
        "Calls never made (cost cap, endpoint stopped) are left out. Cached calls cost nothing and "
        "are left out of latency.</p>"
    )
    if comps:
        out.append(
            f'<h2>Against the baseline <code>{e(str(base))}</code></h2><table><tr><th>arm</th><th class="l">metric</th>'
            "<th>estimate</th><th>95% CI</th><th>cases</th><th>wins</th><th>ties</th><th>losses</th><th>p</th>"
            '<th>p (Holm)</th><th class="l">verdict</th><th>detectable</th></tr>'
        )
        for c in comps:
            word = verdict_word(c) + (" (negligible)" if c["negligible"] else "")
            mde = e(detectable_text(c))
            out.append(
                f'<tr><td>{e(c["arm_id"])}</td><td class="l">{METRIC_WORDS[c["metric"]]}</td>'
                f"<td>{e(_estimate(c))}</td><td>{e(_interval(c))}</td><td>{c['n_pairs']}</td>"
                f"<td>{c['wins']}</td><td>{c['ties']}</td><td>{c['losses']}</td>"
                f"<td>{_fmt(c['p_value'], '.3g')}</td><td>{_fmt(c['p_adjusted'], '.3g')}</td>"
                f'<td class="l"><span class="{_css(c, word)}">{e(word)}</span></td><td>{mde}</td></tr>'
            )
        out.append("</table>")
        out += [
            f'<p class="note">{sentence_html(c, r)}</p>'
            for c in comps
            if c["metric"] in ("mean_score", "cost")
        ]
        out.append(
            '<p class="note">'
            + e(
                METHOD_NOTE.format(
                    margin=r["equivalence_margin"] * 100, ratio=r["ratio_margin"] * 100
                )
            )
            + "</p>"
        )
    out.append(
        '<div class="charts"><div class="chart"><h2>Latency per arm</h2>'
        + latency_chart(arms)
        + '<p class="note">Box: 25th–75th percentile, thick line: median, whiskers: 5th–95th. Cache hits excluded.</p></div>'
        + '<div class="chart"><h2>Score against cost</h2>'
        + score_cost_chart(arms)
        + '<p class="note">Larger, green-ringed points are on the Pareto front: no other arm scores higher for less.</p></div></div>'
    )
    chart = outcomes_chart(arms, str(base))
    if chart:
        out.append("<h2>Per case against the baseline</h2>" + chart)
    for arm_id, examples in r.get("examples", {}).items():
        if examples:
            out.append(
                f'<h2>Where <code>{e(arm_id)}</code> and <code>{e(str(base))}</code> differ</h2><ul class="ex">'
            )
            for x in examples:
                vars_ = ", ".join(f"{k}={v!r}" for k, v in x["vars"].items())
                vars_ = f" ({vars_})" if vars_ else ""
                out.append(
                    f"<li>case <code>{e(x['case_id'])}</code>{e(vars_)}: <b>{e(arm_id)}</b> "
                    f"{'passed' if x['arm_passed'] else 'failed'} with <code>{e(str(x['arm_response'])[:200])}</code>; "
                    f"<b>{e(str(base))}</b> {'passed' if x['baseline_passed'] else 'failed'} with "
                    f"<code>{e(str(x['baseline_response'])[:200])}</code></li>"
                )
            out.append("</ul>")
    out.append("</main></body></html>")
    return "\n".join(out)
