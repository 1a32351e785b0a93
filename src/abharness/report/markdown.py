"""The Markdown report: the typed figures (`figures.Report`) in the words and cells of
`words`, nothing computed or spelled here."""

from __future__ import annotations

from . import words as w
from .figures import Report


def _table(headers: list[str], rows: list[list[w.Cell]], right_from: int = 2) -> list[str]:
    align = ["---" if i < right_from else "--:" for i in range(len(headers))]
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join(align) + "|"]
    out += ["| " + " | ".join(w.cell_markdown(c) for c in row) + " |" for row in rows]
    return out


def render_markdown(r: Report, db_path: str | None = None) -> str:
    lines = [f"# {r.experiment} — run `{r.run_id}`", ""]
    if r.description:
        lines += [r.description, ""]
    lines += [f"- {fact}" for fact in w.run_facts(r)]
    if db_path:
        lines.append(f"- database: `{db_path}` (tables `calls`, `scores`; view `call_facts`)")
    missing = w.completeness_sentence(r.completeness)
    if missing:
        lines += ["", missing]
    usage = w.usage_sentences(r)
    if usage:
        lines += ["", "## Token counts", ""] + [f"- {s}" for s in usage]
    batch = w.batch_sentences(r)
    if batch:
        lines += ["", "## Batch mode", ""] + [f"- {s}" for s in batch]
    if r.comparisons:
        lines += ["", "## Verdicts", ""]
        lines += [
            f"- {w.verdict_sentence(c, r.equivalence_margin, r.ratio_margin)}" for c in r.verdicts()
        ]
    if r.kind == "online":
        lines += [
            "",
            f"## Online: each arm against `{r.baseline}`, by subject",
            "",
            w.ONLINE_NOTE,
            "",
        ]
        lines += _table(w.ONLINE_ARM_HEADERS, [w.online_arm_row(a) for a in r.online_arms]) + [""]
        if r.online:
            lines += _table(w.ONLINE_HEADERS, [w.online_row(c) for c in r.online])
            lines += [""] + [f"- {w.online_sentence(c)}" for c in r.online]
        else:
            lines += [f"No comparison: {r.online_note}."]
    if r.not_run:
        lines += ["", "## Not run", "", w.NOT_RUN_NOTE, ""]
        lines += [f"- `{n.arm_id}`: {n.reason}" for n in r.not_run]
    lines += ["", "## Arms", "", w.ARMS_NOTE, ""]
    lines += _table(w.ARM_HEADERS, [w.arm_row(a, r.baseline) for a in r.arms])
    judging = w.judging_cost(r)
    if judging:
        lines += ["", judging]
    if any(a.cache_hits for a in r.arms):
        lines += ["", w.CACHE_NOTE]
    composite = [a for a in r.arms if a.parts]
    if composite:
        lines += ["", "## Composite arms", ""]
        for a in composite:
            lines += [f"- {w.parts_text(a)}"]
            route = w.route_sentence(a)
            lines += [f"- {route}"] if route else []
            lines += [f"- {w.member_sentence(a, m)}" for m in a.members]
        for a in composite:
            if a.members:
                lines += ["", f"Panel `{a.arm_id}` against each of its members:", ""]
                lines += _table(*w.member_table(a))
    if r.comparisons:
        lines += ["", f"## Against the baseline `{r.baseline}`", "", w.method_note(r), ""]
        lines += _table(w.COMPARISON_HEADERS, [w.comparison_row(c) for c in r.comparisons])
        lines += [""] + [
            f"- {w.verdict_sentence(c, r.equivalence_margin, r.ratio_margin)}"
            for c in r.comparisons
            if c.metric in ("mean_score", "cost")
        ]
    headers, rows = w.flakiness_table(r)
    if rows:
        lines += ["", "## Flaky cases", "", w.FLAKINESS_NOTE, ""]
        lines += _table(headers, rows, right_from=1)
        lines += [""] + [f"- {s}" for a in r.arms if (s := w.flakiness_sentence(a))]
    for arm_id, examples in r.examples.items():
        if not examples:
            continue
        lines += ["", f"### Where `{arm_id}` and `{r.baseline}` differ", ""]
        lines += [f"- {w.example_sentence(arm_id, str(r.baseline), e)}" for e in examples]
    return "\n".join(lines) + "\n"
