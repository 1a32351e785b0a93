"""Reports: the figures of one run, as a dict (SPEC §9's JSON) and as Markdown.

`build_report` computes everything from the database; renderers only format it, so
the JSON, the Markdown and (later) the HTML always agree.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import duckdb

from .stats import paired_pass_fail

ALPHA = 0.05


class RunNotFound(LookupError):
    pass


def resolve_run_id(con: duckdb.DuckDBPyConnection, run: str | None) -> str:
    """`run` itself if recorded, or the latest run when `run` is None or 'last'."""
    if run in (None, "last", "--last"):
        row = con.execute(
            "SELECT run_id FROM runs ORDER BY started_at DESC, run_id DESC LIMIT 1"
        ).fetchone()
        if row is None:
            raise RunNotFound("the database has no runs yet")
        return str(row[0])
    row = con.execute("SELECT run_id FROM runs WHERE run_id = ?", [run]).fetchone()
    if row is None:
        raise RunNotFound(f"no run {run!r} in the database")
    return str(row[0])


def _clean(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if hasattr(value, "item"):  # numpy scalars
        return _clean(value.item())
    return value


def build_report(con: duckdb.DuckDBPyConnection, run_id: str) -> dict[str, Any]:
    run = con.execute("SELECT * FROM runs WHERE run_id = ?", [run_id]).df().iloc[0].to_dict()
    arms = con.execute(
        "SELECT a.*, s.* EXCLUDE (run_id, arm_id) FROM arms a "
        "LEFT JOIN arm_summary s USING (run_id, arm_id) WHERE a.run_id = ? ORDER BY a.position, a.arm_id",
        [run_id],
    ).df()
    errors = con.execute(
        "SELECT arm_id, error_type, count(*) AS n, any_value(error_message) AS example "
        "FROM calls WHERE run_id = ? AND status = 'error' GROUP BY ALL ORDER BY arm_id, n DESC",
        [run_id],
    ).fetchall()
    baseline_rows = arms[arms["is_baseline"]]
    baseline = str(baseline_rows.iloc[0]["arm_id"]) if len(baseline_rows) else None

    arm_list = []
    for _, a in arms.iterrows():
        arm_list.append(
            {
                "arm_id": a["arm_id"],
                "provider": a["provider"],
                "model": a["model"],
                "tier": _clean(a["tier"]),
                "prompt": f"{a['prompt_name']}@{a['prompt_version']}",
                "prompt_hash": a["prompt_hash"],
                "n": _clean(a["n"]),
                "ok": _clean(a["ok"]),
                "errors": _clean(a["errors"]),
                "errors_by_type": {t: n for arm_id, t, n, _ in errors if arm_id == a["arm_id"]},
                "cache_hits": _clean(a["cache_hits"]),
                "pass_rate": _clean(a["pass_rate"]),
                "mean_score": _clean(a["mean_score"]),
                "latency_p50_ms": _clean(a["latency_p50_ms"]),
                "latency_p90_ms": _clean(a["latency_p90_ms"]),
                "ttft_p50_ms": _clean(a["ttft_p50_ms"]),
                "input_tokens": _clean(a["input_tokens"]),
                "output_tokens": _clean(a["output_tokens"]),
                "cost_usd": _clean(a["cost_usd"]),
                "est_error_mean_tokens": _clean(a["est_error_mean_tokens"]),
            }
        )
    arm_list.sort(key=lambda a: a["arm_id"] != baseline)  # stable: baseline first, then spec order

    comparisons = []
    if baseline is not None:
        passed = con.execute(
            """
            SELECT c.arm_id, c.case_id, c.repeat,
                   c.status = 'ok' AND coalesce(bool_and(s.passed), FALSE) AS passed
            FROM calls c LEFT JOIN scores s ON s.call_id = c.call_id
            WHERE c.run_id = ? GROUP BY c.arm_id, c.case_id, c.repeat, c.status
            """,
            [run_id],
        ).fetchall()
        by_arm: dict[str, dict[tuple[str, int], bool]] = {}
        for arm_id, case_id, repeat, ok in passed:
            by_arm.setdefault(arm_id, {})[(case_id, repeat)] = bool(ok)
        base = by_arm.get(baseline, {})
        for a in arm_list:
            if a["arm_id"] == baseline:
                continue
            mine = by_arm.get(a["arm_id"], {})
            pairs = [(mine[k], base[k]) for k in sorted(mine.keys() & base.keys())]
            out = paired_pass_fail(pairs)
            if out.p_value < ALPHA:
                verdict = "better" if out.diff > 0 else "worse"
            else:
                verdict = "inconclusive"
            comparisons.append(
                {
                    "arm_id": a["arm_id"],
                    "baseline": baseline,
                    "metric": "pass_rate",
                    "n_pairs": out.n_pairs,
                    "diff": out.diff,
                    "ci_low": None,
                    "ci_high": None,
                    "p_value": out.p_value,
                    "p_adjusted": None,
                    "wins": out.wins,
                    "ties": out.ties,
                    "losses": out.losses,
                    "verdict": verdict,
                }
            )
    return {
        "run_id": run_id,
        "experiment": run["experiment"],
        "description": run["description"],
        "status": run["status"],
        "started_at": f"{run['started_at']:%Y-%m-%d %H:%M:%S}",
        "finished_at": f"{run['finished_at']:%Y-%m-%d %H:%M:%S}"
        if run["finished_at"] is not None
        else None,
        "wall_time_s": _clean(run["wall_time_s"]),
        "spec_hash": run["spec_hash"],
        "harness_version": run["harness_version"],
        "baseline": baseline,
        "arms": arm_list,
        "comparisons": comparisons,
        "examples": _examples(con, run_id, baseline, [c["arm_id"] for c in comparisons]),
    }


def _examples(
    con: duckdb.DuckDBPyConnection,
    run_id: str,
    baseline: str | None,
    arm_ids: list[str],
    per_arm: int = 3,
) -> dict[str, list[dict[str, Any]]]:
    """A few cases per arm where its outcome differs from the baseline's."""
    if baseline is None:
        return {}
    out: dict[str, list[dict[str, Any]]] = {}
    for arm_id in arm_ids:
        rows = con.execute(
            """
            WITH p AS (
                SELECT c.arm_id, c.case_id, c.repeat, c.response_text, c.error_type,
                       c.status = 'ok' AND coalesce(bool_and(s.passed), FALSE) AS passed
                FROM calls c LEFT JOIN scores s ON s.call_id = c.call_id
                WHERE c.run_id = ? AND c.arm_id IN (?, ?)
                GROUP BY c.arm_id, c.case_id, c.repeat, c.response_text, c.error_type, c.status
            )
            SELECT a.case_id, k.vars_json, a.passed, a.response_text, b.passed, b.response_text
            FROM p a JOIN p b ON a.case_id = b.case_id AND a.repeat = b.repeat
            JOIN cases k ON k.run_id = ? AND k.case_id = a.case_id
            WHERE a.arm_id = ? AND b.arm_id = ? AND a.passed <> b.passed
            ORDER BY a.passed DESC, a.case_id LIMIT ?
            """,
            [run_id, arm_id, baseline, run_id, arm_id, baseline, per_arm],
        ).fetchall()
        out[arm_id] = [
            {
                "case_id": r[0],
                "vars": json.loads(r[1] or "{}"),
                "arm_passed": r[2],
                "arm_response": r[3],
                "baseline_passed": r[4],
                "baseline_response": r[5],
            }
            for r in rows
        ]
    return out


def _fmt(value: Any, spec: str = "", suffix: str = "") -> str:
    if value is None:
        return "–"
    if spec == "pct":
        return f"{value * 100:.1f}%"
    if spec == "," and float(value).is_integer():
        value = int(value)
    return f"{value:{spec}}{suffix}"


VERDICT_WORDS = {
    "better": "is **better** than",
    "worse": "is **worse** than",
    "no_difference": "performs **the same** as",
    "inconclusive": "**cannot yet be told apart** from",
}


def render_markdown(r: dict[str, Any], db_path: str | None = None) -> str:
    lines = [f"# {r['experiment']} — run `{r['run_id']}`", ""]
    if r.get("description"):
        lines += [r["description"], ""]
    lines += [
        f"- status: **{r['status']}**, started {r['started_at']} UTC, wall time {_fmt(r['wall_time_s'], '.1f', ' s')}",
        f"- baseline: `{r['baseline']}` · spec hash `{r['spec_hash']}` · abharness {r['harness_version']}",
    ]
    if db_path:
        lines.append(f"- database: `{db_path}` (tables `calls`, `scores`; view `call_facts`)")
    lines += [
        "",
        "## Arms",
        "",
        "| arm | model | prompt | n | ok | errors | cached | pass rate | mean score | p50 ms | p90 ms | TTFT p50 ms | input tok | output tok | cost USD | estimate error (tok/call) |",
        "|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for a in r["arms"]:
        name = f"**{a['arm_id']}** (baseline)" if a["arm_id"] == r["baseline"] else a["arm_id"]
        lines.append(
            f"| {name} | {a['provider']}/{a['model']} | {a['prompt']} | {a['n']} | {a['ok']} | {a['errors']} | {a['cache_hits']} | "
            f"{_fmt(a['pass_rate'], 'pct')} | {_fmt(a['mean_score'], '.3f')} | {_fmt(a['latency_p50_ms'], '.0f')} | "
            f"{_fmt(a['latency_p90_ms'], '.0f')} | {_fmt(a['ttft_p50_ms'], '.0f')} | {_fmt(a['input_tokens'], ',')} | "
            f"{_fmt(a['output_tokens'], ',')} | {_fmt(a['cost_usd'], '.4f')} | {_fmt(a['est_error_mean_tokens'], '+.1f')} |"
        )
    if any(a["cache_hits"] for a in r["arms"]):
        lines += [
            "",
            "Cached calls were answered from the response cache: they cost nothing and are "
            "left out of latency and TTFT (run with `--no-cache` to measure them).",
        ]
    errs = [(a["arm_id"], t, n) for a in r["arms"] for t, n in a["errors_by_type"].items()]
    if errs:
        lines += ["", "Errors by type: " + "; ".join(f"{arm}: {n} × {t}" for arm, t, n in errs)]
    if r["comparisons"]:
        lines += [
            "",
            f"## Against the baseline `{r['baseline']}`",
            "",
            "Paired by case and repeat; a call passes when it succeeded and every scorer passed.",
            "",
            "| arm | pass-rate difference | wins | ties | losses | exact McNemar p | verdict |",
            "|---|--:|--:|--:|--:|--:|---|",
        ]
        for c in r["comparisons"]:
            lines.append(
                f"| {c['arm_id']} | {c['diff'] * 100:+.1f} pts | {c['wins']} | {c['ties']} | {c['losses']} | "
                f"{c['p_value']:.3g} | {c['verdict']} |"
            )
        lines.append("")
        for c in r["comparisons"]:
            lines.append(
                f"- `{c['arm_id']}` {VERDICT_WORDS[c['verdict']]} `{c['baseline']}` on pass rate: "
                f"{c['diff'] * 100:+.1f} points over {c['n_pairs']} pairs ({c['wins']} wins, "
                f"{c['losses']} losses, p = {c['p_value']:.3g})."
                + (" Too few discordant pairs to tell." if c["verdict"] == "inconclusive" else "")
            )
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


def write_report(
    con: duckdb.DuckDBPyConnection, run_id: str, reports_dir: Path, db_path: str | None = None
) -> Path:
    report = build_report(con, run_id)
    target = reports_dir / report["experiment"] / f"{run_id}.md"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(render_markdown(report, db_path), encoding="utf-8")
    return target
