"""Run one experiment end to end: validate, stage, run, merge — or resume one.

Everything that can be wrong with the input is found before the staging file is
created, so invalid input writes nothing. The main database is only opened read-only
until the final merge. Writing the report and choosing the exit code are the CLI's.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import os
import secrets
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from ..errors import CallError, EnvironmentFailure, InvalidInput, StoreWriteError
from ..providers.base import Usage
from ..spec.load import load_spec
from ..store.cache import ResponseCache, open_cache
from ..store.db import MergeResult, staging_dir
from ..store.health import check_main_db
from ..store.queries import Results, RunNotFound
from ..store.recorder import Recorder
from ..store.records import CallRecord
from .arm import CompositePlan, parts_of
from .batch import Tracked
from .plan import Plan, build_plan, check_cases, check_prompt_versions, check_warnings
from .retry import RetryPolicy
from .rows import arm_rows, run_row
from .runner import Runner, RunStats

DEFAULT_DB = Path("results/abharness.duckdb")


def default_db() -> Path:
    return Path(os.environ.get("ABHARNESS_DB") or DEFAULT_DB)


@dataclass
class Outcome:
    run_id: str
    db: Path
    status: str  # completed | incomplete | budget_exhausted | interrupted
    stats: RunStats
    merge: MergeResult
    calls: int  # made, in the database for this run, resumed sessions and judges included
    errors: int  # among the calls made
    not_made: int  # calls never made (an endpoint down, the cost cap): resume makes them
    max_error_rate: float
    warnings: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    resumed_skipped: int = 0
    staging: Path | None = None  # the run's own file, until it is merged
    limits: dict[str, str] = field(default_factory=dict)  # per endpoint, at the end
    concurrency: list[str] = field(default_factory=list)  # models whose concurrency was lowered
    batches_running: list[str] = field(default_factory=list)  # at the provider, not collected

    @property
    def results_path(self) -> Path:
        """Where the run's rows are now: the main database, or its staging file."""
        return self.db if self.merge.merged or self.staging is None else self.staging

    @property
    def error_rate_exceeded(self) -> bool:
        return bool(self.calls) and self.errors / self.calls > self.max_error_rate


def resume_command(run_id: str, db: Path) -> str:
    """The command that completes `run_id`, for the messages that offer it."""
    return f"abharness run --resume {run_id} --db {db}"


def new_run_id() -> str:
    return f"{datetime.now(UTC):%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


def prepare(
    spec_path: str | Path, db: Path, *, allow_changed_prompts: bool = False, batch: bool = False
) -> tuple[Plan, list[str]]:
    """Every pre-call check; raises `InvalidInput` and writes nothing. `batch`:
    ``--batch`` (every arm that can runs in batch mode)."""
    check_main_db(db, writing=False)
    spec = load_spec(spec_path)
    x = spec.experiment
    if x.dataset is None and x.cases is None:
        raise InvalidInput(
            "no dataset: or cases: to run; a spec with only serve: is for `abharness serve`",
            file=spec.path,
        )
    plan = build_plan(spec, batch=batch)
    check_cases(plan)
    warnings = check_prompt_versions(plan, db, allow_changed=allow_changed_prompts)
    return plan, warnings + check_warnings(plan) + plan.live_notes


def _warm_up(plan: Plan) -> threading.Thread:
    """`Plan.warm_up` in a thread, beside the (mostly GIL-free) DuckDB and git work of
    starting a run: `abharness run` reaches its first request sooner (BENCHMARKS.md)."""
    thread = threading.Thread(target=plan.warm_up, name="abharness-warm-up", daemon=True)
    thread.start()
    return thread


def _release_run_memory(plan: Plan) -> None:
    """Give back what the calls needed before the merge and the report (BENCHMARKS.md,
    "Memory"): the tokenizers, then the C heap's free pages (glibc keeps them)."""
    plan.release_tokenizers()
    gc.collect()
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)


@dataclass
class RunOptions:
    """How to run a spec: everything `run_experiment` takes besides the spec, in one
    place (`abharness run`'s flags, nightly's and the MCP server's settings)."""

    db: Path | None = None  # the main database (default: `default_db`)
    allow_changed_prompts: bool = False  # run a name@N whose content changed
    skip_unavailable: bool = False  # leave out arms that cannot run here, not refuse
    on_call: Callable[[CallRecord], None] | None = None  # every record, as it is written
    on_start: Callable[[int], None] | None = None  # the calls to make, once known
    use_cache: bool = True  # the response cache (off for nightly and --no-cache)
    resume: str | None = None  # a run id, or 'last': finish that run
    concurrency: int | None = None  # cap on calls in flight per endpoint
    policy: RetryPolicy | None = None  # retries and circuit breakers (tests shorten them)
    merge_attempts: int = 10  # tries to get the main database's lock at the end
    kind: str = "run"  # runs.kind: run | nightly | mcp
    prepared: tuple[Plan, list[str]] | None = None  # `prepare`'s result, if already checked
    batch: bool = False  # --batch: every arm that can runs in batch mode
    on_batch: Callable[[Tracked], None] | None = None  # every change of a batch's state
    batch_deadline_s: float | None = None  # stop polling batches after this long


def run_experiment(
    spec_path: str | Path | None = None,
    options: RunOptions | None = None,
    /,
    **overrides: Any,
) -> Outcome:
    """Run `spec_path`, or with ``options.resume`` (a run id or 'last') finish an earlier
    run. ``options.kind`` is recorded in ``runs.kind`` (``nightly`` for `abharness
    nightly`); ``prepared`` is `prepare`'s result when the caller has already checked the
    spec. `overrides` are `RunOptions` fields by name (``db=..., use_cache=False``),
    replacing those of `options`; an unknown name is a TypeError.

    ``batch`` is ``--batch``; a resumed run runs its arms as it first did. ``on_batch``
    hears of every change of a batch's state; ``batch_deadline_s`` stops polling after
    that long (the batches run on; resume collects them).

    Raises `InvalidInput` (nothing written) for a bad spec, and for arms that cannot
    run here (an API key unset) unless ``skip_unavailable`` leaves them out."""
    o = replace(options or RunOptions(), **overrides)
    return _run(spec_path, o, o.db or default_db())


def _run(spec_path: str | Path | None, o: RunOptions, db: Path) -> Outcome:
    check_main_db(db)  # a junk, foreign or newer database is refused before anything is paid
    skip: set[str] = set()
    if o.resume is not None:
        run_id, recorded_path, recorded_hash, batched = _find_resumable(o.resume, db)
        spec_path = recorded_path
        plan, warnings = prepare(
            spec_path, db, allow_changed_prompts=o.allow_changed_prompts, batch=batched
        )
        if plan.spec.hash != recorded_hash:
            raise InvalidInput(
                f"the spec changed since run {run_id} started; resume needs the same spec",
                file=spec_path,
            )
        plan.drop_unavailable(o.skip_unavailable)
        warm = _warm_up(plan)
        recorder, skip = Recorder.resume(db, run_id)
    else:
        assert spec_path is not None
        plan, warnings = o.prepared or prepare(
            spec_path, db, allow_changed_prompts=o.allow_changed_prompts, batch=o.batch
        )
        not_run = plan.drop_unavailable(o.skip_unavailable)
        warm = _warm_up(plan)
        run_id = new_run_id()
        recorder = Recorder.start(db, run_id, run_row(plan, o.kind), arm_rows(plan, not_run))
    if o.on_start:
        o.on_start(plan.n_calls - len(skip))
    cache: ResponseCache | None = None
    if o.use_cache:
        cache, why_not = open_cache(db.parent / "cache.duckdb")
        if why_not:
            warnings.append(why_not)
    warm.join()
    runner = Runner(
        plan,
        recorder.store,
        run_id,
        on_call=o.on_call,
        cache=cache,
        skip=skip,
        concurrency=o.concurrency,
        policy=o.policy,
        on_batch=o.on_batch,
        batch_deadline_s=o.batch_deadline_s,
    )
    try:
        stats = asyncio.run(runner.run())
        status = runner.status
    except KeyboardInterrupt:  # no signal handler (not the main thread): still stop cleanly
        stats, status = runner.stats, "interrupted"
    except StoreWriteError as exc:  # left 'running' in its staging file: resumable
        with contextlib.suppress(Exception):
            recorder.close()
        exc.resume = resume_command(run_id, db)
        raise
    finally:
        if cache is not None:
            cache.close()
    _release_run_memory(plan)
    recorder.finish(status, wall_time_s=stats.wall_time_s)
    staging = recorder.path
    recorder.close()
    try:
        merged = recorder.merge(attempts=o.merge_attempts)
    except EnvironmentFailure as exc:  # the run is whole in its staging file
        merged = MergeResult(False, {}, str(exc), failed=True)
    except KeyboardInterrupt:  # the merge is one transaction: rolled back, nothing lost
        status = "interrupted"
        merged = MergeResult(
            False,
            {},
            f"interrupted during the merge: nothing was lost, the run is whole in {staging}; "
            f"`abharness merge --db {db}` finishes it",
        )
    with Results(db if merged.merged else staging) as results:
        calls, errors, not_made = results.totals(run_id)
    return Outcome(
        run_id,
        db,
        status,
        stats,
        merged,
        calls,
        errors,
        not_made,
        plan.spec.experiment.max_error_rate,
        warnings,
        runner.failures(),
        len(skip),
        staging,
        runner.limits(),
        runner.concurrency(),
        [t.describe() for t in runner.batches_running()],
    )


def _find_resumable(ref: str, db: Path) -> tuple[str, Path, str, bool]:
    """(run id, spec path, spec hash, whether an arm ran in batch mode) of the run to
    resume; reads only.

    A crashed run still has its staging file; a stopped run was merged into `db`."""
    leftovers = {p.stem: p for p in staging_dir(db).glob("*.duckdb")}
    in_main: set[str] = set()
    if db.exists():
        with Results(db) as results:
            in_main = results.run_ids()
    candidates = leftovers.keys() | in_main
    run_id = max(candidates, default=None) if ref == "last" else ref
    if run_id is None or run_id not in candidates:
        raise InvalidInput(
            f"no run {ref!r} to resume (looked in {db} and {staging_dir(db)})", file=db
        )
    leftover = leftovers.get(run_id)
    with Results(leftover or db) as results:
        try:
            run = results.run(run_id)
        except RunNotFound as exc:
            raise InvalidInput(f"no run record for {run_id}", file=leftover or db) from exc
        batched = results.batched_arms(run_id)
    return run_id, Path(run["spec_path"]), str(run["spec_hash"]), bool(batched)


@dataclass
class Projection:
    arm_id: str
    calls: int = 0
    est_input_tokens: int = 0
    min_usd: Decimal = Decimal(0)
    max_usd: Decimal = Decimal(0)
    priced: bool = True
    unfit: int = 0
    not_run: str | None = None  # why this arm cannot run here (an API key unset)


def dry_run(
    spec_path: str | Path, db: Path | None = None, *, batch: bool = False
) -> tuple[list[Projection], list[str]]:
    """Render and fit every call and project its cost range (a batch arm's at its batch
    price); make no call, write nothing.

    The low end prices the estimated input with no output; the high end adds
    ``max_tokens`` of output to every call."""
    plan, warnings = prepare(spec_path, db or default_db(), batch=batch)
    out = {a.id: Projection(a.id) for a in plan.arms}
    missing = dict(plan.unavailable())
    for part, why in missing.items():
        owner = part.parent or part.id
        if owner in out:
            out[owner].not_run = why
        else:
            warnings.append(f"{part.id} cannot run here: {why}; the run would refuse the spec")
    runnable = [a for a in plan.arms if not any(p in missing for p in parts_of(a))]
    n = plan.spec.experiment.repeats
    for case in plan.cases():
        for arm in runnable:
            p = out[arm.id]
            first = parts_of(arm)[0]  # a composite's members and routes get the same prompt
            try:
                est = first.fit(case).est_input_tokens
            except CallError:
                p.unfit += n
                continue
            # the least: the prompt read and nothing written, by every member and the
            # synthesizer of a panel, by the first model of a route
            panel = isinstance(arm, CompositePlan) and arm.kind == "panel"
            asked = (
                [*arm.members, arm.synthesizer]
                if isinstance(arm, CompositePlan) and panel
                else [first]
            )
            lows = [a.cost(Usage(input_tokens=est, output_tokens=0))[0] for a in asked]
            p.priced = p.priced and all(low is not None for low in lows)
            p.calls += n
            p.est_input_tokens += est * n
            p.min_usd += sum((low or Decimal(0) for low in lows), Decimal(0)) * n
            p.max_usd += arm.worst_case_cost(est) * n
    return list(out.values()), warnings
