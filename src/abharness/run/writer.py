"""One task owns the run's staging store: it batches records and inserts them off the
event loop, parents before children, so a reader never sees a score without its call.

If an insert fails (disk full, the file gone, DuckDB out of memory), the writer keeps
taking records so that no call waits on a full queue, drops them, tells the runner to
stop dispatching, and raises `StoreWriteError` once it is closed: the run stops with
what was written before, resumable, instead of hanging."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ..errors import StoreWriteError
from ..spec.dataset import Case
from ..store.db import Store
from ..store.records import CallRecord, ScoreRecord

WRITE_BATCH = 256
WRITE_INTERVAL_S = 1.0
# Calls written between two `Store.shed_cache`: DuckDB's cache of the staging file
# stays that of a few thousand calls, not of the whole run (BENCHMARKS.md, "Memory").
SHED_EVERY_CALLS = 5_000

_Item = tuple[CallRecord, list[ScoreRecord]] | dict[str, Any]


class Writer:
    def __init__(self, store: Store, on_failure: Callable[[], None]) -> None:
        self.store = store
        self.on_failure = on_failure
        self.failure: Exception | None = None
        self._unshed = 0  # calls written since the last shed_cache
        self.queue: asyncio.Queue[_Item | None] = asyncio.Queue(maxsize=4 * WRITE_BATCH)
        # One thread for every insert, not the loop's shared pool: DuckDB's allocator
        # keeps a cache per thread, and inserts spread over six threads held more memory.
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="abharness-writer")

    async def put(self, record: CallRecord, scores: list[ScoreRecord]) -> None:
        await self.queue.put((record, scores))

    async def put_case(self, run_id: str, case: Case) -> None:
        await self.queue.put(
            {
                "run_id": run_id,
                "case_id": case.id,
                "vars_json": json.dumps(case.vars, ensure_ascii=False),
                "expected_json": json.dumps(case.expected, ensure_ascii=False),
            }
        )

    async def close(self) -> None:
        await self.queue.put(None)

    async def run(self) -> None:
        try:
            await self._drain()
        finally:
            self._thread.shutdown(wait=False)  # after `None` nothing runs there any more
        if self.failure is not None:
            raise StoreWriteError(
                f"could not write to the run's staging file {self.store.path}: "
                f"{type(self.failure).__name__}: {self.failure}"
            ) from self.failure

    async def _drain(self) -> None:
        cases: list[dict[str, Any]] = []
        calls: list[CallRecord] = []
        scores: list[ScoreRecord] = []
        deadline = time.monotonic() + WRITE_INTERVAL_S
        done = False
        while not done:
            try:
                item = self.queue.get_nowait()  # no timer task per item while busy
            except asyncio.QueueEmpty:
                try:
                    item = await asyncio.wait_for(
                        self.queue.get(), max(deadline - time.monotonic(), 0.01)
                    )
                except TimeoutError:
                    item = {}
            if item is None:
                done = True
            elif isinstance(item, tuple):
                calls.append(item[0])
                scores += item[1]
            elif item:
                cases.append(item)
            count = len(cases) + len(calls)
            if done or count >= WRITE_BATCH or time.monotonic() >= deadline:
                if count and self.failure is None:
                    try:
                        await asyncio.get_running_loop().run_in_executor(
                            self._thread, self._flush, cases, calls, scores
                        )
                    except Exception as exc:
                        self.failure = exc
                        self.on_failure()
                cases, calls, scores = [], [], []
                deadline = time.monotonic() + WRITE_INTERVAL_S

    def _flush(
        self, cases: list[dict[str, Any]], calls: list[CallRecord], scores: list[ScoreRecord]
    ) -> None:
        self.store.insert("cases", cases)
        self.store.insert_calls(calls)
        self.store.insert_scores(scores)
        self._unshed += len(calls)
        if self._unshed >= SHED_EVERY_CALLS:
            self.store.shed_cache()
            self._unshed = 0
