"""`abharness report [RUN_ID | --last]`: write a run's report (or print it as JSON)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..shell import console, db_option, one_line_errors, reports_dir_option


@click.command("report")
@click.argument("run_id", required=False)
@click.option("--last", is_flag=True, help="The most recent run (the default without RUN_ID).")
@click.option("--format", "fmt", type=click.Choice(["md", "json"]), default="md", show_default=True)
@db_option
@reports_dir_option
@one_line_errors
def command(run_id: str | None, last: bool, fmt: str, db: Path, reports_dir: Path) -> None:
    """Write reports/<experiment>/<RUN_ID>.md and .html, or print the figures as JSON."""
    from ..report.build import build_report, to_json, write_report
    from ..store.queries import Results

    with Results(db) as results:
        rid = results.run_id(None if last else run_id)
        if fmt == "json":
            click.echo(json.dumps(to_json(build_report(results, rid)), indent=2, default=str))
        else:
            console.print(f"report: {write_report(results, rid, reports_dir, str(db))}")
