"""`abharness sql "SELECT ..."`: query the results database read-only and print a table."""

from __future__ import annotations

import sys
from pathlib import Path

import click
import duckdb
from rich.table import Table

from ..experiment import EXIT_INVALID
from .common import console, db_option, err_console


@click.command("sql")
@click.argument("query")
@db_option
@click.option("--limit", default=100, show_default=True, help="Rows to print.")
def command(query: str, db: Path, limit: int) -> None:
    """Run QUERY against the database (read-only) and print the result."""
    if not db.exists():
        err_console.print(f"[bold red]error:[/] no database at {db}")
        sys.exit(EXIT_INVALID)
    con = duckdb.connect(str(db), read_only=True)
    try:
        cur = con.execute(query)
        rows = cur.fetchmany(limit + 1)
        columns = [d[0] for d in cur.description or []]
    except duckdb.Error as exc:
        err_console.print(f"[bold red]error:[/] {exc}")
        sys.exit(EXIT_INVALID)
    finally:
        con.close()
    table = Table(*columns)
    for row in rows[:limit]:
        table.add_row(*("NULL" if v is None else str(v) for v in row))
    console.print(table)
    if len(rows) > limit:
        console.print(f"(first {limit} rows; use --limit)")
