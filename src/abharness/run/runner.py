"""Run a plan: every arm × case × repeat is one call, made concurrently.

Work is produced lazily, case by case with the arms interleaved (so drift over the run
affects every arm alike). Each call is a task that the `Executor` carries from prompt
to record; the endpoint it goes to bounds how many such tasks may wait
(`endpoints.PENDING_PER_SLOT` per slot), so memory depends on the concurrency, not on
the dataset. Scorers run on each response; an ``llm_judge`` scorer's call is one more
job for the same executor, on the judge's own endpoint, under its own limits.

Records go to one writer task that inserts them in batches into the run's staging
store, each journaled the moment its call ends (`Writer.finished`). A resumed run scores
the calls its predecessor had answered but not scored (`Store.answered`) without paying
for them again. Ctrl-C or SIGTERM (cron, systemd, ``docker stop``, ``timeout``) stops
dispatching, gives calls in flight `GRACE_S` to finish, and returns; a second signal
cancels them at once. A failed insert stops the run at once and `run` raises
`StoreWriteError`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import signal
import time
from collections import Counter
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

from ..errors import CallError, OtherCallError
from ..providers import Provider
from ..providers.base import ProviderResponse, Usage
from ..store.batches import uncollected
from ..store.cache import ResponseCache
from ..store.db import Store
from ..store.records import CallRecord, ScoreRecord
from .arm import ArmPlan, CompositePlan, parts_of
from .batch import Batcher, Tracked
from .composite import panel_call
from .costcap import CostCap
from .endpoints import Endpoints
from .executor import CallJob, Executor, NotStarted, call_id
from .plan import Plan
from .retry import RetryPolicy
from .scorers import Score, Scorer
from .writer import Writer

GRACE_S = 5.0


def stop_grace_s() -> float:
    """Seconds calls in flight may finish after Ctrl-C or SIGTERM: `GRACE_S`, or
    ``ABHARNESS_STOP_GRACE_S`` (long generations may want more)."""
    return float(os.environ.get("ABHARNESS_STOP_GRACE_S") or GRACE_S)


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)

log = logging.getLogger(__name__)


@dataclass
class RunStats:
    calls: int = 0  # every record, judges' calls included
    judge_calls: int = 0
    ok: int = 0
    attempts: int = 0
    cache_hits: int = 0
    errors: Counter[str] = field(default_factory=Counter)  # calls made that failed
    not_made: Counter[str] = field(default_factory=Counter)  # never made, by why
    # per arm, answered calls whose token counts the server did not report, or a proxy
    # estimated: (missing, estimated, answered)
    usage: dict[str, list[int]] = field(default_factory=dict)
    cost_usd: float = 0.0
    wall_time_s: float = 0.0

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    @property
    def not_made_count(self) -> int:
        return sum(self.not_made.values())

    def usage_notes(self) -> list[str]:
        """One line per arm whose token counts are missing or a proxy's estimate."""
        notes = []
        for arm, (missing, estimated, answered) in sorted(self.usage.items()):
            if missing:
                notes.append(
                    f"{arm}: the server reported no token counts for {missing} of {answered} "
                    "answered calls (stored as null, never guessed; their cost is unknown "
                    "unless the arm is priced at 0). Streamed usage needs "
                    "stream_options.include_usage; `stream: false` on the arm gets the "
                    "counts from servers that do not send it"
                )
            if estimated:
                notes.append(
                    f"{arm}: {estimated} of {answered} calls' token counts are a proxy's own "
                    "estimate, not the model's (usage_source = 'proxy_estimate')"
                )
        return notes

    def add(self, record: CallRecord) -> None:
        self.calls += 1
        self.judge_calls += record.judged_call_id is not None
        self.attempts += record.attempts
        self.cost_usd += record.cost_usd or 0.0
        if record.ok:
            self.ok += 1
            self.cache_hits += record.cache_hit
            counts = self.usage.setdefault(record.arm_id, [0, 0, 0])
            counts[0] += record.usage_source == "missing"
            counts[1] += record.usage_source == "proxy_estimate"
            counts[2] += 1
        else:
            assert record.error_type is not None
            (self.errors if record.made else self.not_made)[record.error_type] += 1


class Runner:
    def __init__(
        self,
        plan: Plan,
        store: Store,
        run_id: str,
        *,
        on_call: Callable[[CallRecord], None] | None = None,
        policy: RetryPolicy | None = None,
        cache: ResponseCache | None = None,
        skip: Collection[str] = (),
        concurrency: int | None = None,
        grace_s: float | None = None,
        on_batch: Callable[[Tracked], None] | None = None,
        batch_deadline_s: float | None = None,
    ) -> None:
        self.plan = plan
        self.run_id = run_id
        self.on_call = on_call
        self.skip = skip
        # how long calls in flight may finish after the first stop request
        self.grace_s = grace_s if grace_s is not None else stop_grace_s()
        self.stats = RunStats()
        self.stopping = False
        self.endpoints = Endpoints(policy or RetryPolicy(), concurrency)
        self.load_errors: dict[int, CallError] = {}
        self.cost_cap = CostCap(plan.spec.experiment.max_cost_usd)
        self._writer = Writer(store, on_failure=self._store_failed)
        self.reuse = store.answered  # answered by a run that died before scoring them
        self.executor = Executor(
            run_id,
            self.endpoints,
            self.endpoints.policy,
            self.cost_cap,
            cache,
            self.load_errors,
            lambda: self.stopping,
            self._writer.finished,
        )
        self._tasks: set[asyncio.Task[None]] = set()
        self.batcher: Batcher | None = None
        if plan.batched:
            self.batcher = Batcher(
                run_id,
                self.executor,
                self._writer,
                self.cost_cap,
                self._deliver,
                policy=self.endpoints.policy,
                resumed=uncollected(store.con, run_id),
                arms=plan.batched,
                on_batch=on_batch,
                deadline_s=batch_deadline_s,
            )

    @property
    def status(self) -> str:
        """interrupted (a signal), budget_exhausted (the cost cap), incomplete (calls
        never made because an endpoint or model stopped, or still in a batch at the
        provider: resume makes or collects them), completed."""
        if self.stopping:
            return "interrupted"
        if self.cost_cap.refused:
            return "budget_exhausted"
        if self.stats.not_made_count or self.batches_running():
            return "incomplete"
        return "completed"

    def batches_running(self) -> list[Tracked]:
        """Batches still running at the provider (billed) whose results resume collects."""
        return self.batcher.outstanding() if self.batcher else []

    def request_stop(self, sig: signal.Signals | None = None) -> None:
        """First call: stop dispatching, let calls in flight finish for `grace_s`.
        Second call: cancel them now."""
        if self.stopping:
            log.warning("second stop request: cancelling the calls in flight")
            self._cancel_all()
            return
        log.warning(
            "%s: no new calls; those in flight have %g s to finish",
            sig.name if sig else "stop requested",
            self.grace_s,
        )
        self.stopping = True
        if self.batcher is not None:
            self.batcher.stop()  # they run on at the provider; resume collects them
        asyncio.get_running_loop().call_later(self.grace_s, self._cancel_all)

    def _store_failed(self) -> None:
        """The staging file cannot be written: whatever is called now would be lost."""
        self.stopping = True
        self._cancel_all()

    def _cancel_all(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self.batcher is not None:
            self.batcher.cancel()

    async def run(self) -> RunStats:
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
        handled: list[signal.Signals] = []
        for sig in STOP_SIGNALS:
            try:
                loop.add_signal_handler(sig, self.request_stop, sig)
                handled.append(sig)
            except (NotImplementedError, RuntimeError, ValueError):
                pass  # not the main thread: Ctrl-C raises KeyboardInterrupt instead
        await asyncio.gather(*(self._load(p) for p in self.plan.providers))
        writer = asyncio.create_task(self._writer.run())
        try:
            await self._produce()
            if self.batcher is not None:
                await self.batcher.finish()
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
        finally:
            self._cancel_all()
            await self._writer.close()
            try:
                await writer  # raises StoreWriteError if an insert failed
            finally:
                for provider in self.plan.providers:
                    await provider.aclose()
                for sig in handled:
                    loop.remove_signal_handler(sig)
                    signal.signal(sig, previous[sig])
        self.stats.wall_time_s = time.perf_counter() - started
        return self.stats

    def limits(self) -> dict[str, str]:
        """Per endpoint with a rate limit (set, or learned from its headers): the limits
        in force at the end, and where they came from."""
        return {  # the key without its last part, a hash of the API key
            e.key.rsplit(":", 1)[0]: e.limits.describe()
            for e in self.endpoints
            if e.limits.rpm or e.limits.tpm
        }

    def concurrency(self) -> list[str]:
        """One line per model whose concurrency was lowered: what was in force at the
        end, and why."""
        return [
            line
            for e in self.endpoints
            for c in e.models.values()
            if c.window is not None and (line := c.window.describe())
        ]

    def failures(self) -> list[str]:
        """One line per endpoint that could not start, or stopped (credentials, down)."""
        lines = []
        for provider in self.plan.providers:
            exc = self.load_errors.get(id(provider))
            if exc is not None:
                arms = [a.id for a in self.plan.all_arms() if a.provider is provider]
                lines.append(
                    f"{', '.join(arms)} ({provider.label}): {exc.error_type}: {exc}; "
                    "its calls were recorded as errors, none made"
                )
        lines += [line for e in self.endpoints for c in e.circuits() if (line := c.failure_line())]
        return lines + (self.batcher.failures if self.batcher else [])

    async def _load(self, provider: Provider) -> None:
        try:
            await asyncio.to_thread(provider.load)
        except CallError as exc:
            self.load_errors[id(provider)] = exc
        except Exception as exc:
            self.load_errors[id(provider)] = OtherCallError(
                f"could not load {provider.label}: {exc}"
            )

    async def _produce(self) -> None:
        repeats = self.plan.spec.experiment.repeats
        endpoints = {
            a.id: self.endpoints.of(a.provider, a.id, a.model) for a in self.plan.all_arms()
        }
        for arm in self.plan.arms:  # a composite's calls wait with its first part's
            endpoints.setdefault(arm.id, endpoints[parts_of(arm)[0].id])
        for case in self.plan.cases():
            if self.stopping:
                return
            await self._writer.put_case(self.run_id, case)
            variables = case.template_vars()
            for repeat in range(repeats):
                for arm in self.plan.arms:
                    cid = call_id(self.run_id, arm.id, case.id, repeat)
                    if cid in self.skip:
                        continue
                    if self.batcher is not None and isinstance(arm, ArmPlan) and arm.batch:
                        await self.batcher.add(CallJob(arm, case, repeat, cid, variables))
                        continue
                    pending = endpoints[arm.id].pending
                    await pending.acquire()
                    if self.stopping:
                        pending.release()
                        return
                    task = asyncio.create_task(
                        self._call(CallJob(arm, case, repeat, cid, variables))
                    )
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
                    task.add_done_callback(functools.partial(_release, pending))

    async def _call(self, job: CallJob) -> None:
        try:
            arm = job.arm
            if isinstance(arm, CompositePlan) and arm.kind == "panel":
                record, response = await panel_call(
                    job, self.run_id, self.cost_cap, self._execute, self._write_part
                )
            else:
                record, response = await self._execute(job)
            scores = [] if response is None else await self._score(job, record, response)
        except NotStarted:
            return  # no record: resume makes it
        await self._write(record, scores)

    async def _deliver(
        self, job: CallJob, record: CallRecord, response: ProviderResponse | None
    ) -> None:
        """A batch call's result, journaled already: scored and written."""
        try:
            scores = [] if response is None else await self._score(job, record, response)
        except NotStarted:
            return  # a judge not called: resume scores it without paying for it again
        await self._write(record, scores)

    async def _write_part(
        self, job: CallJob, record: CallRecord, response: ProviderResponse | None
    ) -> None:
        """A panel's part as soon as it is made: a member scored by the spec's scorers
        (the report compares the panel with each of its members), the synthesizer not
        (its answer is the panel's, scored as the panel's)."""
        member = record.role == "member" and response is not None
        scores = await self._score(job, record, response) if member and response else []
        await self._write(record, scores)

    async def _execute(self, job: CallJob) -> tuple[CallRecord, ProviderResponse | None]:
        """The executor's record and response, or, for a call a dead run had answered but
        not scored, that answer again (it is in the journal; it is not paid twice)."""
        answered = self.reuse.pop(job.call_id, None)
        if answered is None:
            return await self.executor.execute(job)
        text = answered.response_text or ""
        return answered, ProviderResponse(text=text, usage=Usage()) if answered.ok else None

    async def _score(
        self, job: CallJob, record: CallRecord, response: ProviderResponse
    ) -> list[ScoreRecord]:
        out = []
        for scorer in self.plan.scorers:
            try:
                if scorer.is_judge:
                    s = await self._judge(scorer, job, record, response.text)
                else:
                    s = scorer.score(response.text, job.case.data)
                out.append(
                    ScoreRecord(
                        record.call_id, self.run_id, scorer.name, s.value, s.passed, s.detail
                    )
                )
            except NotStarted:
                raise
            except Exception as exc:  # a scorer that fails is recorded, never a crash
                out.append(
                    ScoreRecord(
                        record.call_id, self.run_id, scorer.name, None, None, f"scorer error: {exc}"
                    )
                )
        return out

    async def _judge(self, scorer: Scorer, job: CallJob, judged: CallRecord, text: str) -> Score:
        """Grade one response: one call of the judge's arm, through the same executor."""
        judge = self.plan.judges[scorer.name]
        expected = scorer.expected(job.case.data)
        variables = {
            **job.variables,
            "response": text,
            "expected": expected[0] if expected else None,
        }
        cid = call_id(self.run_id, judge.id, judged.call_id, job.repeat)
        record, response = await self._execute(
            CallJob(judge, job.case, job.repeat, cid, variables, judged_call_id=judged.call_id)
        )
        await self._write(record, [])
        if response is None:
            raise RuntimeError(f"judge call failed: {record.error_type}: {record.error_message}")
        return scorer.judge_score(response.text)

    async def _write(self, record: CallRecord, scores: list[ScoreRecord]) -> None:
        self.stats.add(record)
        await self._writer.put(record, scores)
        if self.on_call:
            self.on_call(record)


def _release(semaphore: asyncio.Semaphore, _: object) -> None:
    semaphore.release()
