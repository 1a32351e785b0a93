"""`abharness export --parquet DIR`: the results as Hive-partitioned Parquet."""

from __future__ import annotations

from pathlib import Path

import click

from ..shell import console, db_option, one_line_errors


@click.command("export")
@click.option(
    "--parquet",
    "out",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder to write runs/, arms/, cases/, calls/, scores/ into (experiment=…/date=…/).",
)
@db_option
@one_line_errors
def command(out: Path, db: Path) -> None:
    """Write every table as Parquet partitioned by experiment and date (re-export: same files)."""
    from ..store.export import export_parquet
    from ..store.queries import Results

    with Results(db) as results:
        counts = export_parquet(results, out)
    for table, n in counts.items():
        console.print(f"{out / table}: {n} rows")
