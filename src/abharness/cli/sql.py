"""`abharness sql "SELECT ..."`: query the results database read-only and print a table."""

from __future__ import annotations

from pathlib import Path

import click

from .common import console, db_option, fail, invalid_input_exits


@click.command("sql")
@click.argument("query")
@db_option
@click.option("--limit", default=100, show_default=True, help="Rows to print.")
@invalid_input_exits
def command(query: str, db: Path, limit: int) -> None:
    """Run QUERY against the database (read-only) and print the result."""
    import duckdb
    from rich.table import Table

    from ..store.queries import Results

    with Results(db) as results:
        try:
            columns, rows = results.query(query, limit)
        except duckdb.Error as exc:
            fail(str(exc))
    table = Table(*columns)
    for row in rows[:limit]:
        table.add_row(*("NULL" if v is None else str(v) for v in row))
    console.print(table)
    if len(rows) > limit:
        console.print(f"(first {limit} rows; use --limit)")
