"""The MCP tools (SPEC §15), declared on the official SDK's `MCPServer`.

Models are named ``PROVIDER:MODEL`` (split at the first colon): a built-in provider
(``openai:gpt-4.1-mini``, ``ollama:llama3.2:3b``) or one of the ``providers:`` of the spec
given with ``--config``. `compare_models` asks them now, through the same runner as
``abharness run`` (limits, retries, circuits, cost), as a one-case experiment of kind
``mcp`` recorded in the database: several models are arms of their own; with
``synthesize_with`` they are a panel's members and that model its synthesizer.

Every tool's failure comes back as a tool error with one line (a bad model name, a
spec that does not validate, a query that would write), never a dead server.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Callable
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError

from ..errors import AbharnessError, InvalidInput
from ..report.build import build_report, to_json
from ..report.markdown import render_markdown
from ..run.experiment import RunOptions, dry_run, run_experiment
from ..spec.endpoints import BUILTIN_ENDPOINTS
from ..spec.load import load_spec
from ..store.health import first_line
from ..store.queries import DatabaseBusy, NoDatabase, Results, RunNotFound

QUERY_ROWS = 1000
ASK = "{% block user %}{{ prompt }}{% endblock %}\n"
SYNTH = """{% block user %}Several models answered the same request. Write the best answer,
using what is right in theirs.

Request:
{{ prompt }}
{% for m in members %}
Answer {{ loop.index }} ({{ m.provider }}:{{ m.model }}):
{{ m.text if m.ok else "(no answer)" }}
{% endfor %}{% endblock %}
"""
T = TypeVar("T")


def build_server(
    config: Path | None, db: Path, experiments: Path = Path("experiments")
) -> MCPServer:
    """The server. `config` is a spec whose ``providers:`` name more endpoints than the
    built-ins; `experiments` the folder `list_experiments` looks in."""
    providers: dict[str, Any] = {}
    if config is not None:
        spec = load_spec(config)  # refused now, with its line, if it does not validate
        providers = (yaml.safe_load(spec.source) or {}).get("providers") or {}
    server = MCPServer("abharness", instructions=__doc__)

    @server.tool()
    async def compare_models(
        prompt: str,
        models: list[str],
        synthesize_with: str | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
    ) -> dict[str, Any]:
        """Ask several models the same prompt now, side by side, and record it as a run.
        Models are PROVIDER:MODEL. With synthesize_with (also PROVIDER:MODEL), that model
        answers last from what the others said. Returns each answer with its latency,
        tokens and cost, and the synthesis."""
        return await _tool(
            lambda: compare(prompt, models, synthesize_with, max_tokens, temperature, providers, db)
        )

    @server.tool()
    async def list_experiments() -> list[dict[str, Any]]:
        """The experiment specs in the experiments folder (and its nightly folder)."""
        return await _tool(lambda: _experiments(experiments))

    @server.tool(name="run_experiment")
    async def run_spec(spec_path: str, ctx: Context, dry_run: bool = False) -> dict[str, Any]:
        """Run an experiment spec, reporting progress as its calls finish; with dry_run,
        project its cost range and call nothing."""
        loop = asyncio.get_running_loop()

        def progress(done: int, total: int) -> None:
            asyncio.run_coroutine_threadsafe(ctx.report_progress(done, total), loop)

        return await _tool(lambda: _run(Path(spec_path), db, dry_run, progress))

    @server.tool()
    async def list_runs(experiment: str | None = None, limit: int = 20) -> list[dict[str, Any]]:
        """The latest runs, newest first (of one experiment, if named)."""
        return await _tool(lambda: _runs(db, experiment, limit))

    @server.tool()
    async def get_report(run_id: str, format: Literal["markdown", "json"] = "markdown") -> str:
        """A run's report: Markdown, or its figures as JSON."""
        return await _tool(lambda: _report(db, run_id, format))

    @server.tool()
    async def query(sql: str) -> dict[str, Any]:
        """Read-only SQL over the results database, as `abharness sql`: one statement
        that only reads; at most 1,000 rows."""
        return await _tool(lambda: _query(db, sql))

    return server


async def _tool(work: Callable[[], T]) -> T:
    """Blocking library work off the server's loop; its failure a one-line tool error."""
    try:
        return await asyncio.to_thread(work)
    except ToolError:
        raise
    except (AbharnessError, DatabaseBusy, NoDatabase, RunNotFound) as exc:
        raise ToolError(str(exc).splitlines()[0]) from exc
    except Exception as exc:  # a tool error, never a dead server
        raise ToolError(f"{type(exc).__name__}: {first_line(exc)}") from exc


def _model(name: str, providers: dict[str, Any]) -> tuple[str, str]:
    provider, sep, model = name.partition(":")
    if not sep or not model:
        raise InvalidInput(f"model {name!r}: expected PROVIDER:MODEL, e.g. openai:gpt-4.1-mini")
    if provider not in providers and provider not in BUILTIN_ENDPOINTS:
        known = ", ".join(sorted({*BUILTIN_ENDPOINTS, *providers}))
        raise InvalidInput(f"model {name!r}: unknown provider {provider!r}; known: {known}")
    return provider, model


def compare(
    prompt: str,
    models: list[str],
    synthesize_with: str | None,
    max_tokens: int | None,
    temperature: float | None,
    providers: dict[str, Any],
    db: Path,
) -> dict[str, Any]:
    """Ask `models` `prompt` as a one-case experiment of kind ``mcp``; each answer (and
    the synthesis) with its figures."""
    if not models:
        raise InvalidInput("models: name at least one PROVIDER:MODEL")
    parts = [_model(m, providers) for m in models]
    defaults = {
        k: v for k, v in (("max_tokens", max_tokens), ("temperature", temperature)) if v is not None
    }
    if synthesize_with is not None:
        s_provider, s_model = _model(synthesize_with, providers)
        members = [{"provider": p, "model": m} for p, m in parts]
        synthesizer = {"provider": s_provider, "model": s_model, "prompt": "mcp-synthesize@1"}
        arms: list[dict[str, Any]] = [
            {
                "id": "panel",
                "panel": {"members": members, "synthesizer": synthesizer, "min_members": 1},
            }
        ]
    else:
        arms = [
            {"id": f"model{i + 1}", "provider": p, "model": m} for i, (p, m) in enumerate(parts)
        ]
    spec = {
        "name": "mcp",
        "description": "compare_models, over MCP",
        "prompts_dir": "prompts",
        "prompt": "mcp-ask@1",
        "cases": [{"id": "prompt", "prompt": prompt}],
        "defaults": defaults,
        "providers": providers,
        "arms": arms,
        "max_error_rate": 1,
    }
    with tempfile.TemporaryDirectory(prefix="abharness-mcp-") as tmp:
        root = Path(tmp)
        (root / "prompts/mcp-ask").mkdir(parents=True)
        (root / "prompts/mcp-ask/v1.j2").write_text(ASK, encoding="utf-8")
        (root / "prompts/mcp-synthesize").mkdir(parents=True)
        (root / "prompts/mcp-synthesize/v1.j2").write_text(SYNTH, encoding="utf-8")
        (root / "spec.yaml").write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
        outcome = run_experiment(root / "spec.yaml", RunOptions(db=db, use_cache=False, kind="mcp"))
    source = outcome.results_path
    with Results(source) as results:
        rows = results.con.execute(
            """
            SELECT c.arm_id, c.role, a.provider, a.model, c.status, c.error_type,
                   c.error_message, c.response_text, c.latency_ms, c.ttft_ms,
                   c.input_tokens, c.output_tokens, c.cost_usd
            FROM calls c JOIN arms a USING (run_id, arm_id)
            WHERE c.run_id = ? ORDER BY a.position
            """,
            [outcome.run_id],
        ).fetchall()
    keys = [
        *("arm_id", "role", "provider", "model", "status", "error_type", "error_message"),
        *("text", "latency_ms", "ttft_ms", "input_tokens", "output_tokens", "cost_usd"),
    ]
    calls = [dict(zip(keys, r, strict=True)) for r in rows]

    def answer(c: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {"model": f"{c['provider']}:{c['model']}", "ok": c["status"] == "ok"}
        out |= {k: c[k] for k in keys[7:]}
        if c["status"] != "ok":
            out["error"] = f"{c['error_type']}: {c['error_message']}"
        return out

    answers = [
        answer(c) for c in calls if c["role"] in ("arm", "member") and c["arm_id"] != "panel"
    ]
    result: dict[str, Any] = {"run_id": outcome.run_id, "answers": answers}
    synth = [c for c in calls if c["role"] == "synthesizer"]
    panel = [c for c in calls if c["arm_id"] == "panel"]
    if synthesize_with is not None:
        result["synthesis"] = answer(synth[0]) if synth else None
        if panel:
            result["panel"] = {
                k: panel[0][k] for k in ("latency_ms", "input_tokens", "output_tokens", "cost_usd")
            }
            if panel[0]["status"] != "ok":
                result["panel"]["error"] = panel[0]["error_message"]
    return result


def _experiments(folder: Path) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for path in sorted([*folder.glob("*.yaml"), *folder.glob("nightly/*.yaml")]):
        try:
            spec = load_spec(path)
        except InvalidInput as exc:
            out.append({"path": str(path), "error": str(exc)})
            continue
        x = spec.experiment
        out.append(
            {
                "path": str(path),
                "name": x.name,
                "description": x.description,
                "arms": [a.id for a in x.arms],
                "baseline": spec.baseline,
            }
        )
    return out


def _run(spec: Path, db: Path, dry: bool, progress: Callable[[int, int], None]) -> dict[str, Any]:
    if dry:
        projections, warnings = dry_run(spec, db)
        return {
            "dry_run": True,
            "arms": [
                {
                    "arm_id": p.arm_id,
                    "calls": p.calls,
                    "est_input_tokens": p.est_input_tokens,
                    "min_usd": float(p.min_usd) if p.priced else None,
                    "max_usd": float(p.max_usd) if p.priced else None,
                    "not_run": p.not_run,
                }
                for p in projections
            ],
            "warnings": warnings,
        }
    total = 0
    done = 0

    def started(n: int) -> None:
        nonlocal total
        total = n

    def finished(record: Any) -> None:
        nonlocal done
        if record.role == "arm" and record.judged_call_id is None:
            done += 1
            progress(done, total)

    outcome = run_experiment(spec, RunOptions(db=db, on_start=started, on_call=finished))
    return {
        "run_id": outcome.run_id,
        "status": outcome.status,
        "calls": outcome.calls,
        "errors": outcome.errors,
        "not_made": outcome.not_made,
        "cost_usd": outcome.stats.cost_usd,
        "merged": outcome.merge.merged,
        "warnings": outcome.warnings + outcome.failures,
    }


def _runs(db: Path, experiment: str | None, limit: int) -> list[dict[str, Any]]:
    with Results(db) as results:
        where = "WHERE experiment = ?" if experiment else ""
        cur = results.con.execute(
            f"SELECT run_id, experiment, kind, status, started_at, finished_at, total_calls, "
            f"error_calls, total_cost_usd FROM runs {where} "
            "ORDER BY started_at DESC, run_id DESC LIMIT ?",
            [experiment, limit] if experiment else [limit],
        )
        names = [d[0] for d in cur.description]
        return [{k: _json_safe(v) for k, v in zip(names, r, strict=True)} for r in cur.fetchall()]


def _report(db: Path, run_id: str, fmt: str) -> str:
    import json

    with Results(db) as results:
        report = build_report(results, results.run_id(run_id))
    if fmt == "json":
        return json.dumps(to_json(report), default=str)
    return render_markdown(report, str(db))


def _query(db: Path, sql: str) -> dict[str, Any]:
    with Results(db, analyst=True) as results:
        columns, rows = results.query(sql, QUERY_ROWS)
    return {
        "columns": columns,
        "rows": [[_json_safe(v) for v in row] for row in rows[:QUERY_ROWS]],
        "truncated": len(rows) > QUERY_ROWS,
    }


def _json_safe(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    return value
