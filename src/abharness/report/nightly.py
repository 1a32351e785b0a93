"""The nightly index page: one line per experiment and gate, links to each run's
report, and a trend of the last 30 nights per arm (pass rate with its 95% interval,
p50 latency, cost per 1,000 cases). One self-contained HTML file, like the reports."""

from __future__ import annotations

from dataclasses import dataclass, field
from html import escape

import numpy as np
import pandas as pd

from .compare import RunComparison
from .html import CSS, PALETTE
from .stats import mean_ci


@dataclass
class NightEntry:
    """One experiment's night: its run, its report, and the comparison (if any)."""

    spec: str
    experiment: str | None = None
    run_id: str | None = None
    report_href: str | None = None
    previous: str | None = None
    comparison: RunComparison | None = None
    problems: list[str] = field(default_factory=list)  # invalid spec, error rate, not merged
    note: str | None = None  # e.g. "first night: nothing to compare with"
    batched: list[str] = field(default_factory=list)  # arms run in batch mode (SPEC §13)

    @property
    def notes(self) -> list[str]:
        """What the page says besides the gates and the problems."""
        out = [self.note] if self.note else []
        if self.batched:
            out.append(
                f"batch mode: {', '.join(self.batched)} ran through the provider's batch API at "
                "the batch price; latency is not measured for batch calls, so their latency "
                "gates are not evaluated"
            )
        return out


def pass_rate_band(pass_rate: float, cases: int) -> tuple[float, float]:
    """An approximate 95% band for a night's pass rate from its case count alone (the
    trend view stores no per-case values): the per-arm interval of a report whose
    cases each passed or failed."""
    k = round(pass_rate * cases)
    low, high = mean_ci(np.array([1.0] * k + [0.0] * (cases - k)), 0.0, 1.0)
    return (low or 0.0), (high or 1.0)


def _line_chart(frame: pd.DataFrame, column: str, label: str, fmt: str, band: bool = False) -> str:
    width, height, left, right, top, bottom = 360, 170, 52, 10, 14, 26
    runs = list(dict.fromkeys(frame["run_id"]))
    values = frame[column].dropna()
    if values.empty or len(runs) == 0:
        return f'<div class="chart"><h3>{escape(label)}</h3><p class="note">not measured</p></div>'
    lows = [frame["band_low"].min()] if band else []
    highs = [frame["band_high"].max()] if band else []
    y_min = float(min([values.min(), *lows]))
    y_max = float(max([values.max(), *highs]))
    if y_max == y_min:
        y_min, y_max = y_min - 1, y_max + 1

    def x(i: int) -> float:
        return left + (width - left - right) * (i / max(len(runs) - 1, 1))

    def y(v: float) -> float:
        return top + (height - top - bottom) * (1 - (v - y_min) / (y_max - y_min))

    parts = [
        f'<div class="chart"><h3>{escape(label)}</h3><svg viewBox="0 0 {width} {height}" width="100%" '
        f'role="img" aria-label="{escape(label)}">',
        f'<text x="{left - 6}" y="{y(y_max) + 4:.1f}" font-size="10" text-anchor="end">{format(y_max, fmt)}</text>',
        f'<text x="{left - 6}" y="{y(y_min) + 4:.1f}" font-size="10" text-anchor="end">{format(y_min, fmt)}</text>',
        f'<text x="{left}" y="{height - 6}" font-size="10" fill="#57606a">{len(runs)} night(s), oldest left</text>',
    ]
    position = {r: i for i, r in enumerate(runs)}
    for n, (arm, rows) in enumerate(frame.groupby("arm_id", sort=False)):
        color = PALETTE[n % len(PALETTE)]
        rows = rows.dropna(subset=[column])
        if band and len(rows):
            upper = " ".join(
                f"{x(position[r]):.1f},{y(h):.1f}"
                for r, h in zip(rows["run_id"], rows["band_high"], strict=True)
            )
            lower = " ".join(
                f"{x(position[r]):.1f},{y(lo):.1f}"
                for r, lo in reversed(list(zip(rows["run_id"], rows["band_low"], strict=True)))
            )
            parts.append(f'<polygon points="{upper} {lower}" fill="{color}" opacity="0.15"/>')
        points = " ".join(
            f"{x(position[r]):.1f},{y(v):.1f}"
            for r, v in zip(rows["run_id"], rows[column], strict=True)
        )
        parts.append(f'<polyline points="{points}" fill="none" stroke="{color}" stroke-width="2"/>')
        for r, v, night in zip(rows["run_id"], rows[column], rows["night"], strict=True):
            parts.append(
                f'<circle cx="{x(position[r]):.1f}" cy="{y(v):.1f}" r="3" fill="{color}">'
                f"<title>{escape(str(arm))} {night}: {format(v, fmt)}</title></circle>"
            )
    parts.append("</svg></div>")
    return "".join(parts)


def render_index(night: str, entries: list[NightEntry], trend: pd.DataFrame) -> str:
    e = escape
    out = [
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>nightly {e(night)}</title>'
        f'<meta name="viewport" content="width=device-width,initial-scale=1"><style>{CSS}'
        ".charts3{display:grid;grid-template-columns:repeat(3,1fr);gap:14px} h3{font-size:14px;margin:4px 0}"
        "</style></head><body><main>",
        f"<h1>Nightly {e(night)}</h1>",
        '<table><tr><th class="l">experiment</th><th class="l">run</th><th class="l">against</th>'
        '<th class="l">arm</th><th class="l">gate</th><th>threshold</th><th class="l">value</th>'
        '<th class="l">catches (80% power)</th><th class="l">result</th></tr>',
    ]
    for entry in entries:
        name = e(entry.experiment or entry.spec)
        run = (
            f'<a href="{e(entry.report_href)}">{e(entry.run_id or "")}</a>'
            if entry.report_href
            else e(entry.run_id or "–")
        )
        prefix = f'<td class="l">{name}</td><td class="l">{run}</td><td class="l">{e(entry.previous or "–")}</td>'
        lines = []
        if entry.comparison is not None:
            for g in entry.comparison.gates:
                css = {"FAIL": "worse", "pass": "better"}.get(g.status, "inconclusive")
                small = ' class="l wrap inconclusive"' if g.warning else ' class="l wrap"'
                lines.append(
                    f'<td class="l">{e(g.arm_id)}</td><td class="l">{e(g.gate)}</td><td>{e(g.threshold)}</td>'
                    f'<td class="l wrap">{e(g.value)}</td><td{small}>{e(g.detectable or "–")}</td>'
                    f'<td class="l"><span class="{css}">{e(g.status)}</span></td>'
                )
        warnings = entry.comparison.warnings if entry.comparison is not None else []
        for text in entry.notes + entry.problems + warnings:
            css = "worse" if text in entry.problems else "inconclusive"
            text = f"warning: {text}" if text in warnings else text
            lines.append(
                f'<td class="l wrap" colspan="6"><span class="{css}">{e(text)}</span></td>'
            )
        out += [
            f"<tr>{prefix}{line}</tr>"
            for line in lines or ['<td class="l" colspan="6">no gates</td>']
        ]
    out.append("</table>")
    for experiment, rows in trend.groupby("experiment", sort=True) if len(trend) else []:
        rows = rows.copy()
        bands = [
            pass_rate_band(p, int(c)) for p, c in zip(rows["pass_rate"], rows["cases"], strict=True)
        ]
        rows["band_low"] = [b[0] for b in bands]
        rows["band_high"] = [b[1] for b in bands]
        arms = list(dict.fromkeys(rows["arm_id"]))
        legend = " ".join(
            f'<span style="color:{PALETTE[i % len(PALETTE)]}">■</span> {e(str(a))}'
            for i, a in enumerate(arms)
        )
        out.append(
            f"<h2>{e(str(experiment))}: the last {rows['run_id'].nunique()} nightly runs</h2>"
            f'<p class="note">{legend}</p><div class="charts3">'
            + _line_chart(
                rows, "pass_rate", "pass rate (band: 95% interval over cases)", ".2f", band=True
            )
            + _line_chart(rows, "latency_p50_ms", "p50 latency, ms", ".0f")
            + _line_chart(rows, "cost_per_1k_cases_usd", "cost per 1,000 cases, USD", ".4g")
            + "</div>"
        )
    out.append("</main></body></html>")
    return "\n".join(out)


def summary_lines(entries: list[NightEntry]) -> list[str]:
    """Plain lines for the end of the console output: every failing gate, with figures."""
    lines = []
    for entry in entries:
        name = entry.experiment or entry.spec
        for text in entry.problems:
            lines.append(f"{name}: {text}")
        if entry.comparison is None:
            continue
        for warning in entry.comparison.warnings:
            lines.append(f"warning: {name} {warning}")
        for g in entry.comparison.not_evaluated:
            lines.append(f"NOT EVALUATED {name} {g.arm_id} {g.gate}: {g.value}")
        for g in entry.comparison.failed:
            lines.append(
                f"FAIL {name} {g.arm_id} {g.gate} {g.threshold}: {g.value} "
                f"(run {entry.run_id} against {entry.previous})"
            )
    return lines
