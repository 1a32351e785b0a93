"""The run's journal: every finished call, on disk the moment it finishes.

The staging store takes records in batches (a few hundred rows or a second at a time),
so after ``kill -9`` the calls of the last batch were paid and lost, and a resume paid
for them again (82 of 2,000 in one trial). The journal closes that window: when a call
finishes, its record is appended to a file beside the staging file before anything else
can run (`call`), and when it is scored, its scores (`scores`); one ``write(2)`` each on
a descriptor opened with ``O_APPEND``, no buffering in Python. What the process wrote
is in the kernel's page cache: it survives the process's death (``kill -9``, the OOM
killer), not a power cut (no fsync per call: it would cost milliseconds each).

Lines are JSON: ``{"c": {column: value, ...}}`` for a call, ``{"s": call_id, "rows":
[...]}`` for its scores. The journal is written in generations (``RUN.duckdb.journal.N``);
a new one starts when the current one passes `ROTATE_BYTES`, and a generation's file
is deleted once every call with a line in it is committed to the staging store, so
the journal stays small however long the run.

`recover` reads what a dead process left: calls with their scores go into the staging
store (if they are not there yet); calls answered but not yet scored (an ``llm_judge``
was grading them) come back to be scored without being paid again.
"""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path
from typing import Any

from .records import CALL_COLUMNS, SCORE_COLUMNS, CallRecord, ScoreRecord, as_rows

ROTATE_BYTES = 4 * 1024 * 1024


def journal_files(staging: Path) -> list[Path]:
    """The journal generations beside `staging`, oldest first."""
    files = staging.parent.glob(f"{staging.name}.journal.*")
    return sorted(files, key=lambda p: int(p.suffix.lstrip(".") or 0))


def _call_line(record: CallRecord) -> bytes:
    values = dict(zip(CALL_COLUMNS, as_rows([record])[0], strict=True))
    values["started_at"] = record.started_at.isoformat()
    return json.dumps({"c": values}, ensure_ascii=False).encode() + b"\n"


def _scores_line(call_id: str, scores: list[ScoreRecord]) -> bytes:
    rows = [list(row) for row in as_rows(scores)] if scores else []
    return json.dumps({"s": call_id, "rows": rows}, ensure_ascii=False).encode() + b"\n"


class Journal:
    """Appends to the current generation; forgets generations whose calls are committed."""

    def __init__(self, staging: Path) -> None:
        self.staging = staging
        existing = journal_files(staging)
        self.generation = int(existing[-1].suffix.lstrip(".")) + 1 if existing else 0
        self._outstanding: dict[int, int] = {}  # generation -> lines not yet committed
        self._lines_of: dict[str, list[int]] = {}  # call id -> generations of its lines
        self._fd = -1
        self._size = 0
        self._open()

    def _path(self, generation: int) -> Path:
        return self.staging.parent / f"{self.staging.name}.journal.{generation}"

    def _open(self) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
        self._fd = os.open(self._path(self.generation), flags, 0o644)
        self._size = 0
        self._outstanding[self.generation] = 0

    def _append(self, call_id: str, line: bytes) -> None:
        if self._size >= ROTATE_BYTES:
            os.close(self._fd)
            self.generation += 1
            self._open()
            self._forget()
        os.write(self._fd, line)
        self._size += len(line)
        self._outstanding[self.generation] += 1
        self._lines_of.setdefault(call_id, []).append(self.generation)

    def call(self, record: CallRecord) -> None:
        """A call finished (ok, failed, or answered from the cache)."""
        self._append(record.call_id, _call_line(record))

    def scores(self, call_id: str, scores: list[ScoreRecord]) -> None:
        """A finished call was scored (an empty list: nothing to score, or it failed)."""
        self._append(call_id, _scores_line(call_id, scores))

    def committed(self, call_ids: list[str]) -> None:
        """These calls and their scores are in the staging store now."""
        for call_id in call_ids:
            for generation in self._lines_of.pop(call_id, ()):
                self._outstanding[generation] -= 1
        self._forget()

    def _forget(self) -> None:
        for generation, left in list(self._outstanding.items()):
            if generation < self.generation and left <= 0:
                self._path(generation).unlink(missing_ok=True)
                del self._outstanding[generation]

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def discard(self) -> None:
        """Everything is in the staging store: delete every generation."""
        self.close()
        for path in journal_files(self.staging):
            path.unlink(missing_ok=True)


def read_journal(staging: Path) -> tuple[dict[str, CallRecord], dict[str, list[ScoreRecord]]]:
    """The calls and scores a journal holds (the last line of a call wins). A line cut by
    the process's death, the journal's last, is skipped."""
    calls: dict[str, CallRecord] = {}
    scores: dict[str, list[ScoreRecord]] = {}
    for path in journal_files(staging):
        with path.open("rb") as f:
            for raw in f:
                try:
                    line: dict[str, Any] = json.loads(raw)
                except ValueError:
                    continue  # a half-written last line
                if "c" in line:
                    values = line["c"]
                    values["started_at"] = datetime.fromisoformat(values["started_at"])
                    calls[values["call_id"]] = CallRecord.from_columns(values)
                elif "s" in line:
                    scores[line["s"]] = [
                        ScoreRecord(**dict(zip(SCORE_COLUMNS, row, strict=True)))
                        for row in line["rows"]
                    ]
    return calls, scores
