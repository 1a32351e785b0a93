"""`abharness run SPEC`: run an experiment, merge it into the database, write its report."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ..experiment import run_experiment
from .common import console, db_option, err_console, invalid_input_exits, reports_dir_option


@click.command("run")
@click.argument("spec", type=click.Path(path_type=Path))
@db_option
@reports_dir_option
@click.option(
    "--allow-changed-prompts",
    is_flag=True,
    help="Run a name@N whose content differs from the one recorded in the database.",
)
@invalid_input_exits
def command(spec: Path, db: Path, reports_dir: Path, allow_changed_prompts: bool) -> None:
    """Run the experiment SPEC (a YAML file)."""
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[errors]} errors"),
        TimeElapsedColumn(),
        console=err_console,
        transient=False,
    )
    task = progress.add_task(spec.name, total=None, errors=0)
    errors = 0

    def on_start(total: int) -> None:  # only once every input check has passed
        progress.update(task, total=total)
        progress.start()

    def on_call(row: dict[str, Any]) -> None:
        nonlocal errors
        errors += row["status"] == "error"
        progress.update(task, advance=1, errors=errors)

    try:
        outcome = run_experiment(
            spec,
            db=db,
            reports_dir=reports_dir,
            allow_changed_prompts=allow_changed_prompts,
            on_call=on_call,
            on_start=on_start,
        )
    finally:
        progress.stop()
    for w in outcome.warnings:
        err_console.print(f"[yellow]warning:[/] {w}")
    s = outcome.stats
    console.print(
        f"run id:   {outcome.run_id}  ({outcome.status}, {s.calls} calls, {s.ok} ok, "
        f"{s.error_count} errors, {s.wall_time_s:.1f} s)"
    )
    for etype, n in sorted(s.errors.items()):
        console.print(f"  {n} × {etype}")
    for failure in outcome.failures:
        err_console.print(f"[red]not run:[/] {failure}")
    console.print(f"database: {outcome.db}")
    if not outcome.merge.merged:
        err_console.print(f"[yellow]warning:[/] {outcome.merge.message}")
    if outcome.report:
        console.print(f"report:   {outcome.report}")
    if outcome.status == "interrupted":
        err_console.print("interrupted: calls made so far are saved.")
    elif outcome.exit_code == 2:
        err_console.print("[red]error rate above the spec's max_error_rate[/]")
    sys.exit(outcome.exit_code)
