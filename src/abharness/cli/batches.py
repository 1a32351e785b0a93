"""`abharness batches [RUN_ID]`: the batches of batch-mode runs (SPEC §13) and their
states; `abharness batches cancel RUN_ID`: cancel a run's batches at the provider.

Batches are read from the database, from the staging files of runs not yet merged, and,
for a run in progress (DuckDB lets no other process open its staging file), from the
snapshot it keeps beside that file. A listing shows the state last seen by the run;
`cancel` asks the provider and prints what it says now. The run (or its resume) then
collects what finished before the cancel and stores the rest as cancelled.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from ..shell import EXIT_INVALID, EXIT_OK, console, db_option, err_console, fail, one_line_errors

if TYPE_CHECKING:
    from ..store.batches import BatchRow


@click.command("batches")
@click.argument("words", nargs=-1, metavar="[RUN_ID] | cancel RUN_ID")
@db_option
@one_line_errors
def command(words: tuple[str, ...], db: Path) -> None:
    """List batches (of RUN_ID) and their states, or cancel RUN_ID's batches."""
    if words[:1] == ("cancel",):
        if len(words) != 2:
            fail("usage: abharness batches cancel RUN_ID")
        _cancel(words[1], db)
        return
    if len(words) > 1:
        fail("usage: abharness batches [RUN_ID] | abharness batches cancel RUN_ID")
    rows = _rows(db, words[0] if words else None)
    if not rows:
        console.print(f"no batches{f' for run {words[0]}' if words else ''} in {db}")
        sys.exit(EXIT_INVALID if words else EXIT_OK)
    from rich.table import Table

    table = Table()
    for name in ("run", "arm", "batch", "try", "provider id", "state", "requests", "counts"):
        table.add_column(name)
    table.add_column("submitted (UTC)")
    table.add_column("collected")
    for r, where in rows:
        counts = ", ".join(f"{n} {k}" for k, n in r.counts.items() if n)
        table.add_row(
            r.run_id + (f" ({where})" if where else ""),
            r.arm_id,
            r.batch_key.rsplit(":", 1)[-1],
            str(r.generation),
            r.provider_batch_id or "-",
            r.status + (f": {r.error_message}" if r.error_message else ""),
            str(r.request_count),
            counts,
            f"{r.submitted_at:%Y-%m-%d %H:%M:%S}" if r.submitted_at else "",
            "yes" if r.collected_at else "no",
        )
    console.print(table)


def _rows(db: Path, run_id: str | None) -> list[tuple[BatchRow, str]]:
    """(row, where it was read if not the database) of every batch, a run's staging file
    or snapshot before the database (it is newer)."""
    from ..store.batches import batch_rows, read_snapshot
    from ..store.db import staging_dir
    from ..store.queries import DatabaseBusy, NoDatabase, Results

    found: dict[str, tuple[BatchRow, str]] = {}
    sources: list[tuple[Path, str]] = [(db, "")]
    sources += [(p, "not merged") for p in sorted(staging_dir(db).glob("*.duckdb"))]
    for path, where in sources:
        if run_id and where and path.stem != run_id:
            continue
        try:
            with Results(path) as results:
                if not results.has_column("batches", "batch_key"):
                    continue
                rows = batch_rows(results.con, run_id)
        except NoDatabase:
            continue
        except DatabaseBusy:
            if path == db:
                raise
            rows, where = read_snapshot(path), "running"
        found.update({r.batch_key: (r, where) for r in rows})
    return sorted(found.values(), key=lambda x: (x[0].run_id, x[0].arm_id, x[0].batch_key))


def _cancel(run_id: str, db: Path) -> None:
    rows = [r for r, _ in _rows(db, run_id) if r.provider_batch_id and r.collected_at is None]
    if not rows:
        fail(f"run {run_id} has no batch still running in {db}")
    for line in asyncio.run(_cancel_all(rows)):
        console.print(line, markup=False)
    console.print(
        f"cancelled. `abharness run --resume {run_id} --db {db}` collects what finished "
        "before the cancel and stores the rest as cancelled (a running run does so itself)"
    )


async def _cancel_all(rows: list[BatchRow]) -> list[str]:
    from ..errors import CallError
    from ..providers import provider_class
    from ..providers.batch import BatchAPI
    from ..spec.models import ProviderSpec

    lines = []
    for r in rows:
        assert r.provider_batch_id is not None
        config = ProviderSpec(
            type=r.provider_type, base_url=r.base_url, api_key_env=r.api_key_env, batch_api=True
        )
        provider = provider_class(r.provider_type)(r.endpoint, config)
        assert isinstance(provider, BatchAPI)
        try:
            provider.load()  # the API key, from the variable the run used
            state = await provider.batch_cancel(r.provider_batch_id)
            lines.append(f"{r.arm_id} {r.provider_batch_id}: {state.describe()}")
        except CallError as exc:
            err_console.print(f"[red]{r.arm_id} {r.provider_batch_id}:[/] {exc}")
        finally:
            await provider.aclose()
    return lines
