"""The online report (SPEC §16): each arm of an ``online`` run against the control,
unpaired, with the subject as the unit, on always-valid intervals.

`online_frames` reads what `report.sequential.sequential_compare` needs: per arm and
metric, one row per measurement with the ``subject`` (its keyed hash; a request
without a subject is a subject of its own), the ``value`` and the time it arrived
(``at``), in arrival order. The statistics make the subject the unit (cluster-robust),
so a heavy user's hundred requests are not a hundred independent observations.

What is measured, per request (intention to treat: a request counts for the arm it was
assigned, whoever answered it):

- ``feedback``: the client's ``/v1/feedback`` score on the answer it got (the assigned
  call's, or the fallback's when the assigned arm failed);
- ``pass_rate`` and ``mean_score``: the spec's scorers on that answer (as in
  ``call_facts``: passed when every scorer passed; a failed request neither passes nor
  scores), only when the spec names scorers;
- ``latency``: the assigned call's latency when it answered; ``cost``: what the
  request cost, the fallback's call included.

A shadow arm is measured on its own calls (it saw the same requests, never answered
them): it is compared with the control in the same way, without feedback (no client
ever saw its answers).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pandas as pd

from ..store.queries import Results
from .figures import OnlineArmFigures
from .sequential import sequential_compare
from .stats import Comparison, compare_arms, not_compared

Compare = Callable[..., Comparison]

METRICS = ("feedback", "pass_rate", "mean_score", "latency", "cost")
COLUMNS = ["subject", "value", "at"]


def online_frames(db: Results, run_id: str) -> dict[str, dict[str, pd.DataFrame]]:
    """Per arm, per metric: a frame of (subject, value, at) in arrival order."""
    rows = db.con.execute(
        """
        WITH quality AS (
            SELECT call_id,
                   count(*) FILTER (WHERE scorer <> 'feedback') AS scorers,
                   count(*) FILTER (WHERE scorer <> 'feedback' AND passed IS NULL) AS errors,
                   bool_and(coalesce(passed, FALSE)) FILTER (WHERE scorer <> 'feedback') AS passed,
                   avg(value) FILTER (WHERE scorer <> 'feedback') AS score,
                   max(value) FILTER (WHERE scorer = 'feedback') AS feedback
            FROM scores GROUP BY call_id
        ),
        answered AS (
            SELECT c.call_id, c.arm_id, c.assignment,
                   coalesce(c.subject_hash, 'request:' || c.case_id) AS subject,
                   c.started_at AS at, c.status, c.latency_ms, c.cost_usd,
                   coalesce(f.call_id, c.call_id) AS answer_id,
                   coalesce(f.status, c.status) AS answer_status,
                   c.cost_usd + coalesce(f.cost_usd, 0) AS request_cost
            FROM calls c
            LEFT JOIN calls f ON f.parent_call_id = c.call_id AND f.assignment = 'fallback'
                 AND f.status = 'ok'
            WHERE c.run_id = $run AND c.assignment IN ('assigned', 'shadow')
        )
        SELECT a.arm_id, a.assignment, a.subject, a.at, a.status, a.latency_ms,
               a.request_cost, a.answer_status, q.scorers, q.errors, q.passed, q.score,
               q.feedback
        FROM answered a LEFT JOIN quality q ON q.call_id = a.answer_id
        ORDER BY a.at, a.subject
        """,
        {"run": run_id},
    ).df()
    scored = bool(len(rows)) and bool((rows["scorers"].fillna(0) > 0).any())
    out: dict[str, dict[str, pd.DataFrame]] = {}
    for arm_id, calls in rows.groupby("arm_id", sort=False):
        answered = calls["answer_status"] == "ok"
        clean = answered & (calls["errors"].fillna(0) == 0)
        per_metric: dict[str, Any] = {
            "latency": calls[calls["status"] == "ok"].assign(value=lambda f: f["latency_ms"]),
            "cost": calls.assign(value=calls["request_cost"]),
        }
        if calls["assignment"].iloc[0] == "assigned":
            per_metric["feedback"] = calls.assign(value=calls["feedback"])
        if scored:
            per_metric["pass_rate"] = calls.assign(
                value=(answered & calls["passed"].fillna(False).astype(bool)).astype(float)
            )
            per_metric["mean_score"] = calls.assign(
                value=calls["score"].where(clean, 0.0).fillna(0.0).astype(float)
            )
        out[str(arm_id)] = {
            metric: frame.loc[frame["value"].notna(), COLUMNS].reset_index(drop=True)
            for metric, frame in per_metric.items()
        }
    return out


def online_comparisons(
    db: Results, run_id: str, control: str, compare: Compare = sequential_compare
) -> tuple[list[tuple[str, Comparison]], str | None]:
    """Each other arm against `control` on every metric either has, always-valid
    (`sequential_compare`), Holm-adjusted across the arms of each metric and decided
    (`stats.compare_arms`): (arm, comparison) pairs, and a note when none was made."""
    frames = online_frames(db, run_id)
    if control not in frames:
        return [], f"the control arm {control} has answered no request yet"
    by_metric: dict[str, dict[str, Comparison]] = {}
    for arm, metrics in frames.items():
        if arm == control:
            continue
        for metric in METRICS:
            if metric not in metrics or metric not in frames[control]:
                continue
            if metrics[metric].empty and frames[control][metric].empty:
                continue  # nothing measured it yet (no feedback sent)
            unpriced = [
                who
                for who, frame in ((arm, metrics[metric]), (control, frames[control][metric]))
                if metric == "cost" and frame["value"].isna().all()  # none priced (or empty)
            ]
            found = (
                not_compared("cost", f"cost unknown for {unpriced[0]} (no price)")
                if unpriced
                else compare(metrics[metric], frames[control][metric], metric)
            )
            by_metric.setdefault(metric, {})[arm] = found
    out = [
        (arm, c)
        for metric in METRICS
        if metric in by_metric
        for arm, c in compare_arms(by_metric[metric], power=False).items()
    ]
    return out, None if out else "no arm but the control has answered a request yet"


def online_arms(db: Results, run_id: str) -> list[OnlineArmFigures]:
    """Per arm of an online run, assigned arms first: requests, subjects, failures, the
    fallback's rescues and the feedback received."""
    rows = db.con.execute(
        """
        SELECT c.arm_id, c.assignment, count(*) AS requests,
               count(DISTINCT coalesce(c.subject_hash, 'request:' || c.case_id)) AS subjects,
               count(*) FILTER (WHERE c.status <> 'ok') AS failed,
               count(f.call_id) AS rescued,
               count(s.value) AS feedback, avg(s.value) AS feedback_mean
        FROM calls c
        LEFT JOIN calls f ON f.parent_call_id = c.call_id AND f.assignment = 'fallback'
             AND f.status = 'ok'
        LEFT JOIN scores s ON s.call_id = coalesce(f.call_id, c.call_id) AND s.scorer = 'feedback'
        WHERE c.run_id = ? AND c.assignment IN ('assigned', 'shadow')
        GROUP BY c.arm_id, c.assignment
        ORDER BY c.assignment, c.arm_id
        """,
        [run_id],
    ).fetchall()
    return [
        OnlineArmFigures(
            arm_id=r[0],
            assignment=r[1],
            requests=int(r[2]),
            subjects=int(r[3]),
            failed=int(r[4]),
            answered_by_fallback=int(r[5]),
            feedback=int(r[6]),
            feedback_mean=None if r[7] is None else float(r[7]),
        )
        for r in rows
    ]
