"""The reads behind `abharness view`: pages of runs and of cases, one case's calls.

Every page is paged in SQL (``LIMIT``/``OFFSET`` with the total from a window), never
by loading a run into Python, so a page of a 100,000-call run costs what a page of a
small one does. Rows come back as plain dicts (no pandas), and every value a user
typed (a filter, a search, a sort) reaches SQL as a parameter or from a fixed list.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import duckdb

from .records import made_sql

RUN_KINDS = ("run", "nightly", "online", "mcp")
CASE_FILTERS = ("all", "differing", "regressions", "improvements", "errors", "flaky")
# sort keys a user may give (a leading '-' sorts descending) and what they order by
CASE_SORTS = {
    "case": "case_id",
    "diff": "diff",
    "a_passes": "a_rate",
    "b_passes": "b_rate",
    "a_score": "a_score",
    "b_score": "b_score",
    "a_latency": "a_latency_ms",
    "b_latency": "b_latency_ms",
    "a_cost": "a_cost_usd",
    "b_cost": "b_cost_usd",
}


@dataclass(frozen=True)
class Side:
    """One side of a comparison: an arm of a run."""

    run_id: str
    arm_id: str

    @classmethod
    def parse(cls, text: str) -> Side:
        run, sep, arm = text.partition(":")
        if not sep or not run or not arm:
            raise ValueError(f"{text!r} is not RUN_ID:ARM_ID")
        return cls(run, arm)

    def __str__(self) -> str:
        return f"{self.run_id}:{self.arm_id}"


def _rows(cur: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    names = [d[0] for d in cur.description or []]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def _has(con: duckdb.DuckDBPyConnection, table: str, column: str) -> bool:
    row = con.execute(
        "SELECT count(*) FROM information_schema.columns WHERE table_name = ? AND column_name = ?",
        [table, column],
    ).fetchone()
    return bool(row and row[0])


def runs_page(
    con: duckdb.DuckDBPyConnection,
    *,
    experiment: str | None = None,
    kind: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> tuple[list[dict[str, Any]], int]:
    """Runs newest first with their arms, calls made and cost; and how many match."""
    kind_col = "r.kind" if _has(con, "runs", "kind") else "'run'"
    role = "AND coalesce(a.role, 'arm') = 'arm'" if _has(con, "arms", "role") else ""
    call_role = "AND coalesce(c.role, 'arm') = 'arm'" if _has(con, "calls", "role") else ""
    rows = _rows(
        con.execute(
            f"""
            WITH page AS (
                SELECT r.run_id, r.experiment, {kind_col} AS kind, r.status, r.started_at,
                       r.total_cost_usd AS cost_usd, count(*) OVER () AS total
                FROM runs r
                WHERE ($experiment IS NULL OR r.experiment = $experiment)
                  AND ($kind IS NULL OR {kind_col} = $kind)
                ORDER BY r.started_at DESC, r.run_id DESC
                LIMIT $limit OFFSET $offset
            )
            SELECT p.*,
                   (SELECT list(a.arm_id ORDER BY a.position, a.arm_id) FROM arms a
                    WHERE a.run_id = p.run_id {role}) AS arms,
                   (SELECT count(*) FROM calls c WHERE c.run_id = p.run_id {call_role}) AS calls
            FROM page p ORDER BY p.started_at DESC, p.run_id DESC
            """,
            {"experiment": experiment, "kind": kind, "limit": limit, "offset": offset},
        )
    )
    total = int(rows[0]["total"]) if rows else _count_runs(con, experiment, kind, kind_col)
    for r in rows:
        del r["total"]
    return rows, total


def _count_runs(
    con: duckdb.DuckDBPyConnection, experiment: str | None, kind: str | None, kind_col: str
) -> int:
    row = con.execute(
        f"SELECT count(*) FROM runs r WHERE ($experiment IS NULL OR r.experiment = $experiment) "
        f"AND ($kind IS NULL OR {kind_col} = $kind)",
        {"experiment": experiment, "kind": kind},
    ).fetchone()
    return int(row[0]) if row else 0


def experiments(con: duckdb.DuckDBPyConnection) -> list[str]:
    return [r[0] for r in con.execute("SELECT DISTINCT experiment FROM runs ORDER BY 1").fetchall()]


def fingerprint(con: duckdb.DuckDBPyConnection, run_id: str) -> tuple[Any, ...] | None:
    """What changes when a run's rows change (a resume, a merge): its status, end, and
    the count and latest start of its calls. None if there is no such run."""
    row = con.execute(
        "SELECT r.status, r.finished_at, (SELECT count(*) FROM calls c WHERE c.run_id = r.run_id), "
        "(SELECT max(started_at) FROM calls c WHERE c.run_id = r.run_id) "
        "FROM runs r WHERE r.run_id = ?",
        [run_id],
    ).fetchone()
    return None if row is None else tuple(row)


def _filter_sql(name: str) -> str:
    return {
        "all": "TRUE",
        "differing": "(a_rate IS DISTINCT FROM b_rate OR a_score IS DISTINCT FROM b_score)",
        "regressions": "(b_rate < a_rate OR (b_rate = a_rate AND b_score < a_score))",
        "improvements": "(b_rate > a_rate OR (b_rate = a_rate AND b_score > a_score))",
        "errors": "(coalesce(a_errors, 0) > 0 OR coalesce(b_errors, 0) > 0)",
        "flaky": "(coalesce(a_flaky, FALSE) OR coalesce(b_flaky, FALSE))",
    }[name]


def case_pairs(
    con: duckdb.DuckDBPyConnection,
    a: Side,
    b: Side,
    *,
    filter: str = "all",
    q: str | None = None,
    sort: str = "case",
    limit: int = 50,
    offset: int = 0,
) -> tuple[list[dict[str, Any]], int]:
    """One row per case id of either side, paired by case id: each side's calls made,
    passes, mean score, median latency of timed calls, mean cost, errors and whether its
    repeats disagree; the case's variables; the score difference b − a. `filter` is one
    of `CASE_FILTERS` (``regressions``: b passes less than a, or as often with a lower
    score), `q` searches the variables and both sides' outputs, `sort` a key of
    `CASE_SORTS` (``-`` first for descending)."""
    if filter not in CASE_FILTERS:
        raise ValueError(f"filter must be one of {', '.join(CASE_FILTERS)}")
    key = sort.lstrip("-")
    if key not in CASE_SORTS:
        raise ValueError(f"sort must be one of {', '.join(CASE_SORTS)} (- first: descending)")
    order = f"{CASE_SORTS[key]} {'DESC' if sort.startswith('-') else 'ASC'} NULLS LAST"
    made = made_sql(_has(con, "calls", "unfinished"))
    role = "AND coalesce(c.role, 'arm') = 'arm'" if _has(con, "calls", "role") else ""
    pattern = f"%{q}%" if q else None
    rows = _rows(
        con.execute(
            f"""
            WITH c AS (
                SELECT c.call_id, c.run_id, c.arm_id, c.case_id, c.status, c.cache_hit,
                       c.latency_ms, c.cost_usd, c.response_text, {made} AS made
                FROM calls c
                WHERE ((c.run_id = $ra AND c.arm_id = $aa) OR (c.run_id = $rb AND c.arm_id = $ab))
                  {role}
            ), s AS (
                SELECT s.call_id, bool_and(coalesce(s.passed, FALSE)) AS passed,
                       avg(s.value) AS score, count(*) FILTER (WHERE s.passed IS NULL) AS bad
                FROM scores s WHERE s.run_id IN ($ra, $rb) AND s.call_id IN (SELECT call_id FROM c)
                GROUP BY s.call_id
            ), scored AS (
                SELECT c.*, c.status = 'ok' AND coalesce(s.passed, FALSE) AS passed,
                       CASE WHEN c.status = 'ok' AND coalesce(s.bad, 0) = 0
                            THEN coalesce(s.score, 0) ELSE 0 END AS score
                FROM c LEFT JOIN s USING (call_id)
            ), side AS (
                SELECT case_id, run_id = $ra AND arm_id = $aa AS is_a,
                       count(*) FILTER (WHERE made) AS n,
                       count(*) FILTER (WHERE made AND passed) AS k,
                       avg(score) FILTER (WHERE made) AS score,
                       median(latency_ms) FILTER (WHERE made AND status = 'ok' AND NOT cache_hit)
                           AS latency_ms,
                       avg(cost_usd) FILTER (WHERE made) AS cost_usd,
                       count(*) FILTER (WHERE made AND status = 'error') AS errors,
                       coalesce(bool_or(response_text ILIKE $q), FALSE) AS hit
                FROM scored GROUP BY ALL
            ), pairs AS (
                SELECT coalesce(a.case_id, b.case_id) AS case_id,
                       a.n AS a_n, a.k AS a_k, a.k / nullif(a.n, 0) AS a_rate, a.score AS a_score,
                       a.latency_ms AS a_latency_ms, a.cost_usd AS a_cost_usd,
                       a.errors AS a_errors, a.n >= 2 AND a.k > 0 AND a.k < a.n AS a_flaky,
                       b.n AS b_n, b.k AS b_k, b.k / nullif(b.n, 0) AS b_rate, b.score AS b_score,
                       b.latency_ms AS b_latency_ms, b.cost_usd AS b_cost_usd,
                       b.errors AS b_errors, b.n >= 2 AND b.k > 0 AND b.k < b.n AS b_flaky,
                       b.score - a.score AS diff,
                       coalesce(a.hit, FALSE) OR coalesce(b.hit, FALSE) AS hit
                FROM (SELECT * FROM side WHERE is_a) a
                FULL JOIN (SELECT * FROM side WHERE NOT is_a) b USING (case_id)
            )
            SELECT p.* EXCLUDE (hit), k.vars_json, count(*) OVER () AS total
            FROM pairs p
            LEFT JOIN cases k ON k.run_id = $rb AND k.case_id = p.case_id
            WHERE {_filter_sql(filter)}
              AND ($q IS NULL OR p.hit OR k.vars_json::VARCHAR ILIKE $q)
            ORDER BY {order}, p.case_id
            LIMIT $limit OFFSET $offset
            """,
            {
                "ra": a.run_id,
                "aa": a.arm_id,
                "rb": b.run_id,
                "ab": b.arm_id,
                "q": pattern,
                "limit": limit,
                "offset": offset,
            },
        )
    )
    total = int(rows[0]["total"]) if rows else 0
    for r in rows:
        del r["total"]
        r["vars"] = json.loads(r.pop("vars_json") or "{}")
    return rows, total


CALL_FIELDS = (
    "call_id, arm_id, repeat, status, error_type, error_message, attempts, latency_ms, "
    "ttft_ms, input_tokens, output_tokens, cost_usd, cache_hit, prompt_text, response_text, "
    "finish_reason"
)
OPTIONAL_FIELDS = (
    "request_id",
    "served_model",
    "attempt_errors_json",
    "usage_source",
    "served_by",
    "unfinished",
)


def case_calls(
    con: duckdb.DuckDBPyConnection, run_id: str, case_id: str, arms: list[str] | None
) -> dict[str, Any] | None:
    """One case: its variables and expected value, and per arm (spec order, or `arms`)
    every repeat's call with its scores, the judges' calls grading it and a composite
    call's parts. None if the run has no such case."""
    case = con.execute(
        "SELECT vars_json, expected_json FROM cases WHERE run_id = ? AND case_id = ?",
        [run_id, case_id],
    ).fetchone()
    if case is None:
        return None
    optional = [f for f in OPTIONAL_FIELDS if _has(con, "calls", f)]
    fields = CALL_FIELDS + "".join(f", {f}" for f in optional)
    role = "AND coalesce(a.role, 'arm') = 'arm'" if _has(con, "arms", "role") else ""
    order = [
        r[0]
        for r in con.execute(
            f"SELECT arm_id FROM arms a WHERE run_id = ? {role} ORDER BY position, arm_id",
            [run_id],
        ).fetchall()
    ]
    wanted = [a for a in (arms or order) if a in order]
    calls = _rows(
        con.execute(
            f"SELECT {fields} FROM calls WHERE run_id = ? AND case_id = ? "
            "AND arm_id IN (SELECT unnest(?::VARCHAR[])) ORDER BY arm_id, repeat",
            [run_id, case_id, wanted],
        )
    )
    ids = [c["call_id"] for c in calls]
    scores: dict[str, list[dict[str, Any]]] = {}
    for s in _rows(
        con.execute(
            "SELECT call_id, scorer, value, passed, detail FROM scores "
            "WHERE run_id = ? AND call_id IN (SELECT unnest(?::VARCHAR[])) ORDER BY scorer",
            [run_id, ids],
        )
    ):
        scores.setdefault(s.pop("call_id"), []).append(s)
    related: dict[str, list[dict[str, Any]]] = {}
    for column, kind in (("judged_call_id", "judges"), ("parent_call_id", "parts")):
        if not _has(con, "calls", column):
            continue
        for r in _rows(
            con.execute(
                f"SELECT {column} AS of, {fields} FROM calls WHERE run_id = ? "
                f"AND {column} IN (SELECT unnest(?::VARCHAR[])) ORDER BY arm_id",
                [run_id, ids],
            )
        ):
            related.setdefault(f"{kind}:{r.pop('of')}", []).append(r)
    by_arm: dict[str, list[dict[str, Any]]] = {a: [] for a in wanted}
    for c in calls:
        c["scores"] = scores.get(c["call_id"], [])
        c["judges"] = related.get(f"judges:{c['call_id']}", [])
        c["parts"] = related.get(f"parts:{c['call_id']}", [])
        raw = c.get("attempt_errors_json")
        c["attempt_errors"] = json.loads(raw) if raw else []
        by_arm[c["arm_id"]].append(c)
    return {
        "run_id": run_id,
        "case_id": case_id,
        "vars": json.loads(case[0] or "{}"),
        "expected": json.loads(case[1]) if case[1] else None,
        "arms": [{"arm_id": a, "calls": by_arm[a]} for a in wanted],
        "all_arms": order,
    }


def case_outputs(
    con: duckdb.DuckDBPyConnection, run_id: str, case_ids: list[str], limit_chars: int = 2000
) -> list[dict[str, Any]]:
    """Every arm call of these cases, in (case, arm, repeat) order: its outcome, score,
    latency, cost and its output cut at `limit_chars` (the HTML report embeds them)."""
    made = made_sql(_has(con, "calls", "unfinished"))
    role = "AND coalesce(c.role, 'arm') = 'arm'" if _has(con, "calls", "role") else ""
    judges = "AND c.judged_call_id IS NULL" if _has(con, "calls", "judged_call_id") else ""
    return _rows(
        con.execute(
            f"""
            WITH s AS (
                SELECT call_id, bool_and(coalesce(passed, FALSE)) AS passed, avg(value) AS score,
                       count(*) FILTER (WHERE passed IS NULL) AS bad
                FROM scores WHERE run_id = $run GROUP BY call_id
            )
            SELECT c.case_id, c.arm_id, c.repeat, {made} AS made, c.status, c.error_type,
                   c.status = 'ok' AND coalesce(s.passed, FALSE) AS passed,
                   CASE WHEN c.status = 'ok' AND coalesce(s.bad, 0) = 0
                        THEN coalesce(s.score, 0) ELSE 0 END AS score,
                   c.latency_ms, c.cost_usd, left(c.response_text, $chars) AS output,
                   length(c.response_text) > $chars AS cut
            FROM calls c LEFT JOIN s USING (call_id)
            WHERE c.run_id = $run AND c.case_id IN (SELECT unnest($ids::VARCHAR[])) {role} {judges}
            ORDER BY c.case_id, c.arm_id, c.repeat
            """,
            {"run": run_id, "ids": case_ids, "chars": limit_chars},
        )
    )
