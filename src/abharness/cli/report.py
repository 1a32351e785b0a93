"""`abharness report [RUN_ID | --last]`: write a run's report (or print it as JSON)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
import duckdb

from ..experiment import EXIT_INVALID
from ..report import RunNotFound, build_report, resolve_run_id, to_json, write_report
from .common import console, db_option, err_console, reports_dir_option


@click.command("report")
@click.argument("run_id", required=False)
@click.option("--last", is_flag=True, help="The most recent run (the default without RUN_ID).")
@click.option("--format", "fmt", type=click.Choice(["md", "json"]), default="md", show_default=True)
@db_option
@reports_dir_option
def command(run_id: str | None, last: bool, fmt: str, db: Path, reports_dir: Path) -> None:
    """Write reports/<experiment>/<RUN_ID>.md, or print the figures as JSON."""
    if not db.exists():
        err_console.print(f"[bold red]error:[/] no database at {db}: run an experiment first")
        sys.exit(EXIT_INVALID)
    con = duckdb.connect(str(db), read_only=True)
    try:
        rid = resolve_run_id(con, None if last else run_id)
        if fmt == "json":
            click.echo(json.dumps(to_json(build_report(con, rid)), indent=2, default=str))
        else:
            console.print(f"report: {write_report(con, rid, reports_dir, str(db))}")
    except RunNotFound as exc:
        err_console.print(f"[bold red]error:[/] {db}: {exc}")
        sys.exit(EXIT_INVALID)
    finally:
        con.close()
