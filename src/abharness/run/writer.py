"""One task owns the run's staging store: it batches records and inserts them off the
event loop, parents before children and a call with its scores in one transaction, so
a reader never sees a score without its call nor a call without its scores.

Every record reaches the store's journal first, synchronously, on the loop: `finished`
when the call ends (before its slot can take another call), `put` when it is scored.
After ``kill -9`` the calls paid twice on resume are at most the calls in flight
(`store.journal`). A batch is at most `WRITE_BATCH` records or `WRITE_BATCH_BYTES` of
text, so a run of large prompts never asks the staging store for more memory than it
has.

If an insert fails (disk full, the file gone, DuckDB out of memory), the writer keeps
taking records so that no call waits on a full queue, drops them (they are in the
journal), tells the runner to stop dispatching, and raises `StoreWriteError` once it
is closed: the run stops with what was written before, resumable, instead of hanging."""

from __future__ import annotations

import asyncio
import functools
import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ..errors import StoreWriteError
from ..spec.dataset import Case
from ..store.db import Store
from ..store.health import environment_failure
from ..store.migrations import transaction
from ..store.records import CallRecord, ScoreRecord

# A transaction of the staging file costs ~9 ms however few its rows: batches of 256
# rows (128 calls and their cases) cost 0.095-0.125 ms of CPU a call, of 2,048 rows
# 0.017-0.019 (BENCHMARKS.md, `abharness serve`), so a busy run writes about once a
# second and a quiet one every `WRITE_INTERVAL_S`.
WRITE_BATCH = 2048
WRITE_BATCH_BYTES = 8 * 1024 * 1024  # prompt and response text per insert
WRITE_INTERVAL_S = 1.0
# Calls written between two `Store.shed_cache`: DuckDB's cache of the staging file
# stays that of a few thousand calls, not of the whole run (BENCHMARKS.md, "Memory").
SHED_EVERY_CALLS = 5_000

_Item = tuple[CallRecord, list[ScoreRecord]] | dict[str, Any]


def _text_bytes(record: CallRecord) -> int:
    return len(record.prompt_text or "") + len(record.response_text or "")


class Writer:
    def __init__(self, store: Store, on_failure: Callable[[], None]) -> None:
        self.store = store
        self.on_failure = on_failure
        self.failure: BaseException | None = None
        self._unshed = 0  # calls written since the last shed_cache
        self.queue: asyncio.Queue[_Item | None] = asyncio.Queue(maxsize=4 * WRITE_BATCH)
        # One thread for every insert, not the loop's shared pool: DuckDB's allocator
        # keeps a cache per thread, and inserts spread over six threads held more memory.
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="abharness-writer")

    def _fail(self, exc: BaseException) -> None:
        if self.failure is None:
            self.failure = exc
            self.on_failure()

    def finished(self, record: CallRecord) -> None:
        """A call ended: journal it now, before anything else runs on the loop."""
        if self.failure is None:
            try:
                self.store.journal.call(record)
            except OSError as exc:
                self._fail(exc)

    async def put(self, record: CallRecord, scores: list[ScoreRecord]) -> None:
        if self.failure is None:
            try:
                self.store.journal.scores(record.call_id, scores)
            except OSError as exc:
                self._fail(exc)
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

    async def now(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """`fn(connection, *args, **kwargs)` in the writer's thread, between its inserts, committed
        when this returns (a batch's row before it is sent: `run.batch`)."""
        if self.failure is not None:
            raise StoreWriteError(f"the staging file cannot be written: {self.failure}")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(
                self._thread, functools.partial(fn, self.store.con, *args, **kwargs)
            )
        except Exception as exc:
            self._fail(exc)
            raise StoreWriteError(f"could not write to {self.store.path}: {exc}") from exc

    async def beside(self, fn: Callable[..., Any], *args: Any) -> Any:
        """`fn(connection, *args)` in the writer's thread, between its inserts, like `now`;
        but its failure is the caller's (a main database that is busy for a periodic
        merge), not the store's: it raises as it is and the writer goes on."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._thread, functools.partial(fn, self.store.con, *args)
        )

    async def close(self) -> None:
        await self.queue.put(None)

    async def run(self) -> None:
        try:
            await self._drain()
        finally:
            self._thread.shutdown(wait=False)  # after `None` nothing runs there any more
        if self.failure is not None:
            failure = environment_failure(
                self.failure, f"could not write to the run's staging file {self.store.path}", ""
            )
            raise StoreWriteError(failure.problem) from self.failure
        self.store.journal.discard()  # everything it held is in the store

    async def _drain(self) -> None:
        cases: list[dict[str, Any]] = []
        calls: list[CallRecord] = []
        scores: list[ScoreRecord] = []
        size = 0
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
                size += _text_bytes(item[0])
            elif item:
                cases.append(item)
            count = len(cases) + len(calls)
            full = count >= WRITE_BATCH or size >= WRITE_BATCH_BYTES
            if done or full or time.monotonic() >= deadline:
                if count and self.failure is None:
                    try:
                        await asyncio.get_running_loop().run_in_executor(
                            self._thread, self._flush, cases, calls, scores
                        )
                    except Exception as exc:
                        self._fail(exc)
                    else:
                        self.store.journal.committed([c.call_id for c in calls])
                cases, calls, scores, size = [], [], [], 0
                deadline = time.monotonic() + WRITE_INTERVAL_S

    def _flush(
        self, cases: list[dict[str, Any]], calls: list[CallRecord], scores: list[ScoreRecord]
    ) -> None:
        with transaction(self.store.con):
            self.store.insert("cases", cases)
            self.store.insert_calls(calls)
            self.store.insert_scores(scores)
        self._unshed += len(calls)
        if self._unshed >= SHED_EVERY_CALLS:
            self.store.shed_cache()
            self._unshed = 0
