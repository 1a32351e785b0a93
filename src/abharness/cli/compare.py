"""`abharness compare RUN_A RUN_B`: apply the spec's gates; exit 3 on a regression."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from ..shell import EXIT_REGRESSION, console, db_option, err_console, one_line_errors

if TYPE_CHECKING:
    from ..report.compare import RunComparison


@click.command("compare")
@click.argument("run_a")
@click.argument("run_b")
@db_option
@click.option(
    "--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True
)
@one_line_errors
def command(run_a: str, run_b: str, db: Path, fmt: str) -> None:
    """Compare RUN_B (candidate) with RUN_A (reference) on the experiment's gates.

    Either may be a run id, `last` (the latest run) or `previous` (the run before the
    latest of the same experiment): `abharness compare previous last`."""
    from ..report.compare import compare_runs
    from ..store.queries import Results

    with Results(db) as results:
        a, b = results.run_id(run_a), results.run_id(run_b)
        comparison = compare_runs(results, a, b)
    if fmt == "json":
        click.echo(json.dumps(comparison.as_json(), indent=2))
    else:
        print_comparison(comparison)
    sys.exit(EXIT_REGRESSION if comparison.failed else 0)


def print_comparison(c: RunComparison, title: str | None = None) -> None:
    """The gates as a table, the regressed cases, notes; failing gates last."""
    from rich.table import Table

    for note in c.notes:
        err_console.print(f"[yellow]{note}[/]" if note.endswith(":") or "only in" in note else note)
    table = Table(title=title or f"{c.candidate} against {c.reference}")
    for col in ("arm", "gate", "threshold", "value", "catches (80% power)", "result"):
        table.add_column(col)
    for g in c.gates:
        style = {"FAIL": "bold red", "pass": "green"}.get(g.status, "bold yellow")
        table.add_row(
            g.arm_id, g.gate, g.threshold, g.value, g.detectable or "–", f"[{style}]{g.status}[/]"
        )
    console.print(table)
    for warning in c.warnings:
        err_console.print(f"[yellow]warning:[/] {warning}", soft_wrap=True)
    for arm, cases in c.regressed.items():
        if cases:
            shown = ", ".join(cases[:15]) + (
                f" and {len(cases) - 15} more" if len(cases) > 15 else ""
            )
            console.print(f"{arm}: {len(cases)} case(s) passed less often than before: {shown}")
    if not c.gates:
        console.print("no gates in the spec: nothing to check")
    for g in c.not_evaluated:
        err_console.print(f"[bold yellow]NOT EVALUATED[/] {g.arm_id} {g.gate}: {g.value}")
    if c.failed:
        for g in c.failed:
            err_console.print(f"[bold red]FAIL[/] {g.arm_id} {g.gate} {g.threshold}: {g.value}")
    else:
        console.print("[green]no regression[/]")
