"""Batch mode (SPEC §13): a batch arm's calls through its provider's batch API.

    add(job) ─▶ fit, cache?, reserve its worst-case cost ─▶ the arm's open batch
    full (the provider's request and byte limits), or flush ─▶ the batch's row and calls
    committed ─▶ submitted ─▶ the provider's id committed ─▶ polled (``poll_s``, ×1.5
    up to ``max_poll_s``) ─▶ results matched by ``custom_id`` (the call id) in any order
    ─▶ one record per call, scored and written like any other
    an expired request or a retryable error ─▶ a new batch, at most twice
    ─▶ then an error with the provider's message

Durable: nothing is sent before its batch's row and calls are in the staging file,
and the submission does not return before the provider's batch id is. A resumed run
(after Ctrl-C, ``kill -9``, or on another machine with the staging file) reads the
batches not yet collected (`store.batches.uncollected`), attaches each call it would
make to the batch that holds it, and polls those batches: it never sends a call twice.
A batch whose row says ``submitting`` (killed while the provider answered) is first
looked up at the provider by its metadata.

Ctrl-C or SIGTERM stops polling at once: the batches keep running at the provider
(and are billed); `Batcher.outstanding` lists them and resume collects them. A
deadline (``nightly --batch-deadline``) stops polling the same way.

Batch calls have no latency or time to first token (null): the batch's turnaround
(submission to end, the provider's clock) is in ``provider_metrics_json.batch``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal

from ..errors import BadRequestError, BudgetError, CallError, ServerError, StoreWriteError
from ..providers.base import ProviderResponse
from ..providers.batch import BatchAPI, BatchItem, BatchState
from ..store.batches import BatchRow, now, record_batch, update_batch, write_snapshot
from ..store.records import CallRecord
from .arm import ArmPlan
from .costcap import CostCap
from .executor import CallJob, Executor, Prepared, answered, failed
from .retry import RetryPolicy
from .writer import Writer

log = logging.getLogger(__name__)

GENERATIONS = 3  # a request is sent in at most this many batches
DELIVERING = 64  # results being scored and written at once
POLL_FAILURES = 5  # status checks failing in a row before a batch is left to resume

Deliver = Callable[[CallJob, CallRecord, ProviderResponse | None], Awaitable[None]]


@dataclass
class Waiting:
    """A call in a batch, until its result comes."""

    job: CallJob
    record: CallRecord
    prepared: Prepared
    worst: Decimal  # reserved under the cost cap


@dataclass
class Tracked:
    """One batch: its row, the calls waiting for its results, what the provider said."""

    row: BatchRow
    arm: ArmPlan
    group: str
    waiting: dict[str, Waiting] = field(default_factory=dict)
    lines: list[bytes] = field(default_factory=list)  # until it is submitted
    size: int = 0
    state: BatchState | None = None
    resumed: bool = False  # found in the staging file, not made by this process

    @property
    def api(self) -> BatchAPI:
        provider = self.arm.provider
        assert isinstance(provider, BatchAPI)
        return provider

    def progress(self) -> tuple[int, int]:
        """(requests done, requests) as the provider last counted them."""
        counts = self.state.counts if self.state else self.row.counts
        total = counts.get("total") or self.row.request_count
        return sum(v for k, v in counts.items() if k not in ("total", "processing")), total

    def failed(self) -> int:
        counts = self.state.counts if self.state else self.row.counts
        return sum(counts.get(k, 0) for k in ("failed", "errored", "expired", "canceled"))

    def describe(self) -> str:
        return describe_row(self.row, self.state)


def describe_row(row: BatchRow, state: BatchState | None = None) -> str:
    """``ARM batch N (ID, try G): STATE (counts)``, for progress and messages."""
    where = row.provider_batch_id or "not submitted"
    tries = f", try {row.generation}" if row.generation > 1 else ""
    status = state.describe() if state else BatchState(where, row.status, row.counts).describe()
    return f"{row.arm_id} batch {row.batch_key.rsplit(':', 1)[-1]} ({where}{tries}): {status}"


def _epoch(value: datetime | None) -> float:
    return value.replace(tzinfo=UTC).timestamp() if value else 0.0


class Batcher:
    def __init__(
        self,
        run_id: str,
        executor: Executor,
        writer: Writer,
        cost_cap: CostCap,
        deliver: Deliver,
        *,
        policy: RetryPolicy,
        resumed: Sequence[BatchRow] = (),
        arms: Sequence[ArmPlan] = (),
        on_batch: Callable[[Tracked], None] | None = None,
        deadline_s: float | None = None,
    ) -> None:
        self.run_id = run_id
        self.executor = executor
        self.writer = writer
        self.cost_cap = cost_cap
        self.deliver = deliver
        self.policy = policy
        self._on_batch = on_batch or (lambda t: None)
        self.deadline = time.monotonic() + deadline_s if deadline_s is not None else None
        self._stop = asyncio.Event()
        self._open: dict[tuple[str, int], Tracked] = {}  # (arm, generation) -> filling
        self._tasks: set[asyncio.Task[None]] = set()
        self._delivering = asyncio.Semaphore(DELIVERING)
        self._seq = 0
        self.batches: list[Tracked] = []  # every batch this process followed
        self.failures: list[str] = []
        by_id = {a.id: a for a in arms}
        self._resumed: dict[str, Tracked] = {}  # call id -> the latest batch holding it
        for row in resumed:
            arm = by_id.get(row.arm_id)
            if arm is None:
                continue
            tracked = Tracked(row, arm, group="", resumed=True)
            self.batches.append(tracked)
            for call_id in row.call_ids:
                self._resumed[call_id] = tracked

    # -- filling ---------------------------------------------------------------

    async def add(self, job: CallJob) -> None:
        """Take one call of a batch arm: answered from the cache at once, refused by the
        cost cap, or put in the arm's batch (the one already holding it, on resume)."""
        arm = job.arm
        assert isinstance(arm, ArmPlan)
        record = self.executor.new_record(job, arm)
        try:
            prepared = self.executor.prepare(job, arm, record)
            hit = await self.executor.from_cache(prepared, record)
        except Exception as exc:  # the prompt cannot fit, the provider could not load
            failed(record, exc)
            await self._finish(job, record, None)
            return
        if hit is not None:
            await self._finish(job, record, hit)
            return
        worst = arm.worst_case_cost(prepared.est_tokens)
        if self.cost_cap.refused or not self.cost_cap.reserve(worst):
            failed(
                record,
                BudgetError(
                    f"not submitted: max_cost_usd={self.cost_cap.max} would be exceeded "
                    f"(spent {self.cost_cap.spent:.6f}, reserved {self.cost_cap.reserved:.6f}, "
                    f"this call up to {worst:.6f})"
                ),
            )
            await self._finish(job, record, None)
            return
        waiting = Waiting(job, record, prepared, worst)
        tracked = self._resumed.pop(job.call_id, None)
        if tracked is not None:  # already at the provider: never sent twice
            tracked.waiting[job.call_id] = waiting
            return
        self._queue(arm, waiting, 1)

    def _queue(self, arm: ArmPlan, waiting: Waiting, generation: int) -> None:
        api = arm.provider
        assert isinstance(api, BatchAPI)
        request = waiting.prepared.request
        line = json.dumps(api.batch_line(waiting.job.call_id, request)).encode() + b"\n"
        max_requests, max_bytes = api.batch_limits
        key = (arm.id, generation)
        tracked = self._open.get(key)
        if tracked is not None and (
            len(tracked.lines) >= max_requests or tracked.size + len(line) > max_bytes
        ):
            self._start(self._open.pop(key))
            tracked = None
        if tracked is None:
            self._seq += 1
            row = BatchRow(
                run_id=self.run_id,
                batch_key=f"{self.run_id}:{arm.id}:{generation}:{self._seq}",
                arm_id=arm.id,
                endpoint=arm.endpoint_name,
                provider_type=arm.endpoint.type,
                base_url=arm.endpoint.base_url,
                api_key_env=arm.endpoint.api_key_env,
                generation=generation,
                request_count=0,
            )
            tracked = self._open[key] = Tracked(row, arm, api.batch_group(request))
            self.batches.append(tracked)
        tracked.lines.append(line)
        tracked.size += len(line)
        tracked.waiting[waiting.job.call_id] = waiting

    def flush(self) -> None:
        """Submit every batch being filled, and follow the resumed ones."""
        for key in list(self._open):
            self._start(self._open.pop(key))
        self._resumed.clear()
        for tracked in self.batches:
            if not tracked.resumed or tracked.row.collected_at is not None:
                continue
            if tracked.waiting:
                self._start(tracked)
            else:  # every call it held is stored, or went into a later batch
                self._spawn(self._mark_collected(tracked))

    async def finish(self) -> None:
        """Flush, then wait for every batch to end and its results to be stored (or for
        a stop or the deadline)."""
        self.flush()
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def stop(self) -> None:
        """Stop polling now: the batches keep running at the provider."""
        self._stop.set()

    def cancel(self) -> None:
        for task in list(self._tasks):
            task.cancel()

    def outstanding(self) -> list[Tracked]:
        """Batches at the provider whose results are not all stored."""
        return [
            t
            for t in self.batches
            if t.row.provider_batch_id is not None and t.row.collected_at is None and t.waiting
        ]

    # -- following one batch ---------------------------------------------------

    def on_batch(self, tracked: Tracked) -> None:
        """A batch changed: the snapshot beside the staging file (`abharness batches`
        reads it while the run holds the file), then whoever listens."""
        try:
            write_snapshot(self.writer.store.path, [t.row for t in self.batches])
        except OSError as exc:  # a view for other processes: never worth a run
            log.debug("batch snapshot not written: %s", exc)
        self._on_batch(tracked)

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _start(self, tracked: Tracked) -> None:
        if not self._stop.is_set():
            self._spawn(self._follow(tracked))

    async def _follow(self, tracked: Tracked) -> None:
        try:
            if tracked.row.provider_batch_id is None and not await self._submit(tracked):
                return
            state = await self._poll(tracked)
            if state is not None:
                await self._collect(tracked, state)
        except StoreWriteError:
            raise
        except CallError as exc:  # the provider would not answer: left for resume
            self.failures.append(f"{tracked.describe()}: {exc.error_type}: {exc}")
            log.warning("%s: %s", tracked.describe(), exc)
        except Exception as exc:  # a bug of ours: said, and the batch left for resume
            self.failures.append(f"{tracked.describe()}: {type(exc).__name__}: {exc}")
            log.exception("%s", tracked.describe())

    def _metadata(self, row: BatchRow) -> dict[str, str]:
        return {"abharness_run": self.run_id, "abharness_batch": row.batch_key}

    async def _submit(self, tracked: Tracked) -> bool:
        """Commit the batch's row and calls, submit it, commit its id; False if the
        provider refused it (its calls are then errors)."""
        row, api = tracked.row, tracked.api
        if tracked.resumed:  # killed while submitting: did the provider get it?
            found = await api.batch_find(
                self._metadata(row), _epoch(row.submitted_at), row.request_count
            )
            if found is not None:
                await self._accepted(tracked, found)
                return True
            tracked.group = api.batch_group(next(iter(tracked.waiting.values())).prepared.request)
            for waiting in tracked.waiting.values():
                line = api.batch_line(waiting.job.call_id, waiting.prepared.request)
                tracked.lines.append(json.dumps(line).encode() + b"\n")
        row.call_ids = list(tracked.waiting)
        row.request_count, row.request_bytes = len(tracked.lines), sum(map(len, tracked.lines))
        row.status, row.submitted_at = "submitting", now()
        await self.writer.now(record_batch, row)
        attempt = 0
        while True:
            attempt += 1
            try:
                if attempt > 1:  # the last try may have reached it before it failed
                    found = await api.batch_find(
                        self._metadata(row), _epoch(row.submitted_at), row.request_count
                    )
                    if found is not None:
                        await self._accepted(tracked, found)
                        return True
                state = await api.batch_submit(tracked.group, tracked.lines, self._metadata(row))
            except CallError as exc:
                if self.policy.should_retry(exc, attempt) and not self._stop.is_set():
                    await asyncio.sleep(self.policy.delay_s(attempt, exc.retry_after_s))
                    continue
                await self.writer.now(
                    update_batch, row, status="failed", error_message=str(exc), collected_at=now()
                )
                self.on_batch(tracked)
                refused = BadRequestError if exc.error_type == "bad_request" else type(exc)
                error = refused(f"the batch was refused: {exc}", status_code=exc.status_code)
                error.error_type = exc.error_type
                await self._fail_all(tracked, error, attempt)
                return False
            break
        await self._accepted(tracked, state)
        return True

    async def _accepted(self, tracked: Tracked, state: BatchState) -> None:
        tracked.lines, tracked.size, tracked.state = [], 0, state
        await self.writer.now(
            update_batch,
            tracked.row,
            provider_batch_id=state.id,
            status=state.status,
            counts_json=json.dumps(state.counts),
        )
        log.info("%s submitted", tracked.describe())
        self.on_batch(tracked)

    async def _poll(self, tracked: Tracked) -> BatchState | None:
        """Poll until the batch ends; None if the run stops, the deadline passes or the
        provider keeps failing to answer (the batch is left running, for resume)."""
        settings = tracked.arm.endpoint.batch
        interval = settings.poll_s
        state = tracked.state
        assert tracked.row.provider_batch_id is not None
        failures = 0
        first = state is None  # resumed: ask at once
        while state is None or state.running:
            wait = 0.0 if first else interval
            first = False
            if self.deadline is not None:
                wait = min(wait, self.deadline - time.monotonic())
                if wait <= 0:
                    return None
            try:
                await asyncio.wait_for(self._stop.wait(), wait)
                return None  # stopping
            except TimeoutError:
                pass
            interval = min(interval * 1.5, settings.max_poll_s)
            try:
                new = await tracked.api.batch_status(tracked.row.provider_batch_id)
            except CallError as exc:
                failures += 1
                log.warning("%s: status check failed: %s", tracked.describe(), exc)
                if failures >= POLL_FAILURES or not exc.retryable:
                    raise
                continue
            failures = 0
            if state is None or (new.status, new.counts) != (state.status, state.counts):
                await self.writer.now(
                    update_batch,
                    tracked.row,
                    status=new.status,
                    counts_json=json.dumps(new.counts),
                    error_message=new.error,
                )
                tracked.state = new
                self.on_batch(tracked)
            state = new
        return state

    async def _collect(self, tracked: Tracked, state: BatchState) -> None:
        """Every result of an ended batch as a record, in the provider's order; what needs
        another batch goes into one, submitted at once."""
        g = tracked.row.generation
        turnaround = (
            round(state.ended_at - state.created_at, 3)
            if state.ended_at is not None and state.created_at is not None
            else None
        )
        metrics = {"batch": {"id": state.id, "generation": g, "turnaround_s": turnaround}}
        if state.status == "failed":  # refused as a whole, e.g. a bad line
            why = state.error or "no reason given"
            error = BadRequestError(f"batch {state.id} failed validation: {why}")
            await self._fail_all(tracked, error, g)
        else:
            for attempt in range(1, self.policy.max_attempts + 1):
                try:
                    async for item in tracked.api.batch_results(state):
                        waiting = tracked.waiting.pop(item.custom_id, None)
                        if waiting is not None:
                            await self._result(tracked, waiting, item, metrics)
                    break
                except CallError as exc:  # the download broke: what came is kept
                    if not self.policy.should_retry(exc, attempt):
                        raise
                    await asyncio.sleep(self.policy.delay_s(attempt, exc.retry_after_s))
            for call_id in list(tracked.waiting):
                missing = ServerError(f"batch {state.id} ({state.status}) gave no result for it")
                await self._result(
                    tracked,
                    tracked.waiting.pop(call_id),
                    BatchItem(call_id, error=missing),
                    metrics,
                )
        await self._mark_collected(tracked, state)
        for key in [k for k in self._open if k[0] == tracked.arm.id and k[1] == g + 1]:
            self._start(self._open.pop(key))

    async def _mark_collected(self, tracked: Tracked, state: BatchState | None = None) -> None:
        changes: dict[str, object] = {"collected_at": now()}
        if state is not None:
            changes |= {"status": state.status, "counts_json": json.dumps(state.counts)}
            if state.ended_at is not None:
                changes["ended_at"] = datetime.fromtimestamp(state.ended_at, UTC).replace(
                    tzinfo=None
                )
        await self.writer.now(update_batch, tracked.row, **changes)
        self.on_batch(tracked)

    async def _result(
        self, tracked: Tracked, waiting: Waiting, item: BatchItem, metrics: Mapping[str, object]
    ) -> None:
        record, g = waiting.record, tracked.row.generation
        record.attempts = g  # one attempt per batch it was in
        record.provider_metrics_json = json.dumps(metrics)
        if item.response is not None:
            cost = answered(record, item.response, tracked.arm)
            self.cost_cap.settle(waiting.worst, cost)
            record.status = "ok"
            await self._finish(waiting.job, record, item.response, waiting.prepared)
            return
        error = item.error
        assert error is not None
        record.request_id = error.request_id or record.request_id
        if error.retryable and g < GENERATIONS and not self._stop.is_set():
            record.add_attempt_error(error.error_type, str(error), error.status_code)
            self._queue(tracked.arm, waiting, g + 1)  # its reservation stays
            return
        self.cost_cap.settle(waiting.worst, Decimal(0))  # a failed request is not billed
        failed(record, error)
        await self._finish(waiting.job, record, None)

    async def _fail_all(self, tracked: Tracked, error: CallError, attempts: int) -> None:
        for waiting in tracked.waiting.values():
            self.cost_cap.settle(waiting.worst, Decimal(0))
            waiting.record.attempts = attempts
            failed(waiting.record, error)
            await self._finish(waiting.job, waiting.record, None)
        tracked.waiting.clear()

    async def _finish(
        self,
        job: CallJob,
        record: CallRecord,
        response: ProviderResponse | None,
        prepared: Prepared | None = None,
    ) -> None:
        """The call is done: journaled now, then scored and written in a task of its own
        (at most `DELIVERING` at once)."""
        self.executor.on_finished(record)
        if prepared is not None and record.ok:
            await self.executor.to_cache(prepared, record)
        await self._delivering.acquire()

        async def deliver() -> None:
            try:
                await self.deliver(job, record, response)
            finally:
                self._delivering.release()

        self._spawn(deliver())
