"""`abharness run SPEC`: run an experiment, merge it into the database, write its report.

`--resume RUN_ID|last` finishes a crashed or stopped run; `--dry-run` projects costs.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.markup import escape

from ..errors import StoreWriteError
from ..shell import (
    EXIT_ENVIRONMENT,
    EXIT_ERRORS,
    EXIT_INCOMPLETE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    console,
    db_option,
    err_console,
    one_line_errors,
    reports_dir_option,
)

if TYPE_CHECKING:
    from rich.progress import TaskID

    from ..run.batch import Tracked
    from ..store.records import CallRecord


@click.command("run")
@click.argument("spec", type=click.Path(path_type=Path), required=False)
@db_option
@reports_dir_option
@click.option(
    "--resume",
    metavar="RUN_ID|last",
    help="Finish an earlier run without repeating a finished call.",
)
@click.option("--no-cache", is_flag=True, help="Neither read nor write the response cache.")
@click.option(
    "--dry-run",
    is_flag=True,
    help="Render and fit every call, print the projected cost range; call nothing.",
)
@click.option(
    "--concurrency",
    type=click.IntRange(min=1),
    help="At most this many calls in flight per endpoint.",
)
@click.option(
    "--allow-changed-prompts",
    is_flag=True,
    help="Run a name@N whose content differs from the one recorded in the database.",
)
@click.option(
    "--skip-unavailable",
    is_flag=True,
    help="Run the arms that can run here; report the others (e.g. API key unset) as not run.",
)
@click.option(
    "--batch",
    is_flag=True,
    help="Every arm whose provider has a batch API runs through it, at the batch price "
    "(SPEC §13); the others run live.",
)
@one_line_errors
def command(
    spec: Path | None,
    db: Path,
    reports_dir: Path,
    resume: str | None,
    no_cache: bool,
    dry_run: bool,
    concurrency: int | None,
    allow_changed_prompts: bool,
    skip_unavailable: bool,
    batch: bool,
) -> None:
    """Run the experiment SPEC (a YAML file), or --resume an earlier run."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ..errors import InvalidInput
    from ..run.experiment import RunOptions, resume_command, run_experiment

    if (spec is None) == (resume is None):
        raise InvalidInput(
            "give a SPEC to run, or --resume RUN_ID|last (not both)", file="abharness run"
        )
    if dry_run:
        if spec is None:
            raise InvalidInput("--dry-run needs a SPEC", file="abharness run")
        _dry_run(spec, db, batch)
        return
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[errors]} errors"),
        TimeElapsedColumn(),
        console=err_console,
        transient=False,
        refresh_per_second=4,
    )
    task = progress.add_task((spec.name if spec else f"resume {resume}"), total=None, errors=0)
    errors = 0

    def on_start(total: int) -> None:  # only once every input check has passed
        progress.update(task, total=total)
        progress.start()

    def on_call(record: CallRecord) -> None:
        nonlocal errors
        errors += not record.ok and record.made  # a call never made is not an error
        progress.update(task, advance=record.role == "arm", errors=errors)

    batch_rows: dict[str, TaskID] = {}

    def on_batch(tracked: Tracked) -> None:  # a row per batch: its state and counts
        done, total = tracked.progress()
        row = batch_rows.get(tracked.row.batch_key)
        if row is None:
            row = batch_rows[tracked.row.batch_key] = progress.add_task("", errors=0)
        progress.update(
            row,
            description=tracked.describe(),
            completed=done,
            total=total,
            errors=tracked.failed(),
        )

    try:
        options = RunOptions(
            db=db,
            allow_changed_prompts=allow_changed_prompts,
            skip_unavailable=skip_unavailable,
            on_call=on_call,
            on_start=on_start,
            use_cache=not no_cache,
            resume=resume,
            concurrency=concurrency,
            batch=batch,
            on_batch=on_batch,
        )
        outcome = run_experiment(spec, options)
    except StoreWriteError as exc:
        progress.stop()
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", soft_wrap=True)
        err_console.print(
            "the run stopped; every call that finished is kept (its journal beside the staging "
            f"file). When there is room, resume with:\n  {exc.resume}"
        )
        sys.exit(EXIT_ENVIRONMENT)
    finally:
        progress.stop()
    for w in outcome.warnings:
        err_console.print(f"[yellow]warning:[/] {w}")
    s = outcome.stats
    resumed = f", {outcome.resumed_skipped} already done" if resume else ""
    judges = f" ({s.judge_calls} by judges)" if s.judge_calls else ""
    never = f", {s.not_made_count} never made" if s.not_made_count else ""
    console.print(
        f"run id:   {outcome.run_id}  ({outcome.status}, {s.calls} calls{judges}{resumed}, "
        f"{s.ok} ok ({s.cache_hits} from cache), {s.error_count} errors{never}, "
        f"{s.attempts} attempts, {s.cost_usd:.4f} USD, {s.wall_time_s:.1f} s)"
    )
    for etype, n in sorted(s.errors.items()):
        console.print(f"  {n} × {etype}")
    for etype, n in sorted(s.not_made.items()):
        console.print(f"  {n} never made ({etype}: see below)")
    for endpoint, limits in outcome.limits.items():
        console.print(f"limits:   {endpoint}: {limits}", markup=False)
    for line in outcome.concurrency:
        console.print(f"adapted:  {line}", markup=False)
    for note in s.usage_notes():
        err_console.print(f"[yellow]usage:[/]    {escape(note)}")
    for failure in outcome.failures:
        err_console.print(f"[red]not run:[/] {failure}")
    console.print(f"database: {outcome.db}")
    if outcome.merge.merged:
        from ..report.build import write_report  # scipy: imported after the run, not before
        from ..store.queries import Results

        with Results(outcome.db) as results:
            console.print(
                f"report:   {write_report(results, outcome.run_id, reports_dir, str(db))}"
            )
    elif outcome.merge.failed:
        err_console.print(f"[bold red]error:[/] {escape(outcome.merge.message)}", soft_wrap=True)
        sys.exit(EXIT_ENVIRONMENT)
    else:
        err_console.print(f"[yellow]warning:[/] {escape(outcome.merge.message)}")
    if outcome.batches_running:
        err_console.print(
            f"[yellow]{_batches(len(outcome.batches_running))} still running at the provider, "
            "and billed:[/] resume collects their results (it never sends their calls again); "
            "`abharness batches cancel RUN_ID` cancels them"
        )
        for line in outcome.batches_running:
            err_console.print(f"  {escape(line)}")
    if outcome.status == "interrupted":
        err_console.print(
            "interrupted: finished calls are saved. Resume with:\n"
            f"  {resume_command(outcome.run_id, outcome.db)}"
        )
        sys.exit(EXIT_INTERRUPTED)
    if outcome.status == "budget_exhausted":
        err_console.print(
            "[red]max_cost_usd reached:[/] calls not made are recorded with error_type 'budget'"
        )
    if outcome.error_rate_exceeded:
        err_console.print(
            f"[red]error rate {outcome.errors}/{outcome.calls} of the calls made is above the "
            f"spec's max_error_rate {outcome.max_error_rate:g}[/]"
        )
        sys.exit(EXIT_ERRORS)
    if outcome.status == "incomplete":
        why = (
            f"{_calls(outcome.not_made)} never made (not errors: an endpoint or model "
            "stopped, above). When it is back"
            if outcome.not_made
            else "batches are still running (above). Later"
        )
        err_console.print(
            f"[red]incomplete:[/] {why}, resume with:\n"
            f"  {resume_command(outcome.run_id, outcome.db)}"
        )
        sys.exit(EXIT_INCOMPLETE)
    sys.exit(EXIT_OK)


def _calls(n: int) -> str:
    return f"{n} call was" if n == 1 else f"{n} calls were"


def _batches(n: int) -> str:
    return "1 batch is" if n == 1 else f"{n} batches are"


def _dry_run(spec: Path, db: Path, batch: bool) -> None:
    from rich.table import Table

    from ..run.experiment import dry_run

    projections, warnings = dry_run(spec, db, batch=batch)
    for w in warnings:
        err_console.print(f"[yellow]warning:[/] {w}")
    table = Table(title=f"dry run of {spec}: no call made")
    for col in ("arm", "calls", "est. input tokens", "min USD", "max USD", "cannot fit"):
        table.add_column(col, justify="left" if col == "arm" else "right")
    lo = hi = 0.0
    for p in projections:
        if p.not_run:
            table.add_row(p.arm_id, "not run", "", "", "", "", style="red")
            continue
        price = (lambda v: f"{v:.4f}") if p.priced else (lambda v: "no price")
        table.add_row(
            p.arm_id,
            str(p.calls),
            f"{p.est_input_tokens:,}",
            price(p.min_usd),
            price(p.max_usd),
            str(p.unfit),
        )
        lo, hi = lo + float(p.min_usd), hi + float(p.max_usd)
    table.add_row("total", str(sum(p.calls for p in projections)), "", f"{lo:.4f}", f"{hi:.4f}", "")
    console.print(table)
    for p in projections:
        if p.not_run:
            err_console.print(f"[red]not run:[/] {p.arm_id}: {p.not_run}")
