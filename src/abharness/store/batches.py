"""The ``batches`` and ``batch_calls`` rows of a run (SPEC §13; migration 9).

A batch is written in two steps, each committed before the next happens: its row
(status ``submitting``) with its calls before anything is sent, then the provider's
batch id once the provider has it. A process killed between the two leaves a
``submitting`` row, which a resumed run looks up at the provider by the batch's
metadata (`providers.batch.BatchAPI.batch_find`) before it would send anything again.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb

from .migrations import transaction

COLUMNS = (
    "run_id",
    "batch_key",
    "arm_id",
    "endpoint",
    "provider_type",
    "base_url",
    "api_key_env",
    "generation",
    "provider_batch_id",
    "status",
    "request_count",
    "request_bytes",
    "counts_json",
    "error_message",
    "submitted_at",
    "ended_at",
    "collected_at",
    "updated_at",
)


def now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


@dataclass
class BatchRow:
    run_id: str
    batch_key: str
    arm_id: str
    endpoint: str
    provider_type: str
    base_url: str | None
    api_key_env: str | None
    generation: int
    request_count: int
    request_bytes: int | None = None
    status: str = "submitting"
    provider_batch_id: str | None = None
    counts_json: str | None = None
    error_message: str | None = None
    submitted_at: datetime | None = None
    ended_at: datetime | None = None
    collected_at: datetime | None = None
    updated_at: datetime | None = None
    call_ids: list[str] = field(default_factory=list)

    def values(self) -> list[Any]:
        return [getattr(self, c) for c in COLUMNS]

    @property
    def counts(self) -> dict[str, int]:
        return json.loads(self.counts_json) if self.counts_json else {}


def record_batch(con: duckdb.DuckDBPyConnection, row: BatchRow) -> None:
    """The batch's row and its calls, committed together (before it is sent)."""
    row.updated_at = now()
    marks = ", ".join("?" * len(COLUMNS))
    with transaction(con):
        con.execute("DELETE FROM batch_calls WHERE batch_key = ?", [row.batch_key])
        con.execute(
            f"INSERT OR REPLACE INTO batches ({', '.join(COLUMNS)}) VALUES ({marks})",
            row.values(),
        )
        con.execute(
            "INSERT INTO batch_calls SELECT ?, ?, unnest(?::VARCHAR[])",
            [row.run_id, row.batch_key, row.call_ids],
        )


def update_batch(con: duckdb.DuckDBPyConnection, row: BatchRow, **changes: Any) -> None:
    """Set `changes` on `row` and in its committed row."""
    for name, value in changes.items():
        setattr(row, name, value)
    row.updated_at = now()
    names = [*changes, "updated_at"]
    con.execute(
        f"UPDATE batches SET {', '.join(f'{n} = ?' for n in names)} "
        "WHERE run_id = ? AND batch_key = ?",
        [*(getattr(row, n) for n in names), row.run_id, row.batch_key],
    )


def uncollected(con: duckdb.DuckDBPyConnection, run_id: str) -> list[BatchRow]:
    """The run's batches whose results are not all stored yet, with their calls."""
    rows = con.execute(
        f"SELECT {', '.join(COLUMNS)} FROM batches WHERE run_id = ? AND collected_at IS NULL "
        "ORDER BY generation, batch_key",
        [run_id],
    ).fetchall()
    out = [BatchRow(**dict(zip(COLUMNS, r, strict=True))) for r in rows]
    for row in out:
        row.call_ids = [
            r[0]
            for r in con.execute(
                "SELECT call_id FROM batch_calls WHERE batch_key = ?", [row.batch_key]
            ).fetchall()
        ]
    return out


def batch_rows(con: duckdb.DuckDBPyConnection, run_id: str | None = None) -> list[BatchRow]:
    """Every batch (of `run_id`), newest first, without their calls."""
    where, args = ("WHERE run_id = ?", [run_id]) if run_id else ("", [])
    rows = con.execute(
        f"SELECT {', '.join(COLUMNS)} FROM batches {where} "
        "ORDER BY run_id DESC, generation, batch_key",
        args,
    ).fetchall()
    return [BatchRow(**dict(zip(COLUMNS, r, strict=True))) for r in rows]


def snapshot_path(staging: Path) -> Path:
    """Beside a running run's staging file: its batches as last seen, for `abharness
    batches` (DuckDB lets no other process open a file being written)."""
    return staging.with_name(staging.name + ".batches.json")


def write_snapshot(staging: Path, rows: list[BatchRow]) -> None:
    """Replace the snapshot at once (a reader never sees half of one)."""
    path = snapshot_path(staging)
    data = [
        {
            c: (v.isoformat() if isinstance(v, datetime) else v)
            for c, v in zip(COLUMNS, r.values(), strict=True)
        }
        for r in rows
    ]
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data), encoding="utf-8")
    os.replace(tmp, path)


def read_snapshot(staging: Path) -> list[BatchRow]:
    path = snapshot_path(staging)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    rows = []
    for item in data:
        for c in ("submitted_at", "ended_at", "collected_at", "updated_at"):
            if item.get(c):
                item[c] = datetime.fromisoformat(item[c])
        rows.append(BatchRow(**item))
    return rows
