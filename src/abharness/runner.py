"""Run a plan: every arm × case × repeat is one call, dispatched concurrently.

Work is produced lazily, case by case with the arms interleaved (so drift over the
run affects every arm alike), into one small bounded queue per connection key; each
key has as many workers as its provider allows in flight. Memory therefore depends on
the concurrency, not on the dataset's size.

Every call ends as exactly one row: ``ok``, or ``error`` with a SPEC ``error_type``.
Nothing a call raises stops the run. Rows go to one writer task that inserts them in
batches into the run's staging store.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from .dataset import Case
from .errors import CallError, error_type_of
from .hashing import content_hash
from .plan import ArmPlan, Plan
from .pricing import call_cost
from .providers import Provider
from .providers.base import ProviderResponse
from .store import Store

WRITE_BATCH = 64
WRITE_INTERVAL_S = 1.0
QUEUE_SLOTS_PER_WORKER = 2


@dataclass
class RunStats:
    calls: int = 0
    ok: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    cost_usd: float = 0.0
    wall_time_s: float = 0.0

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())


@dataclass
class _Work:
    arm: ArmPlan
    case: Case
    repeat: int
    enqueued_at: float


def call_id(run_id: str, arm_id: str, case_id: str, repeat: int) -> str:
    """Stable id of one (run, arm, case, repeat): a resumed run finds its calls again."""
    return content_hash([run_id, arm_id, case_id, repeat], 24)


class _Writer:
    """One task owning the store: batches rows and inserts them off the event loop."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.queue: asyncio.Queue[tuple[str, dict[str, Any]] | None] = asyncio.Queue(
            maxsize=4 * WRITE_BATCH
        )

    async def put(self, table: str, row: dict[str, Any]) -> None:
        await self.queue.put((table, row))

    async def run(self) -> None:
        pending: dict[str, list[dict[str, Any]]] = {}
        count = 0
        deadline = time.monotonic() + WRITE_INTERVAL_S
        done = False
        while not done:
            try:
                item = await asyncio.wait_for(
                    self.queue.get(), max(deadline - time.monotonic(), 0.01)
                )
            except TimeoutError:
                item = ("", {})
            if item is None:
                done = True
            elif item[0]:
                pending.setdefault(item[0], []).append(item[1])
                count += 1
            if done or count >= WRITE_BATCH or time.monotonic() >= deadline:
                if count:
                    await asyncio.to_thread(self._flush, pending)
                pending, count = {}, 0
                deadline = time.monotonic() + WRITE_INTERVAL_S

    def _flush(self, pending: dict[str, list[dict[str, Any]]]) -> None:
        # parents before children, so a reader never sees a score without its call
        for table in ("cases", "calls", "scores"):
            if table in pending:
                self.store.insert(table, pending[table])


class Runner:
    def __init__(
        self,
        plan: Plan,
        store: Store,
        run_id: str,
        *,
        on_call: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.plan = plan
        self.store = store
        self.run_id = run_id
        self.on_call = on_call
        self.stats = RunStats()
        self._writer = _Writer(store)
        self._load_errors: dict[int, CallError] = {}

    async def run(self) -> RunStats:
        started = time.perf_counter()
        await self._load_providers()
        queues: dict[str, asyncio.Queue[_Work | None]] = {}
        n_workers: dict[str, int] = {}
        workers: list[asyncio.Task[None]] = []
        for arm in self.plan.arms:
            key = self._key(arm.provider)
            if key in queues:
                continue
            failed = id(arm.provider) in self._load_errors
            n = 1 if failed else max(1, arm.provider.max_concurrency())
            queues[key] = asyncio.Queue(maxsize=n * QUEUE_SLOTS_PER_WORKER)
            n_workers[key] = n
            workers += [asyncio.create_task(self._worker(queues[key])) for _ in range(n)]
        writer = asyncio.create_task(self._writer.run())
        try:
            await self._produce(queues)
            for key, queue in queues.items():
                for _ in range(n_workers[key]):
                    await queue.put(None)
            await asyncio.gather(*workers)
        finally:
            for w in workers:
                w.cancel()
            await self._writer.queue.put(None)
            await writer
            for provider in self.plan.providers:
                await provider.aclose()
        self.stats.wall_time_s = time.perf_counter() - started
        return self.stats

    def load_failures(self) -> list[str]:
        """One line per endpoint that could not start (a missing key, a missing model)."""
        lines = []
        for provider in self.plan.providers:
            exc = self._load_errors.get(id(provider))
            if exc is not None:
                arms = [a.id for a in self.plan.arms if a.provider is provider]
                lines.append(
                    f"{', '.join(arms)} ({provider.label}): "
                    f"{exc.error_type}: {exc}; its calls were recorded as errors, none made"
                )
        return lines

    def _key(self, provider: Provider) -> str:
        if id(provider) in self._load_errors:
            return f"failed:{id(provider)}"
        return provider.connection_key()

    async def _load_providers(self) -> None:
        async def load(p: Provider) -> None:
            try:
                await asyncio.to_thread(p.load)
            except CallError as exc:
                self._load_errors[id(p)] = exc
            except Exception as exc:
                self._load_errors[id(p)] = CallError(f"could not load {p.label}: {exc}")

        await asyncio.gather(*(load(p) for p in self.plan.providers))

    async def _produce(self, queues: dict[str, asyncio.Queue[_Work | None]]) -> None:
        repeats = self.plan.spec.experiment.repeats
        for case in self.plan.cases():
            await self._writer.put(
                "cases",
                {
                    "run_id": self.run_id,
                    "case_id": case.id,
                    "vars_json": json.dumps(case.vars, ensure_ascii=False),
                    "expected_json": json.dumps(case.expected, ensure_ascii=False),
                },
            )
            for repeat in range(repeats):
                for arm in self.plan.arms:
                    await queues[self._key(arm.provider)].put(
                        _Work(arm, case, repeat, time.perf_counter())
                    )

    async def _worker(self, queue: asyncio.Queue[_Work | None]) -> None:
        while (work := await queue.get()) is not None:
            await self._call(work)

    async def _call(self, work: _Work) -> None:
        arm, case = work.arm, work.case
        row: dict[str, Any] = {
            "call_id": call_id(self.run_id, arm.id, case.id, work.repeat),
            "run_id": self.run_id,
            "arm_id": arm.id,
            "case_id": case.id,
            "repeat": work.repeat,
            "attempts": 0,
            "cache_hit": False,
            "started_at": datetime.now(UTC).replace(tzinfo=None),
        }
        response: ProviderResponse | None = None
        t0 = time.perf_counter()
        row["queue_ms"] = (t0 - work.enqueued_at) * 1000
        try:
            load_error = self._load_errors.get(id(arm.provider))
            if load_error is not None:
                raise load_error
            fitted = arm.fit(case)
            row.update(
                est_input_tokens=fitted.est_input_tokens,
                est_method=fitted.method,
                truncated_json=json.dumps(fitted.truncated) if fitted.truncated else None,
                prompt_text=fitted.rendered.text,
            )
            request = arm.request(fitted)
            row["request_hash"] = content_hash(
                [
                    arm.endpoint.type,
                    arm.provider.connection_key(),
                    request.model,
                    fitted.rendered.as_json(),
                    arm.params.model_dump(exclude_none=True),
                ]
            )
            row["attempts"] = 1
            t0 = time.perf_counter()
            response = await asyncio.wait_for(arm.provider.generate(request), arm.params.timeout_s)
            row["status"] = "ok"
        except Exception as exc:  # every failure is a row; nothing a call raises stops the run
            row.update(
                status="error", error_type=error_type_of(exc), error_message=_describe(exc, arm)
            )
        row["latency_ms"] = (time.perf_counter() - t0) * 1000
        scores = []
        if response is not None:
            usage = response.usage
            metrics = _metrics(response, arm)
            cost, source = call_cost(
                usage,
                arm.price,
                local=arm.tier == 1,
                model=arm.arm.model,
                provider_id=arm.endpoint.price_provider,
                api_url=arm.endpoint.base_url,
                when=row["started_at"],
            )
            row.update(
                ttft_ms=response.ttft_ms,
                input_tokens=usage.input_tokens,
                output_tokens=usage.output_tokens,
                cache_read_tokens=usage.cache_read_tokens,
                cache_write_tokens=usage.cache_write_tokens,
                reasoning_tokens=usage.reasoning_tokens,
                cost_usd=float(cost) if cost is not None else None,
                price_source=source,
                response_text=response.text,
                finish_reason=response.finish_reason,
                provider_metrics_json=json.dumps(metrics) if metrics else None,
            )
            for scorer in self.plan.scorers:
                try:
                    s = scorer.score(response.text, case.data)
                    scores.append(
                        {
                            "call_id": row["call_id"],
                            "run_id": self.run_id,
                            "scorer": s.scorer,
                            "value": s.value,
                            "passed": s.passed,
                            "detail": s.detail,
                        }
                    )
                except Exception as exc:  # a scorer bug is recorded, not a crash
                    scores.append(
                        {
                            "call_id": row["call_id"],
                            "run_id": self.run_id,
                            "scorer": scorer.name,
                            "value": None,
                            "passed": None,
                            "detail": f"scorer error: {exc}",
                        }
                    )
        self._account(row)
        await self._writer.put("calls", row)
        for score_row in scores:
            await self._writer.put("scores", score_row)
        if self.on_call:
            self.on_call(row)

    def _account(self, row: dict[str, Any]) -> None:
        self.stats.calls += 1
        if row["status"] == "ok":
            self.stats.ok += 1
            self.stats.cost_usd += row.get("cost_usd") or 0.0
        else:
            self.stats.errors[row["error_type"]] += 1


def _metrics(response: ProviderResponse, arm: ArmPlan) -> dict[str, Any]:
    ignored = [n for n in arm.provider.unsupported_params if getattr(arm.params, n) is not None]
    return {**response.metrics, "ignored_params": ignored} if ignored else response.metrics


def _describe(exc: BaseException, arm: ArmPlan) -> str:
    if isinstance(exc, TimeoutError) and not isinstance(exc, CallError):
        return f"no answer within timeout_s={arm.params.timeout_s}"
    text = str(exc) or type(exc).__name__
    return text if isinstance(exc, CallError) else f"{type(exc).__name__}: {text}"
