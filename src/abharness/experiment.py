"""Run one experiment end to end: validate, stage, run, merge, report — or resume one.

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
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb

from . import __version__
from .cache import ResponseCache, open_cache
from .errors import CallError, InvalidInput
from .plan import Plan, build_plan, check_cases, check_prompt_versions, check_warnings
from .providers.base import Usage
from .report import write_report
from .retry import RetryPolicy
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
    warnings: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    resumed_skipped: int = 0


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
    return (out.stdout.strip() or None) if out.returncode == 0 else None


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
                "spec_path": str(spec.path.resolve()),
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
                "role": role,
            }
            for i, (a, role) in enumerate(
                [(a, "arm") for a in plan.arms] + [(j, "judge") for j in plan.judges.values()]
            )
        ],
    )


def run_experiment(
    spec_path: str | Path | None = None,
    *,
    db: Path | None = None,
    reports_dir: Path = DEFAULT_REPORTS,
    allow_changed_prompts: bool = False,
    on_call: Callable[[dict[str, Any]], None] | None = None,
    on_start: Callable[[int], None] | None = None,
    write_report_file: bool = True,
    use_cache: bool = True,
    resume: str | None = None,
    concurrency: int | None = None,
    policy: RetryPolicy | None = None,
    merge_attempts: int = 10,
) -> Outcome:
    """Run `spec_path`, or with `resume` (a run id or 'last') finish an earlier run."""
    db = db or default_db()
    skip: set[str] = set()
    if resume is not None:
        run_id, recorded_path, recorded_hash, leftover = _find_resumable(resume, db)
        spec_path = recorded_path
        plan, warnings = prepare(spec_path, db, allow_changed_prompts=allow_changed_prompts)
        if plan.spec.hash != recorded_hash:
            raise InvalidInput(
                f"the spec changed since run {run_id} started; resume needs the same spec",
                file=spec_path,
            )
        store, skip = _open_for_resume(run_id, db, leftover)
        store.update_run(run_id, status="running")
    else:
        assert spec_path is not None
        plan, warnings = prepare(spec_path, db, allow_changed_prompts=allow_changed_prompts)
        run_id = new_run_id()
        store = Store(staging_dir(db) / f"{run_id}.duckdb")
        _record_start(store, plan, run_id)
    if on_start:
        on_start(plan.n_calls - len(skip))
    cache: ResponseCache | None = None
    if use_cache:
        cache, why_not = open_cache(db.parent / "cache.duckdb")
        if why_not:
            warnings.append(why_not)
    runner = Runner(
        plan,
        store,
        run_id,
        on_call=on_call,
        cache=cache,
        skip=skip,
        concurrency=concurrency,
        policy=policy,
    )
    try:
        stats = asyncio.run(runner.run())
        status = runner.status
    except KeyboardInterrupt:  # no signal handler (not the main thread): still stop cleanly
        stats, status = runner.stats, "interrupted"
    finally:
        if cache is not None:
            cache.close()
    store.update_run(
        run_id,
        status=status,
        finished_at=datetime.now(UTC).replace(tzinfo=None),
        wall_time_s=stats.wall_time_s,
    )
    staging = store.path
    store.close()
    merged = merge(staging, db, attempts=merge_attempts)
    totals = _totals(db if merged.merged else staging, run_id)
    report = None
    if merged.merged and write_report_file:
        con = duckdb.connect(str(db), read_only=True)
        try:
            report = write_report(con, run_id, reports_dir, str(db))
        finally:
            con.close()
    if status == "interrupted":
        code = EXIT_INTERRUPTED
    elif (
        totals["calls"] and totals["errors"] / totals["calls"] > plan.spec.experiment.max_error_rate
    ):
        code = EXIT_ERRORS
    else:
        code = EXIT_OK
    return Outcome(
        run_id, db, status, stats, merged, report, code, warnings, runner.failures(), len(skip)
    )


def _totals(path: Path, run_id: str) -> dict[str, int]:
    con = duckdb.connect(str(path), read_only=True)
    try:
        calls, errors = con.execute(
            "SELECT count(*), count(*) FILTER (WHERE status = 'error') FROM calls WHERE run_id = ?",
            [run_id],
        ).fetchone()  # type: ignore[misc]
    finally:
        con.close()
    return {"calls": calls, "errors": errors}


FINISHED_SQL = "SELECT call_id FROM {calls} WHERE run_id = ? AND (attempts > 0 OR cache_hit)"


def _find_resumable(ref: str, db: Path) -> tuple[str, Path, str, Path | None]:
    """(run id, spec path, spec hash, leftover staging file) of the run to resume; reads only.

    A crashed run still has its staging file; a stopped run was merged into `db`."""
    leftovers = {p.stem: p for p in staging_dir(db).glob("*.duckdb")}
    in_main: set[str] = set()
    if db.exists():
        con = duckdb.connect(str(db), read_only=True)
        try:
            in_main = {r[0] for r in con.execute("SELECT run_id FROM runs").fetchall()}
        finally:
            con.close()
    candidates = leftovers.keys() | in_main
    run_id = max(candidates, default=None) if ref == "last" else ref
    if run_id is None or run_id not in candidates:
        raise InvalidInput(
            f"no run {ref!r} to resume (looked in {db} and {staging_dir(db)})", file=db
        )
    leftover = leftovers.get(run_id)
    con = duckdb.connect(str(leftover or db), read_only=True)
    try:
        row = con.execute(
            "SELECT spec_path, spec_hash FROM runs WHERE run_id = ?", [run_id]
        ).fetchone()
    finally:
        con.close()
    if row is None:
        raise InvalidInput(f"no run record for {run_id}", file=leftover or db)
    return run_id, Path(row[0]), str(row[1]), leftover


def _open_for_resume(run_id: str, db: Path, leftover: Path | None) -> tuple[Store, set[str]]:
    """A staging store for the run and its finished keys.

    A key is finished if it was attempted (or served from the cache): calls never made
    (budget, credentials) are made on resume. A merged run is copied into a fresh
    staging file; its earlier calls stay in the main database and are not copied."""
    if leftover is not None:
        store = Store(leftover)
        rows = store.con.execute(FINISHED_SQL.format(calls="calls"), [run_id]).fetchall()
        return store, {r[0] for r in rows}
    store = Store(staging_dir(db) / f"{run_id}.duckdb")
    store.con.execute(f"ATTACH '{db}' AS main_db (READ_ONLY)")
    try:
        for table in ("runs", "arms"):
            store.con.execute(
                f"INSERT OR REPLACE INTO {table} SELECT * FROM main_db.{table} WHERE run_id = ?",
                [run_id],
            )
        rows = store.con.execute(FINISHED_SQL.format(calls="main_db.calls"), [run_id]).fetchall()
    finally:
        store.con.execute("DETACH main_db")
    return store, {r[0] for r in rows}


@dataclass
class Projection:
    arm_id: str
    calls: int = 0
    est_input_tokens: int = 0
    min_usd: Decimal = Decimal(0)
    max_usd: Decimal = Decimal(0)
    priced: bool = True
    unfit: int = 0


def dry_run(spec_path: str | Path, db: Path | None = None) -> tuple[list[Projection], list[str]]:
    """Render and fit every call and project its cost range; make no call, write nothing.

    The low end prices the estimated input with no output; the high end adds
    ``max_tokens`` of output to every call."""
    plan, warnings = prepare(spec_path, db or default_db())
    out = {a.id: Projection(a.id) for a in plan.arms}
    for case in plan.cases():
        for arm in plan.arms:
            p = out[arm.id]
            try:
                est = arm.fit(case).est_input_tokens
            except CallError:
                p.unfit += plan.spec.experiment.repeats
                continue
            low, _ = arm.cost(Usage(input_tokens=est, output_tokens=0))
            p.priced = p.priced and low is not None
            n = plan.spec.experiment.repeats
            p.calls += n
            p.est_input_tokens += est * n
            p.min_usd += (low or Decimal(0)) * n
            p.max_usd += arm.worst_case_cost(est) * n
    return list(out.values()), warnings
