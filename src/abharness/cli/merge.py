"""`abharness merge`: merge staging files left by runs that could not get the database lock."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ..shell import EXIT_INVALID, EXIT_OK, console, db_option, err_console, one_line_errors


@click.command("merge")
@db_option
@one_line_errors
def command(db: Path) -> None:
    """Merge every leftover staging file into the database (idempotent)."""
    from ..store.db import merge, staging_dir

    leftovers = sorted(staging_dir(db).glob("*.duckdb"))
    if not leftovers:
        console.print("nothing to merge")
        return
    failed = 0
    for staging in leftovers:
        result = merge(staging, db)
        if result.merged:
            console.print(f"merged {staging.name}: {result.rows.get('calls', 0)} calls")
        else:
            failed += 1
            err_console.print(f"[yellow]not merged:[/] {result.message}")
    sys.exit(EXIT_INVALID if failed else EXIT_OK)
