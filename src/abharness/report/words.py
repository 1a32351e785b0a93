"""Every word the report says, in one place: number formats, the verdict sentences, the
notes under tables, and the tables themselves (headers and cells), for the typed
figures of `figures`. Markdown, the HTML report and `abharness view` render these
strings and cells; none of them spells a sentence or formats a figure of its own.

Sentences carry two marks: `code` and **strong** (the verdict word, a caveat). Markdown
prints them as they are; `marked_html` escapes the text and turns the marks into tags.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from html import escape
from typing import Any

from .figures import (
    ArmFigures,
    ComparisonFigures,
    Completeness,
    Example,
    MemberFigures,
    OnlineArmFigures,
    Report,
)
from .limits import MIN_CALLS_FOR


def fmt(value: Any, spec: str = "", suffix: str = "") -> str:
    """A figure as text; '–' when it is missing."""
    if value is None:
        return "–"
    if spec == "pct":
        return f"{value * 100:.1f}%"
    if spec == "," and float(value).is_integer():
        value = int(value)
    return f"{value:{spec}}{suffix}"


def plural(n: int, word: str) -> str:
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def tally_text(wins: int, ties: int, losses: int) -> str:
    """ "1 win, 3 ties, 0 losses": the cases' own directions, in words."""
    return f"{plural(wins, 'win')}, {plural(ties, 'tie')}, {losses:,} loss{'' if losses == 1 else 'es'}"


def counts(by_type: dict[str, int]) -> str:
    """'3 timeout, 1 server'."""
    return ", ".join(f"{n} {t}" for t, n in by_type.items())


METRIC_WORDS = {
    "pass_rate": "pass rate",
    "mean_score": "mean score",
    "latency": "latency",
    "cost": "cost",
    "feedback": "feedback score",
}
RATIO_WORDS = {
    ("latency", "better"): "faster",
    ("latency", "worse"): "slower",
    ("cost", "better"): "cheaper",
    ("cost", "worse"): "dearer",
}


# -- one comparison -------------------------------------------------------------------


def verdict_word(c: ComparisonFigures) -> str:
    if not c.compared:
        return c.label or "not compared"
    return RATIO_WORDS.get((c.metric, c.verdict), c.verdict.replace("_", " "))


def verdict_css(c: ComparisonFigures) -> str:
    """The verdict's colour class: better, worse, no_difference or inconclusive."""
    if not c.compared:
        return "no_difference" if c.label else "inconclusive"
    return c.verdict


def effect_text(c: ComparisonFigures) -> str:
    """The estimate and its 95% interval: points for differences, × for ratios."""
    if not c.compared:
        return "–"
    assert c.diff is not None and c.ci_low is not None and c.ci_high is not None
    if c.scale == "ratio":
        return f"×{c.diff:.2f} (95% CI {c.ci_low:.2f} to {c.ci_high:.2f})"
    return f"{c.diff * 100:+.1f} points (95% CI {c.ci_low * 100:+.1f} to {c.ci_high * 100:+.1f})"


def estimate_text(c: ComparisonFigures) -> str:
    if not c.compared:
        return "–"
    assert c.diff is not None
    return f"×{c.diff:.2f}" if c.scale == "ratio" else f"{c.diff * 100:+.1f} pts"


def interval_text(c: ComparisonFigures) -> str:
    if not c.compared:
        return str(c.reason)
    assert c.ci_low is not None and c.ci_high is not None
    if c.scale == "ratio":
        return f"{c.ci_low:.2f} to {c.ci_high:.2f}"
    return f"{c.ci_low * 100:+.1f} to {c.ci_high * 100:+.1f}"


def excluded_text(c: ComparisonFigures) -> str:
    if not c.excluded:
        return ""
    n = sum(c.excluded.values())
    why = ", ".join(f"{k}: {v}" for k, v in c.excluded.items())
    return f" {n} case{'s' if n != 1 else ''} left out ({why})."


def verdict_sentence(c: ComparisonFigures, margin: float, ratio_margin: float = 0.1) -> str:
    """The comparison in words, saying when the sample is too small to tell and why."""
    arm, base, metric = c.arm_id, c.baseline, METRIC_WORDS[c.metric]
    word = verdict_word(c)
    if not c.compared:
        return f"`{arm}` against `{base}` on {metric}: **{word}**: {c.reason}.{excluded_text(c)}"
    unit = "cases" if c.n_units == c.n_pairs else f"cases in {c.n_units} clusters"
    tally = f"{tally_text(c.wins, c.ties, c.losses)} over {c.n_pairs} {unit}"
    p = f"p = {c.p_adjusted:.2g} after Holm"
    effect = effect_text(c)
    ratio = c.scale == "ratio"
    band = f"±{ratio_margin * 100:.0f}%" if ratio else f"±{margin * 100:.0f} points"
    if c.verdict in ("better", "worse"):
        text = f"`{arm}` is **{word}** than `{base}` on {metric}: {effect}; {tally}; {p}."
        if c.negligible:
            text += f" The whole 90% interval is within {band}: the difference is **negligible**."
    elif c.verdict == "no_difference":
        assert c.ci90_low is not None and c.ci90_high is not None
        if ratio:
            lo, hi = f"×{c.ci90_low:.2f}", f"×{c.ci90_high:.2f}"
        else:
            lo, hi = f"{c.ci90_low * 100:+.1f}", f"{c.ci90_high * 100:+.1f}"
        text = (
            f"`{arm}` and `{base}` show **no difference** on {metric}: the 90% interval "
            f"({lo} to {hi}) lies within {band}; {effect}; {tally}."
        )
    else:
        text = f"`{arm}` against `{base}` on {metric} is **inconclusive**: {effect}; {tally}; {p}."
        if c.reason:
            text += f" Not called: {c.reason}."
        text += power_text(c, band)
    for caveat in c.caveats:
        text += f" **Caveat**: {caveat}."
    return text + excluded_text(c)


def power_text(c: ComparisonFigures, band: str) -> str:
    """What these cases could detect and, when more would help, how many: a sentence
    for an inconclusive verdict. Says when no test could reject at all."""
    n, units = c.n_pairs, c.n_units
    least = c.min_units
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
    ratio = c.scale == "ratio"
    if c.mde is None:
        text = f" With {n} cases no difference that can exist here would be detected reliably"
    elif ratio:
        text = (
            f" With {n} cases only a ratio beyond ×{c.mde:.2f} (or below ×{1 / c.mde:.2f}) "
            "would be detected reliably"
        )
    else:
        text = (
            f" With {n} cases only a difference of about ±{c.mde * 100:.0f} points would be "
            "detected reliably"
        )
    text += " (80% power)"
    if c.n_needed:
        lo, hi = c.n_needed_range or (c.n_needed, c.n_needed)
        spread = f" ({lo:,}–{hi:,} within the spread's 90% interval)" if lo != hi else ""
        goal = (
            f"to show a difference within {band}"
            if c.n_needed_goal == "equivalence"
            else f"to detect a difference of {band.lstrip('±')}"
        )
        text += f"; about {c.n_needed:,} cases{spread} would be needed {goal}"
    return text + "."


def detectable_text(c: ComparisonFigures) -> str:
    """The table's "detectable (80% power)" cell."""
    least = c.min_units
    if c.compared and least is not None and c.n_units < least:
        return f"none (< {least} units)"
    if c.mde is None:
        return "–"
    if c.scale == "ratio":
        return f"×{c.mde:.2f}"
    return f"±{c.mde * 100:.0f} pts"


METHOD_NOTE = (
    "The case is the unit: a case's repeats are averaged first. Pass rate and mean score: "
    "difference with an adjusted interval (two pseudo-cases, cluster-robust, Student's t), "
    "sign-flip permutation test (exact McNemar with one call per case), Holm-adjusted across "
    "arms; no difference means the 90% interval lies within ±{margin:.0f} points (TOST). "
    "Latency (median per case) and cost (per call): geometric mean of per-case ratios, "
    "Student's t interval on their logs; no difference within ±{ratio:.0f}% (from 5 cases)."
)


def method_note(r: Report) -> str:
    return METHOD_NOTE.format(margin=r.equivalence_margin * 100, ratio=r.ratio_margin * 100)


ARMS_NOTE = (
    "Rates are over the calls made, averaged per case first (a case's repeats are one unit). "
    "95% intervals under the figures: over case means with a pseudo-case at each end of the "
    "scale for pass rate, order statistics for latency. A call passes when it succeeded and "
    "every scorer passed; failed calls and scorer errors count as not passed, score 0. Calls "
    f"never made (cost cap, endpoint stopped) are left out. p90 needs {MIN_CALLS_FOR[0.9]} "
    f"timed calls and p99 {MIN_CALLS_FOR[0.99]}; below that they are not estimable (–)."
)
CACHE_NOTE = (
    "Cached calls were answered from the response cache: they cost nothing and are left out "
    "of latency and TTFT (run with `--no-cache` to measure them)."
)
NOT_RUN_NOTE = "These arms could not run here; they get no verdict:"
OUTCOMES_NOTE = "green win, grey tie, red loss against the baseline, repeats averaged"


def judging_cost(r: Report) -> str | None:
    judged = [a for a in r.arms if a.judge_cost_usd is not None]
    if not judged:
        return None
    return "Judging cost (llm_judge calls, not in the arm's own cost): " + "; ".join(
        f"{a.arm_id} {a.judge_cost_usd:.4f} USD" for a in judged
    )


def run_facts(r: Report) -> list[str]:
    """The lines under the report's title."""
    return [
        f"status: **{r.status}**, started {r.started_at} UTC, wall time "
        f"{fmt(r.wall_time_s, '.1f', ' s')}",
        f"{r.n_cases} cases; baseline `{r.baseline}`; spec hash `{r.spec_hash}`; "
        f"abharness {r.harness_version}",
    ]


# -- what is missing: a run that did not finish, token counts not reported ------------


def completeness_sentence(c: Completeness | None) -> str | None:
    """Said first when a run is not complete: what is missing, why, and how to finish it."""
    if c is None or c.complete:
        return None
    missing = c.never_made + c.unfinished
    parts = []
    if c.never_made:
        parts.append(f"{plural(c.never_made, 'call')} never made")
    if c.unfinished:
        parts.append(f"{plural(c.unfinished, 'call')} left unfinished")
    why = f" ({counts(c.by_type)})" if c.by_type else ""
    text = f"This run is **{c.status}**"
    text += f": {' and '.join(parts)}{why}." if missing else "."
    if missing:
        text += (
            " They are missing data, not errors: the figures below leave them out, so they "
            "cover fewer cases than planned."
        )
    if c.resume:
        text += f" Finish it with `{c.resume}`."
    return text


def usage_sentences(r: Report) -> list[str]:
    """One sentence per arm whose token counts the server did not report, or a proxy
    estimated, with the fix."""
    out = []
    for a in r.arms:
        answered = a.ok - a.cache_hits
        if a.usage_missing:
            out.append(
                f"`{a.arm_id}`: the server reported **no token counts** for "
                f"{a.usage_missing} of {answered} answered calls: its tokens are not shown "
                "and its cost is unknown unless the arm is priced at 0. Streamed usage needs "
                "the server's `stream_options` support (`include_usage`); `stream: false` on "
                "the arm gets the counts from the response body."
            )
        if a.usage_estimated:
            out.append(
                f"`{a.arm_id}`: the token counts of {a.usage_estimated} of {answered} answered "
                "calls are a **proxy's estimate**, not the model's (`usage_source = "
                "'proxy_estimate'`): a gateway counted them with its own tokenizer. "
                "`stream: false` passes the model's own counts through."
            )
    return out


def batch_sentences(r: Report) -> list[str]:
    """One sentence per arm that ran in batch mode: what its figures do not measure."""
    return [
        f"`{a.arm_id}` ran in **batch mode**: latency and time to first token are not "
        "measured for batch calls (each batch's turnaround is in `provider_metrics_json`), "
        "so its latency is neither shown nor compared; its cost is the batch price."
        for a in r.arms
        if a.batch
    ]


# -- flaky cases ------------------------------------------------------------------------


def flakiness_sentence(a: ArmFigures) -> str | None:
    f = a.flakiness
    if f is None or f.cases == 0:
        return None
    share = fmt(f.flaky_share, "pct")
    k = f.repeats
    return (
        f"`{a.arm_id}`: {f.flaky_cases} of {plural(f.cases, 'case')} with repeats are "
        f"**flaky** ({share}: some repeats passed, some did not); over {k} tries, "
        f"pass@{k} {fmt(f.pass_at_k.get(k), 'pct')} (at least one passes), "
        f"pass^{k} {fmt(f.pass_pow_k.get(k), 'pct')} (every one passes), against "
        f"{fmt(f.pass_at_k.get(1), 'pct')} for one try."
    )


FLAKINESS_NOTE = (
    "A case's repeats disagree when some passed and some did not. pass@k: the chance that at "
    "least one of k tries passes; pass^k: that all k pass; unbiased estimates from the c of n "
    "repeats that passed (1 − C(n−c,k)/C(n,k) and C(c,k)/C(n,k)), averaged over cases."
)


def flakiness_columns(r: Report) -> list[int]:
    ks = {k for a in r.arms if a.flakiness for k in a.flakiness.pass_at_k}
    return sorted(ks)


# -- composite arms ---------------------------------------------------------------------


def route_sentence(a: ArmFigures) -> str | None:
    if a.kind != "route" or not a.routes:
        return None
    served = "; ".join(
        f"`{r.route}` served {r.served}"
        + (f", failed {r.errors} ({counts(r.errors_by_type)})" if r.errors else "")
        for r in a.routes
    )
    return (
        f"`{a.arm_id}` (route): {served}. Fallback rate {fmt(a.fallback_rate, 'pct')} "
        "(answered calls not served by the first route)."
    )


def member_sentence(a: ArmFigures, m: MemberFigures) -> str:
    """The panel against one of its members: pass rate, then the cost and latency
    multiples."""
    by = {c.metric: c for c in m.comparisons}
    head = f"`{a.arm_id}` against its member `{m.arm_id}` ({m.provider}/{m.model})"
    if m.best:
        head += ", its best member,"
    pass_rate = by.get("pass_rate")
    text = head
    if pass_rate is not None:
        text += f" on pass rate: **{verdict_word(pass_rate)}**, {effect_text(pass_rate)}"
        if pass_rate.compared:
            text += f"; p = {pass_rate.p_adjusted:.2g} after Holm over the members"
    multiples = [
        f"{METRIC_WORDS[metric]} {multiple_text(by[metric])}"
        for metric in ("cost", "latency")
        if metric in by
    ]
    return text + (f"; the panel's {', '.join(multiples)}." if multiples else ".")


def multiple_text(c: ComparisonFigures) -> str:
    if not c.compared:
        return f"not compared ({c.reason})"
    assert c.diff is not None and c.ci_low is not None and c.ci_high is not None
    return f"×{c.diff:.2f} (95% CI {c.ci_low:.2f} to {c.ci_high:.2f})"


def parts_text(a: ArmFigures) -> str | None:
    if not a.parts:
        return None
    return f"`{a.arm_id}` ({a.kind}): " + ", ".join(
        f"{p.role} `{p.arm_id}` {p.provider}/{p.model}" for p in a.parts
    )


# -- examples ---------------------------------------------------------------------------


def quote(text: str | None, limit: int = 80) -> str:
    if text is None:
        return "no response"
    text = " ".join(text.split())
    return "`" + (text if len(text) <= limit else text[: limit - 1] + "…").replace("`", "'") + "`"


def example_sentence(arm_id: str, baseline: str, e: Example) -> str:
    vars_ = ", ".join(f"{k}={v!r}" for k, v in e.vars.items())
    vars_ = f" ({vars_})" if vars_ else ""
    return (
        f"case `{e.case_id}`{vars_.replace('`', chr(39))}: {arm_id} "
        f"{'passed' if e.arm_passed else 'failed'} with {quote(e.arm_response)}; {baseline} "
        f"{'passed' if e.baseline_passed else 'failed'} with {quote(e.baseline_response)}"
    )


# -- tables ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cell:
    """A table cell: its figure, and a note under it (an interval, a breakdown)."""

    text: str
    note: str | None = None
    css: str | None = None  # the verdict's colour class, for a verdict cell


def _ci(bounds: list[float | None], pct: bool = False) -> str | None:
    lo, hi = bounds
    if lo is None or hi is None:
        return None
    return f"{lo * 100:.1f}–{hi * 100:.1f}" if pct else f"{lo:.0f}–{hi:.0f}"


def _join(*notes: str | None) -> str | None:
    kept = [n for n in notes if n]
    return "; ".join(kept) if kept else None


ARM_HEADERS = [
    "arm",
    "model · prompt",
    "cases",
    "calls",
    "errors",
    "pass rate",
    "mean score",
    "p50 ms",
    "p90 · p99 ms",
    "TTFT p50 ms",
    "tokens in · out",
    "cost USD",
    "estimate error (tok/call)",
]


def arm_row(a: ArmFigures, baseline: str | None) -> list[Cell]:
    """One row of the arm table, under `ARM_HEADERS`."""
    errors = _join(
        counts(a.errors_by_type) if a.errors else None,
        f"{a.scorer_errors} scorer errors" if a.scorer_errors else None,
    )
    calls = _join(
        f"{a.not_made} not made ({counts(a.not_made_by_type)})" if a.not_made else None,
        f"{a.cache_hits} cached" if a.cache_hits else None,
    )
    tokens = f"{fmt(a.input_tokens, ',')} · {fmt(a.output_tokens, ',')}"
    return [
        Cell(a.arm_id, "baseline" if a.arm_id == baseline else None),
        Cell(f"{a.provider}/{a.model}", a.prompt),
        Cell(str(a.n_cases)),
        Cell(str(a.n), calls),
        Cell(str(a.errors), errors),
        Cell(fmt(a.pass_rate, "pct"), _ci(a.pass_rate_ci, pct=True)),
        Cell(fmt(a.mean_score, ".3f")),
        Cell(fmt(a.latency_p50_ms, ".0f"), _ci(a.latency_p50_ci)),
        Cell(f"{fmt(a.latency_p90_ms, '.0f')} · {fmt(a.latency_p99_ms, '.0f')}"),
        Cell(fmt(a.ttft_p50_ms, ".0f")),
        Cell(tokens, "not reported" if a.usage_missing and a.input_tokens is None else None),
        Cell(
            fmt(a.cost_usd, ".4f"),
            f"{fmt(a.cost_per_1k_cases_usd, '.4f')} per 1k cases"
            if a.cost_per_1k_cases_usd is not None
            else None,
        ),
        Cell(fmt(a.est_error_mean_tokens, "+.1f")),
    ]


COMPARISON_HEADERS = [
    "arm",
    "metric",
    "estimate",
    "95% CI",
    "cases",
    "wins",
    "ties",
    "losses",
    "p",
    "p (Holm)",
    "verdict",
    "detectable (80% power)",
]


def comparison_row(c: ComparisonFigures) -> list[Cell]:
    word = verdict_word(c) + (" (negligible)" if c.negligible else "")
    return [
        Cell(c.arm_id),
        Cell(METRIC_WORDS[c.metric]),
        Cell(estimate_text(c)),
        Cell(interval_text(c)),
        Cell(str(c.n_pairs)),
        Cell(str(c.wins)),
        Cell(str(c.ties)),
        Cell(str(c.losses)),
        Cell(fmt(c.p_value, ".3g")),
        Cell(fmt(c.p_adjusted, ".3g")),
        Cell(word, css="no_difference" if c.negligible else verdict_css(c)),
        Cell(detectable_text(c)),
    ]


def flakiness_table(r: Report) -> tuple[list[str], list[list[Cell]]]:
    ks = flakiness_columns(r)
    headers = ["arm", "cases with repeats", "flaky", *(f"pass@{k} · pass^{k}" for k in ks)]
    rows = []
    for a in r.arms:
        f = a.flakiness
        if f is None or f.cases == 0:
            continue
        rows.append(
            [
                Cell(a.arm_id),
                Cell(str(f.cases)),
                Cell(str(f.flaky_cases), fmt(f.flaky_share, "pct")),
                *(
                    Cell(f"{fmt(f.pass_at_k.get(k), 'pct')} · {fmt(f.pass_pow_k.get(k), 'pct')}")
                    for k in ks
                ),
            ]
        )
    return headers, rows


def member_table(a: ArmFigures) -> tuple[list[str], list[list[Cell]]]:
    headers = ["member", "model", "calls", "pass rate", "mean score", "panel − member",
               "panel cost ×", "panel latency ×"]  # fmt: skip
    rows = []
    for m in a.members:
        by = {c.metric: c for c in m.comparisons}
        diff = by.get("pass_rate")
        rows.append(
            [
                Cell(m.arm_id, "best member" if m.best else None),
                Cell(f"{m.provider}/{m.model}"),
                Cell(str(m.n)),
                Cell(fmt(m.pass_rate, "pct")),
                Cell(fmt(m.mean_score, ".3f")),
                Cell(estimate_text(diff), verdict_word(diff), verdict_css(diff))
                if diff
                else Cell("–"),
                *(
                    Cell(estimate_text(by[x]), interval_text(by[x])) if x in by else Cell("–")
                    for x in ("cost", "latency")
                ),
            ]
        )
    return headers, rows


# -- HTML of a marked sentence ------------------------------------------------------------


def marked_html(text: str, strong_css: Callable[[str], str] | None = None) -> str:
    """A sentence of this module as HTML: escaped, `code` as <code>, **word** as a span
    whose class `strong_css(word)` gives (or <b>)."""
    html = escape(text)
    html = re.sub(r"`([^`]+)`", r"<code>\1</code>", html)

    def strong(m: re.Match[str]) -> str:
        css = strong_css(m[1]) if strong_css else None
        return f'<span class="{css}">{m[1]}</span>' if css else f"<b>{m[1]}</b>"

    return re.sub(r"\*\*([^*]+)\*\*", strong, html)


def sentence_css(c: ComparisonFigures) -> Callable[[str], str]:
    """The colour of a verdict sentence's marked words."""

    def css(word: str) -> str:
        if word == "negligible":
            return "no_difference"
        if word == "Caveat":
            return "inconclusive"
        return verdict_css(c)

    return css


def cell_html(cell: Cell) -> str:
    text = escape(cell.text)
    if cell.css:
        text = f'<span class="{cell.css}">{text}</span>'
    if cell.note:
        text += f'<div class="ci">{escape(cell.note)}</div>'
    return text


def cell_markdown(cell: Cell) -> str:
    text = cell.text + (f" ({cell.note})" if cell.note else "")
    return text.replace("|", "\\|")


ONLINE_NOTE = (
    "Live traffic: each arm's requests against the control's, unpaired, with the subject "
    "(the keyed hash of the request's user) as the unit, so a heavy user counts once. A "
    "request counts for the arm it was assigned, whoever answered it (a fallback's answer "
    "included). The intervals and p-values are always valid: they hold however often the "
    "report is read while traffic arrives, so looking every day does not inflate false "
    "claims (docs/online-statistics.md). They do not protect against a changed spec or "
    "split mid-run, nor against subjects that are not independent."
)
ONLINE_HEADERS = [
    "arm",
    "metric",
    "estimate",
    "always-valid 95% CI",
    "subjects",
    "p (always valid)",
    "p (Holm)",
    "verdict",
]


def online_row(c: ComparisonFigures) -> list[Cell]:
    return [
        Cell(c.arm_id),
        Cell(METRIC_WORDS[c.metric]),
        Cell(estimate_text(c)),
        Cell(interval_text(c)),
        Cell(str(c.n_units)),
        Cell(fmt(c.p_value, ".3g")),
        Cell(fmt(c.p_adjusted, ".3g")),
        Cell(verdict_word(c), css=verdict_css(c)),
    ]


ONLINE_ARM_HEADERS = [
    "arm",
    "assignment",
    "requests",
    "subjects",
    "failed",
    "answered by a fallback",
    "feedback",
    "mean feedback",
]


def online_arm_row(a: OnlineArmFigures) -> list[Cell]:
    return [
        Cell(a.arm_id),
        Cell(a.assignment),
        Cell(str(a.requests)),
        Cell(str(a.subjects)),
        Cell(str(a.failed)),
        Cell(str(a.answered_by_fallback)),
        Cell(str(a.feedback)),
        Cell(fmt(a.feedback_mean, ".3f")),
    ]


def online_sentence(c: ComparisonFigures) -> str:
    """An online comparison in words: the verdict, the always-valid interval, the
    subjects it rests on, and its caveats."""
    arm, base, metric = c.arm_id, c.baseline, METRIC_WORDS[c.metric]
    word = verdict_word(c)
    if not c.compared:
        return f"`{arm}` against `{base}` on {metric}: **{word}**: {c.reason}."
    p = fmt(c.p_adjusted, ".2g")
    text = (
        f"`{arm}` against `{base}` on {metric}: **{word}**: {effect_text(c)} "
        f"(always valid), {c.n_units} subjects in the two arms; p = {p} after Holm."
    )
    return " ".join([text, *(x if x.endswith(".") else f"{x}." for x in c.caveats)])
