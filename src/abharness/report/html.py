"""The HTML report: one self-contained file (inline CSS and SVG, no external URL).

It shows what the Markdown shows, plus three charts: latency distribution per arm,
score against cost with the Pareto front marked, and per-case wins/losses against
the baseline.
"""

from __future__ import annotations

import math
from html import escape
from typing import Any

import numpy as np

from . import words as w
from .figures import ArmFigures, ComparisonFigures, Report

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
.ex li{margin:6px 0;font-size:13px} .lead{font-size:15px;margin:14px 0}
form.filters{display:flex;flex-wrap:wrap;gap:8px;align-items:center;margin:10px 0;font-size:13px}
form.filters input[type=search]{min-width:18em;padding:3px 6px}
table.cases td{vertical-align:top} td.vars{white-space:normal;max-width:28em;text-align:left;font-size:12px}
.side{display:grid;grid-template-columns:repeat(var(--n,2),minmax(0,1fr));gap:12px;margin:8px 0 18px}
.call{border:1px solid #d0d7de;border-radius:6px;padding:8px 10px;font-size:13px;min-width:0}
.call h4{margin:0 0 6px;font-size:14px}
pre{white-space:pre-wrap;overflow-wrap:anywhere;background:#f6f8fa;padding:6px 8px;border-radius:4px;margin:4px 0;font-size:12px;max-height:28em;overflow:auto}
del{background:#ffebe9;color:#82071e;text-decoration:line-through} ins{background:#dafbe1;color:#116329;text-decoration:none}
dl.facts{display:grid;grid-template-columns:max-content 1fr;gap:2px 10px;margin:6px 0;font-size:12px} dl.facts dt{color:#57606a}
.pass{color:#1a7f37;font-weight:600} .fail{color:#cf222e;font-weight:600}
"""


def _label(name: str, limit: int = 16) -> str:
    """An arm's name for a chart's 130-px margin: cut with an ellipsis past `limit`
    characters (the full name on hover), where the SVG would clip its start."""
    if len(name) <= limit:
        return escape(name)
    return f"<title>{escape(name)}</title>{escape(name[: limit - 1])}…"


def _color(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def latency_chart(arms: list[ArmFigures]) -> str:
    """Horizontal box plots: whiskers p5–p95, box p25–p75, line at the median."""
    data = [
        (a.arm_id, np.asarray(a.latency_ms if a.latency_ms is not None else (), dtype=float))
        for a in arms
    ]
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


def score_cost_chart(arms: list[ArmFigures]) -> str:
    points = [(a.arm_id, a.cost_per_1k_cases_usd or 0.0, a.mean_score or 0.0) for a in arms]
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


def outcomes_chart(arms: list[ArmFigures], baseline: str) -> str:
    rows = [a for a in arms if a.case_outcomes]
    if not rows:
        return ""
    n = max(len(a.case_outcomes or ()) for a in rows)
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
            f'<text x="{left - 8}" y="{yy + 13}" font-size="12" text-anchor="end">{_label(a.arm_id)}</text>'
        )
        outcomes = a.case_outcomes or []
        for i in range(0, len(outcomes), per):
            group = outcomes[i : i + per]
            counts = {k: sum(o == k for _, o in group) for k in colors}
            if per == 1:
                outcome, title = group[0][1], f"case {group[0][0]}: {group[0][1]}"
            else:
                net = counts["win"] - counts["loss"]
                outcome = "win" if net > 0 else "loss" if net < 0 else "tie"
                tally = w.tally_text(counts["win"], counts["tie"], counts["loss"])
                title = f"cases {group[0][0]} … {group[-1][0]}: {tally}"
            parts.append(
                f'<rect x="{left + i // per * cell}" y="{yy}" width="{cell - 1}" height="18" '
                f'fill="{colors[outcome]}"><title>{escape(title)} against {escape(baseline)}'
                "</title></rect>"
            )
    what = "one case" if per == 1 else f"{per} cases in id order (coloured by wins minus losses)"
    parts.append(
        f'<text x="{left}" y="{height - 4}" font-size="11" fill="#57606a">each cell is {what} '
        f"(hover for ids): {w.OUTCOMES_NOTE}</text></svg>"
    )
    return "".join(parts)


def sentence_html(c: ComparisonFigures, r: Report) -> str:
    """The verdict sentence with its code spans and its bold words styled."""
    return w.marked_html(
        w.verdict_sentence(c, r.equivalence_margin, r.ratio_margin), w.sentence_css(c)
    )


def table_html(headers: list[str], rows: list[list[w.Cell]], css: str = "") -> str:
    """A table of `words` cells; the first column, and the wrapping ones, read left."""
    head = "".join(
        f"<th{' class=l' if i < 2 else ''}>{escape(h)}</th>" for i, h in enumerate(headers)
    )
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="l wrap">{w.cell_html(c)}</td>' if i < 2 else f"<td>{w.cell_html(c)}</td>"
            for i, c in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    return f'<div class="wide"><table class="{css}"><tr>{head}</tr>{body}</table></div>'


def render_html(r: Report, db_path: str | None = None, interactive: str = "") -> str:
    """The self-contained page; `interactive` is the case table's section (`cases`)."""
    e = escape
    base = r.baseline
    facts = (
        f"run <code>{e(r.run_id)}</code> · {e(r.status)} · started {e(r.started_at)} UTC · "
        f"wall time {w.fmt(r.wall_time_s, '.1f', ' s')} · {r.n_cases} cases · baseline "
        f"<code>{e(str(base))}</code> · abharness {e(r.harness_version or '')}"
    )
    out = [
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{e(r.experiment)} — {e(r.run_id)}</title>'
        f'<meta name="viewport" content="width=device-width,initial-scale=1"><style>{CSS}</style></head><body><main>',
        f'<h1>{e(r.experiment)}</h1><div class="meta">{facts}'
        + (f" · database <code>{e(db_path)}</code>" if db_path else "")
        + "</div>",
    ]
    if r.description:
        out.append(f'<p class="desc">{e(r.description)}</p>')
    out.append(report_body(r))
    out.append(interactive)
    out.append("</main></body></html>")
    return "\n".join(out)


def report_body(r: Report) -> str:
    """Everything under the title: the part the view's run page shares."""
    e = escape
    base = r.baseline
    out = []
    missing = w.completeness_sentence(r.completeness)
    if missing:
        out.append(f'<p class="lead incomplete">{w.marked_html(missing, lambda _: "worse")}</p>')
    usage = w.usage_sentences(r)
    if usage:
        out.append("<h2>Token counts</h2><ul>")
        out += [f"<li>{w.marked_html(s, lambda _: 'inconclusive')}</li>" for s in usage]
        out.append("</ul>")
    batch = w.batch_sentences(r)
    if batch:
        out.append("<h2>Batch mode</h2><ul>")
        out += [f"<li>{w.marked_html(s)}</li>" for s in batch]
        out.append("</ul>")
    if r.comparisons:
        out.append('<h2>Verdicts</h2><ul class="verdicts">')
        out += [f"<li>{sentence_html(c, r)}</li>" for c in r.verdicts()]
        out.append("</ul>")
    if r.kind == "online":
        out.append(f"<h2>Online: each arm against <code>{e(str(base))}</code>, by subject</h2>")
        out.append(f"<p>{e(w.ONLINE_NOTE)}</p>")
        out.append(table_html(w.ONLINE_ARM_HEADERS, [w.online_arm_row(a) for a in r.online_arms]))
        if r.online:
            out.append(table_html(w.ONLINE_HEADERS, [w.online_row(c) for c in r.online]))
            out.append('<ul class="verdicts">')
            out += [
                f"<li>{w.marked_html(w.online_sentence(c), w.sentence_css(c))}</li>"
                for c in r.online
            ]
            out.append("</ul>")
        else:
            out.append(f"<p>No comparison: {e(str(r.online_note))}.</p>")
    if r.not_run:
        out.append(f"<h2>Not run</h2><p>{e(w.NOT_RUN_NOTE)}</p><ul>")
        out += [f"<li><code>{e(n.arm_id)}</code>: {e(n.reason)}</li>" for n in r.not_run]
        out.append("</ul>")
    out.append("<h2>Arms</h2>")
    out.append(table_html(w.ARM_HEADERS, [w.arm_row(a, base) for a in r.arms], "arms"))
    judging = w.judging_cost(r)
    if judging:
        out.append(f'<p class="note">{e(judging)}</p>')
    notes = w.ARMS_NOTE + (" " + w.CACHE_NOTE if any(a.cache_hits for a in r.arms) else "")
    out.append(f'<p class="note">{w.marked_html(notes)}</p>')
    composite = [a for a in r.arms if a.parts]
    if composite:
        out.append("<h2>Composite arms</h2><ul>")
        for a in composite:
            texts = [w.parts_text(a), w.route_sentence(a)]
            texts += [w.member_sentence(a, m) for m in a.members]
            out += [f"<li>{w.marked_html(t, lambda _: 'better')}</li>" for t in texts if t]
        out.append("</ul>")
        for a in composite:
            if a.members:
                out.append(f"<p>Panel <code>{e(a.arm_id)}</code> against each of its members:</p>")
                out.append(table_html(*w.member_table(a)))
    if r.comparisons:
        out.append(f"<h2>Against the baseline <code>{e(str(base))}</code></h2>")
        out.append(table_html(w.COMPARISON_HEADERS, [w.comparison_row(c) for c in r.comparisons]))
        out += [
            f'<p class="note">{sentence_html(c, r)}</p>'
            for c in r.comparisons
            if c.metric in ("mean_score", "cost")
        ]
        out.append(f'<p class="note">{e(w.method_note(r))}</p>')
    headers, rows = w.flakiness_table(r)
    if rows:
        out.append("<h2>Flaky cases</h2>" + table_html(headers, rows))
        out += [
            f"<p>{w.marked_html(s, lambda _: 'inconclusive')}</p>"
            for a in r.arms
            if (s := w.flakiness_sentence(a))
        ]
        out.append(f'<p class="note">{e(w.FLAKINESS_NOTE)}</p>')
    out.append(
        '<div class="charts"><div class="chart"><h2>Latency per arm</h2>'
        + latency_chart(r.arms)
        + '<p class="note">Box: 25th–75th percentile, thick line: median, whiskers: 5th–95th. Cache hits excluded.</p></div>'
        + '<div class="chart"><h2>Score against cost</h2>'
        + score_cost_chart(r.arms)
        + '<p class="note">Larger, green-ringed points are on the Pareto front: no other arm scores higher for less.</p></div></div>'
    )
    chart = outcomes_chart(r.arms, str(base))
    if chart:
        out.append("<h2>Per case against the baseline</h2>" + chart)
    for arm_id, examples in r.examples.items():
        if examples:
            out.append(
                f"<h2>Where <code>{e(arm_id)}</code> and <code>{e(str(base))}</code> differ</h2>"
                '<ul class="ex">'
            )
            out += [
                f"<li>{w.marked_html(w.example_sentence(arm_id, str(base), x))}</li>"
                for x in examples
            ]
            out.append("</ul>")
    return "\n".join(out)


def interactive_js() -> str:
    """The case table's script (report/interactive.js): plain DOM, no library, nothing
    fetched; it sets text, never HTML, so no output can become markup."""
    from importlib.resources import files

    return files("abharness.report").joinpath("interactive.js").read_text(encoding="utf-8")


FILTER_WORDS = {
    "all": "all cases",
    "differing": "differing",
    "regressions": "regressions (the arm passes less)",
    "improvements": "improvements",
    "errors": "with errors",
    "flaky": "flaky (repeats disagree)",
}


def cases_section(data: dict[str, Any] | None, run_id: str, db_path: str | None) -> str:
    """The interactive case table and side-by-side case view, from inline JSON."""
    if data is None:
        return ""
    from .cases import inline_json

    e = escape
    arms = "".join(f'<option value="{e(a)}">{e(a)}</option>' for a in data["arms"])
    filters = "".join(f'<option value="{k}">{e(v)}</option>' for k, v in FILTER_WORDS.items())
    sorts = "".join(
        f'<option value="{k}">{e(v)}</option>'
        for k, v in (
            ("case", "case"),
            ("-case", "case, last first"),
            ("diff", "arm − baseline, worst first"),
            ("-diff", "arm − baseline, best first"),
        )
    )
    where = f" --db {db_path}" if db_path else ""
    note = (
        f"All {data['total']:,} cases. "
        if data["complete"]
        else f"This page embeds {data['embedded']:,} of {data['total']:,} cases (those that differ "
        f"between an arm and the baseline); <code>abharness view{e(where)}</code> shows every case "
        f"at /runs/{e(run_id)}. "
    )
    heads = "".join(
        f"<th{' class=l' if i < 2 else ''}>{h}</th>"
        for i, h in enumerate(
            [
                "case",
                "variables",
                "baseline passes",
                "baseline score",
                "arm passes",
                "arm score",
                "arm − baseline",
                "baseline p50 ms",
                "arm p50 ms",
            ]  # fmt: skip
        )
    )
    return (
        f'<h2 id="cases">Cases</h2><p class="note">{note}Each row pairs a case\'s calls in the '
        f"arm with the baseline's <code>{e(data['baseline'])}</code>; click a case to see its "
        "outputs side by side.</p>"
        '<form class="filters" onsubmit="return false">'
        f'<label>arm <select id="abh-arm">{arms}</select></label>'
        f'<label>show <select id="abh-filter">{filters}</select></label>'
        '<input type="search" id="abh-q" placeholder="search variables and outputs">'
        f'<label>sort <select id="abh-sort">{sorts}</select></label></form>'
        f'<div class="wide"><table class="cases"><thead><tr>{heads}</tr></thead>'
        '<tbody id="abh-rows"></tbody></table></div>'
        '<p class="note"><button id="abh-prev" type="button">← previous</button> '
        '<span id="abh-count"></span> <button id="abh-next" type="button">next →</button></p>'
        '<section id="abh-case" hidden></section>'
        '<noscript><p class="note">The case table needs JavaScript; '
        "<code>abharness view</code> serves it without.</p></noscript>"
        f'<script type="application/json" id="abh-cases">{inline_json(data)}</script>'
        f"<script>{interactive_js()}</script>"
    )
