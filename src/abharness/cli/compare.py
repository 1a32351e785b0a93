"""`abharness compare RUN_A RUN_B`: apply the spec's gates; exit 3 on a regression."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from .common import EXIT_REGRESSION, console, db_option, invalid_input_exits


@click.command("compare")
@click.argument("run_a")
@click.argument("run_b")
@db_option
@click.option(
    "--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True
)
@invalid_input_exits
def command(run_a: str, run_b: str, db: Path, fmt: str) -> None:
    """Compare RUN_B (candidate) with RUN_A (reference) on the experiment's gates."""
    from rich.table import Table

    from ..report.compare import compare_runs
    from ..store.queries import Results

    with Results(db) as db_results:
        results = compare_runs(db_results, run_a, run_b)
    failed = [r for r in results if r.passed is False]
    if fmt == "json":
        click.echo(
            json.dumps(
                {
                    "run_a": run_a,
                    "run_b": run_b,
                    "regression": bool(failed),
                    "gates": [
                        {
                            "arm_id": r.arm_id,
                            "gate": r.gate,
                            "threshold": r.threshold,
                            "value": r.value,
                            "status": r.status,
                        }
                        for r in results
                    ],
                },
                indent=2,
            )
        )
    else:
        table = Table(title=f"{run_b} against {run_a}")
        for col in ("arm", "gate", "threshold", "value", "result"):
            table.add_column(col)
        for r in results:
            style = {"FAIL": "bold red", "pass": "green"}.get(r.status, "yellow")
            table.add_row(r.arm_id, r.gate, r.threshold, r.value, f"[{style}]{r.status}[/]")
        console.print(table)
        if not results:
            console.print("no gates in the spec: nothing to check")
        console.print(
            f"[bold red]regression:[/] {len(failed)} gate(s) failed"
            if failed
            else "[green]no regression[/]"
        )
    sys.exit(EXIT_REGRESSION if failed else 0)
