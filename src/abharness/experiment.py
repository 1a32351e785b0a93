"""Run one experiment end to end: validate, stage, run, merge, report.

Everything that can be wrong with the input is found before the staging file is
created, so invalid input writes nothing (exit 1). The main database is only opened
read-only until the final merge.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import socket
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb

from . import __version__
from .plan import Plan, build_plan, check_cases, check_prompt_versions, check_warnings
from .report import write_report
from .runner import Runner, RunStats
from .spec import load_spec
from .store import MergeResult, Store, merge, staging_dir

DEFAULT_DB = Path("results/abharness.duckdb")
DEFAULT_REPORTS = Path("reports")

EXIT_OK, EXIT_INVALID, EXIT_ERRORS, EXIT_REGRESSION, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


def default_db() -> Path:
    return Path(os.environ.get("ABHARNESS_DB") or DEFAULT_DB)


@dataclass
class Outcome:
    run_id: str
    db: Path
    status: str
    stats: RunStats
    merge: MergeResult
    report: Path | None
    exit_code: int
    warnings: list[str]
    failures: list[str]


def new_run_id() -> str:
    return f"{datetime.now(UTC):%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


def prepare(
    spec_path: str | Path, db: Path, *, allow_changed_prompts: bool = False
) -> tuple[Plan, list[str]]:
    """Every pre-call check; raises `InvalidInput` and writes nothing."""
    spec = load_spec(spec_path)
    plan = build_plan(spec)
    check_cases(plan)
    warnings = check_prompt_versions(plan, db, allow_changed=allow_changed_prompts)
    return plan, warnings + check_warnings(plan)


def _git_sha(where: Path) -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _record_start(store: Store, plan: Plan, run_id: str) -> None:
    spec = plan.spec
    x = spec.experiment
    store.insert(
        "runs",
        [
            {
                "run_id": run_id,
                "experiment": x.name,
                "description": x.description,
                "status": "running",
                "started_at": datetime.now(UTC).replace(tzinfo=None),
                "spec_hash": spec.hash,
                "spec_yaml": spec.source,
                "spec_path": str(spec.path),
                "git_sha": _git_sha(spec.path.parent),
                "harness_version": __version__,
                "host": socket.gethostname(),
                "total_calls": plan.n_calls,
            }
        ],
    )
    store.insert(
        "arms",
        [
            {
                "run_id": run_id,
                "arm_id": a.id,
                "provider": a.endpoint_name,
                "endpoint": a.endpoint.base_url,
                "model": a.arm.model,
                "tier": a.tier,
                "prompt_name": a.template.name,
                "prompt_version": a.template.version,
                "prompt_hash": a.template.hash,
                "params_json": json.dumps(a.params.model_dump(exclude_none=True)),
                "is_baseline": a.is_baseline,
                "position": i,
            }
            for i, a in enumerate(plan.arms)
        ],
    )


def run_experiment(
    spec_path: str | Path,
    *,
    db: Path | None = None,
    reports_dir: Path = DEFAULT_REPORTS,
    allow_changed_prompts: bool = False,
    on_call: Callable[[dict[str, Any]], None] | None = None,
    on_start: Callable[[int], None] | None = None,
    write_report_file: bool = True,
) -> Outcome:
    db = db or default_db()
    plan, warnings = prepare(spec_path, db, allow_changed_prompts=allow_changed_prompts)
    if on_start:
        on_start(plan.n_calls)
    run_id = new_run_id()
    staging = staging_dir(db) / f"{run_id}.duckdb"
    store = Store(staging)
    _record_start(store, plan, run_id)
    runner = Runner(plan, store, run_id, on_call=on_call)
    status = "completed"
    try:
        stats = asyncio.run(runner.run())
    except KeyboardInterrupt:
        status, stats = "interrupted", runner.stats
    store.update_run(
        run_id,
        status=status,
        finished_at=datetime.now(UTC).replace(tzinfo=None),
        total_cost_usd=stats.cost_usd,
        error_calls=stats.error_count,
        wall_time_s=stats.wall_time_s,
        cached_calls=0,
    )
    store.close()
    merged = merge(staging, db)
    report = None
    if merged.merged and write_report_file:
        con = duckdb.connect(str(db), read_only=True)
        try:
            report = write_report(con, run_id, reports_dir, str(db))
        finally:
            con.close()
    if status == "interrupted":
        code = EXIT_INTERRUPTED
    elif stats.calls and stats.error_count / stats.calls > plan.spec.experiment.max_error_rate:
        code = EXIT_ERRORS
    else:
        code = EXIT_OK
    return Outcome(
        run_id, db, status, stats, merged, report, code, warnings, runner.load_failures()
    )
