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
    from ..store.health import classify

    failed = 0
    for staging in leftovers:
        try:
            result = merge(staging, db)
        except Exception as exc:
            if classify(exc) != "busy" or str(staging) not in str(exc):
                raise
            # its own process holds it: a run still going, or `abharness serve`
            console.print(
                f"skipped {staging.name}: in use by a running process (a run, or abharness "
                "serve, which merges it itself)"
            )
            continue
        if result.merged:
            console.print(f"merged {staging.name}: {result.rows.get('calls', 0)} calls")
        else:
            failed += 1
            err_console.print(f"[yellow]not merged:[/] {result.message}")
    sys.exit(EXIT_INVALID if failed else EXIT_OK)
