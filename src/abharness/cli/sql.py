"""`abharness sql`: query the results database read-only; print a table, CSV or JSON.

The query is the argument, `-` for standard input, or `--file query.sql`: one statement
that only reads; anything else (COPY, ATTACH, SET, INSTALL, a file-reading function,
several statements) is refused with one line, exit 1 (`store.queries.check_read_only`).
Piped or redirected output is never cropped: a table is printed in full, one line per
row (line breaks in values shown as ``\n``), and CSV (``\n`` line ends) and JSON are for
programs. DuckDB's own error, with its "did you mean" hint, is printed on one line.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Any

import click

from ..shell import console, db_option, fail, one_line_errors


@click.command("sql")
@click.argument("query", required=False)
@click.option(
    "--file", "-f", "file", type=click.File("r", encoding="utf-8"), help="Read the query from FILE."
)
@db_option
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "csv", "json"]),
    default="table",
    show_default=True,
)
@click.option(
    "--limit", type=int, help="At most this many rows (default: all for csv/json, 100 for a table)."
)
@one_line_errors
def command(query: str | None, file: Any, db: Path, fmt: str, limit: int | None) -> None:
    """Run QUERY (or `-` for stdin, or --file) against the database, read-only."""
    import duckdb

    from ..store.health import first_line
    from ..store.queries import Results

    if file is not None and query is not None:
        fail("give the query as an argument or with --file, not both")
    text = file.read() if file is not None else sys.stdin.read() if query in (None, "-") else query
    if not text.strip():
        fail("no query: give it as an argument, with --file, or on standard input")
    if limit is None and fmt == "table":
        limit = 100
    with Results(db, analyst=True) as results:
        try:
            columns, rows = results.query(text, limit)
        except duckdb.Error as exc:
            fail(first_line(exc))
    more = limit is not None and len(rows) > limit
    rows = rows[:limit] if limit is not None else rows
    if fmt == "csv":
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows(["" if v is None else v for v in row] for row in rows)
    elif fmt == "json":
        json.dump(
            [dict(zip(columns, row, strict=True)) for row in rows],
            sys.stdout,
            default=str,
            indent=1,
        )
        sys.stdout.write("\n")
    else:
        _table(columns, rows)
    if more:
        click.echo(f"(first {limit} rows; use --limit)", err=True)


def _cell(value: Any) -> str:
    """One line whatever the value holds: a response's line breaks would break the table."""
    if value is None:
        return "NULL"
    return (
        str(value)
        .replace("\\", "\\\\")
        .replace("\r", "\\r")
        .replace("\n", "\\n")
        .replace("\t", "\\t")
    )


def _table(columns: list[str], rows: list[tuple[Any, ...]]) -> None:
    cells = [[_cell(v) for v in row] for row in rows]
    if sys.stdout.isatty():
        from rich.table import Table

        table = Table(*columns)
        for row in cells:
            table.add_row(*row)
        console.print(table)
        return
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
    click.echo("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    click.echo("  ".join("-" * w for w in widths))
    for row in cells:
        click.echo("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
