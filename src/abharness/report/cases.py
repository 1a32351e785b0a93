"""The HTML report's case table, as data: per arm against the baseline, one row per case
(the same rows `abharness view` pages through, `store.browse.case_pairs`), and every
embedded case's outputs, for the page's small script to filter, search, sort and show
side by side. Past `MAX_CASES` cases the report embeds the cases that differ (up to that
many) and says how to see the rest in `abharness view`."""

from __future__ import annotations

import json
from typing import Any

from ..store.browse import Side, case_outputs, case_pairs
from ..store.queries import Results
from .figures import Report

MAX_CASES = 2000
OUTPUT_CHARS = 2000


def case_data(db: Results, report: Report, max_cases: int = MAX_CASES) -> dict[str, Any] | None:
    """What the report's script needs, or None without a baseline and another arm."""
    base = report.baseline
    others = [a.arm_id for a in report.arms if a.arm_id != base]
    if base is None or not others:
        return None
    everything = report.n_cases <= max_cases
    pairs: dict[str, list[dict[str, Any]]] = {}
    wanted: set[str] = set()
    for arm in others:
        rows, _ = case_pairs(
            db.con,
            Side(report.run_id, base),
            Side(report.run_id, arm),
            filter="all" if everything else "differing",
            sort="case",
            limit=max_cases,
        )
        pairs[arm] = [{k: v for k, v in r.items() if k != "vars"} for r in rows]
        wanted.update(r["case_id"] for r in rows)
    ids = sorted(wanted)[:max_cases]
    kept = set(ids)
    pairs = {arm: [r for r in rows if r["case_id"] in kept] for arm, rows in pairs.items()}
    variables = dict(
        db.con.execute(
            "SELECT case_id, vars_json FROM cases WHERE run_id = ? "
            "AND case_id IN (SELECT unnest(?::VARCHAR[]))",
            [report.run_id, ids],
        ).fetchall()
    )
    outputs: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for o in case_outputs(db.con, report.run_id, ids, OUTPUT_CHARS):
        outputs.setdefault(o.pop("case_id"), {}).setdefault(o.pop("arm_id"), []).append(o)
    return {
        "run_id": report.run_id,
        "baseline": base,
        "arms": others,
        "rows": pairs,
        "cases": {
            c: {"vars": json.loads(variables.get(c) or "{}"), "calls": outputs.get(c, {})}
            for c in ids
        },
        "embedded": len(ids),
        "total": report.n_cases,
        "complete": everything,
    }


def inline_json(data: Any) -> str:
    """JSON safe inside a <script> element: no '<', '>' or '&' survives, so no output
    can close the element or open another."""
    text = json.dumps(data, default=str, ensure_ascii=False, separators=(",", ":"))
    return (
        text.replace("&", "\\u0026")
        .replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("\u2028", "\\u2028")
        .replace("\u2029", "\\u2029")
    )
