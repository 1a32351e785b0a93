"""A run's rows and files behind one object: `run`, `nightly` and `serve` alike record
through a `Recorder`.

The recorder owns the run's staging file (``<db dir>/staging/<run_id>.duckdb``, the
`Store` opened there), its ``runs`` row (status, ``total_calls``, ``started_at`` and
``finished_at``) and its ``arms`` rows. It takes plain rows: what a run is made of
(the plan, its arms) is `run/`'s to describe (`run/rows.py`); the store only knows
columns. The calls themselves go through `store` (`run/writer.py` over it)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .db import MergeResult, Store, merge, staging_dir


def staging_path(db: Path, run_id: str) -> Path:
    """The file `run_id` writes while it runs, beside the main database `db`."""
    return staging_dir(db) / f"{run_id}.duckdb"


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)  # stored naive, in UTC


class Recorder:
    """One run's staging `store` and its ``runs``/``arms`` rows; `merge` hands them to
    the main database `db`."""

    def __init__(self, db: Path, run_id: str, store: Store) -> None:
        self.db = db
        self.run_id = run_id
        self.store = store

    @classmethod
    def start(
        cls, db: Path, run_id: str, run: dict[str, Any], arms: list[dict[str, Any]]
    ) -> Recorder:
        """Open the new run's staging file and write its ``runs`` row (`run`, marked
        running from now) and its ``arms`` rows, numbered in the order given."""
        store = Store(staging_path(db, run_id))
        store.insert(
            "runs",
            [{"run_id": run_id, **run, "status": "running", "started_at": _now()}],
        )
        store.insert(
            "arms", [{"run_id": run_id, **row, "position": i} for i, row in enumerate(arms)]
        )
        return cls(db, run_id, store)

    @classmethod
    def resume(cls, db: Path, run_id: str) -> tuple[Recorder, set[str]]:
        """Reopen `run_id` to finish it, marked running again, and the calls it already
        made (to skip): from its staging file if it still has one (it crashed), else
        its rows copied out of `db` into a new one (it stopped and was merged)."""
        path = staging_path(db, run_id)
        staged = path.exists()
        store = Store(path)
        made = store.reopen(run_id) if staged else store.copy_run_from(db, run_id)
        store.update_run(run_id, status="running")
        return cls(db, run_id, store), made

    @property
    def path(self) -> Path:
        return self.store.path

    def finish(self, status: str, **fields: Any) -> None:
        """The run's final `status`, ``finished_at`` now, and any other ``runs``
        columns (``wall_time_s``, ``total_calls``)."""
        self.store.update_run(self.run_id, status=status, finished_at=_now(), **fields)

    def publish(self, **fields: Any) -> None:
        """While the run goes on (`abharness serve`): set ``runs`` columns (its
        ``total_calls`` so far), then merge what is written into `db` now and keep the
        staging file open (`Store.flush_into`; from the thread that owns the store)."""
        self.store.update_run(self.run_id, **fields)
        self.store.flush_into(self.db)

    def close(self) -> None:
        self.store.close()

    def merge(self, *, attempts: int = 10) -> MergeResult:
        """Merge the closed staging file into `db` (`store.db.merge`: one transaction,
        retried while `db` is busy; the file is removed once merged)."""
        return merge(self.path, self.db, attempts=attempts)
