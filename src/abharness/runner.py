"""Run a plan: every arm × case × repeat is one call, dispatched concurrently.

Work is produced lazily, case by case with the arms interleaved (so drift over the run
affects every arm alike), into one small bounded queue per endpoint (connection key);
each endpoint has as many workers as it allows calls in flight, and its own request
and token limits, circuit breaker and credential state. Memory depends on the
concurrency, not on the dataset's size.

Every call dispatched ends as exactly one row: ``ok``, or ``error`` with a SPEC
``error_type`` and the number of ``attempts`` made. Nothing a call raises stops the
run. A call that is not made still gets a row with ``attempts = 0`` when there is a
reason to record (credentials failed on its endpoint, the cost budget is spent); a
call skipped because the run was stopped gets none, so resume makes it. Rows go to one
writer task that inserts them in batches into the run's staging store.

Ctrl-C stops dispatching, gives calls in flight `GRACE_S` to finish, and returns; a
second Ctrl-C cancels them at once.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections import Counter
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from .budget import FittedPrompt
from .cache import ResponseCache, cache_key
from .costcap import CostCap
from .dataset import Case
from .errors import (
    AuthError,
    BudgetError,
    CallError,
    OtherCallError,
    TimeoutError_,
    error_type_of,
)
from .hashing import content_hash
from .limits import EndpointLimits
from .plan import ArmPlan, Plan
from .providers import Provider
from .providers.base import ProviderResponse, Usage
from .retry import CircuitBreaker, RetryPolicy
from .store import Store

WRITE_BATCH = 64
WRITE_INTERVAL_S = 1.0
QUEUE_SLOTS_PER_WORKER = 2
GRACE_S = 5.0


@dataclass
class RunStats:
    calls: int = 0
    ok: int = 0
    attempts: int = 0
    cache_hits: int = 0
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


@dataclass
class _Endpoint:
    """What the arms on one connection key share."""

    key: str
    workers: int
    limits: EndpointLimits
    breaker: CircuitBreaker
    queue: asyncio.Queue[_Work | None]
    stopped: CallError | None = None  # credentials failed: no further calls
    not_called: int = 0
    arms: list[str] = field(default_factory=list)
    # Until the endpoint has answered once, one call at a time: a wrong key then costs
    # one call, not one per worker.
    proven: bool = False
    gate: asyncio.Lock = field(default_factory=asyncio.Lock)


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
        policy: RetryPolicy | None = None,
        cache: ResponseCache | None = None,
        skip: Collection[str] = (),
        concurrency: int | None = None,
        grace_s: float = GRACE_S,
    ) -> None:
        self.plan = plan
        self.store = store
        self.run_id = run_id
        self.on_call = on_call
        self.policy = policy or RetryPolicy()
        self.cache = cache
        self.skip = skip
        self.concurrency = concurrency
        self.grace_s = grace_s
        self.stats = RunStats()
        self.cost_cap = CostCap(plan.spec.experiment.max_cost_usd)
        self.stopping = False
        self._writer = _Writer(store)
        self._load_errors: dict[int, CallError] = {}
        self._endpoints: dict[str, _Endpoint] = {}
        self._workers: list[asyncio.Task[None]] = []

    @property
    def status(self) -> str:
        if self.stopping:
            return "interrupted"
        return "budget_exhausted" if self.cost_cap.refused else "completed"

    def request_stop(self) -> None:
        """First call: stop dispatching, let calls in flight finish for `grace_s`.
        Second call: cancel them now."""
        loop = asyncio.get_running_loop()
        if self.stopping:
            self._cancel_workers()
            return
        self.stopping = True
        loop.call_later(self.grace_s, self._cancel_workers)

    def _cancel_workers(self) -> None:
        for task in self._workers:
            task.cancel()

    async def run(self) -> RunStats:
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        try:
            loop.add_signal_handler(signal.SIGINT, self.request_stop)
            handles_sigint = True
        except (NotImplementedError, RuntimeError, ValueError):
            handles_sigint = False
        await self._load_providers()
        for arm in self.plan.arms:
            endpoint = self._endpoint_for(arm.provider)
            endpoint.arms.append(arm.id)
        for endpoint in self._endpoints.values():
            self._workers += [
                asyncio.create_task(self._worker(endpoint)) for _ in range(endpoint.workers)
            ]
        writer = asyncio.create_task(self._writer.run())
        try:
            await self._produce()
            for endpoint in self._endpoints.values():
                for _ in range(endpoint.workers):
                    await endpoint.queue.put(None)
            await asyncio.gather(*self._workers, return_exceptions=True)
        finally:
            self._cancel_workers()
            await self._writer.queue.put(None)
            await writer
            for provider in self.plan.providers:
                await provider.aclose()
            if handles_sigint:
                loop.remove_signal_handler(signal.SIGINT)
        self.stats.wall_time_s = time.perf_counter() - started
        return self.stats

    def failures(self) -> list[str]:
        """One line per endpoint that could not start or whose credentials failed."""
        lines = []
        for provider in self.plan.providers:
            exc = self._load_errors.get(id(provider))
            if exc is not None:
                arms = [a.id for a in self.plan.arms if a.provider is provider]
                lines.append(
                    f"{', '.join(arms)} ({provider.label}): {exc.error_type}: {exc}; "
                    "its calls were recorded as errors, none made"
                )
        for e in self._endpoints.values():
            if e.stopped is not None and e.not_called:
                lines.append(
                    f"{', '.join(e.arms)}: {e.stopped.error_type}: {e.stopped}; stopped after the "
                    f"first failure, {e.not_called} further calls not made"
                )
        return lines

    def _endpoint_for(self, provider: Provider) -> _Endpoint:
        failed = self._load_errors.get(id(provider))
        key = f"failed:{id(provider)}" if failed else provider.connection_key()
        if key not in self._endpoints:
            workers = 1 if failed else max(1, provider.max_concurrency())
            if self.concurrency:
                workers = min(workers, self.concurrency)
            rpm, tpm = provider.rate_limits()
            self._endpoints[key] = _Endpoint(
                key,
                workers,
                EndpointLimits(rpm, tpm),
                CircuitBreaker(self.policy.circuit_threshold, self.policy.circuit_cooldown_s),
                asyncio.Queue(maxsize=workers * QUEUE_SLOTS_PER_WORKER),
            )
        return self._endpoints[key]

    async def _load_providers(self) -> None:
        async def load(p: Provider) -> None:
            try:
                await asyncio.to_thread(p.load)
            except CallError as exc:
                self._load_errors[id(p)] = exc
            except Exception as exc:
                self._load_errors[id(p)] = OtherCallError(f"could not load {p.label}: {exc}")

        await asyncio.gather(*(load(p) for p in self.plan.providers))

    async def _produce(self) -> None:
        repeats = self.plan.spec.experiment.repeats
        endpoints = {a.id: self._endpoint_for(a.provider) for a in self.plan.arms}
        for case in self.plan.cases():
            if self.stopping:
                return
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
                    if call_id(self.run_id, arm.id, case.id, repeat) in self.skip:
                        continue
                    if self.stopping:
                        return
                    await endpoints[arm.id].queue.put(_Work(arm, case, repeat, time.perf_counter()))

    async def _worker(self, endpoint: _Endpoint) -> None:
        while (work := await endpoint.queue.get()) is not None:
            if self.stopping:
                continue  # not started: no row, resume will make it
            await self._call(work, endpoint)

    def _new_row(
        self, arm: ArmPlan, case: Case, repeat: int, cid: str, **extra: Any
    ) -> dict[str, Any]:
        return {
            "call_id": cid,
            "run_id": self.run_id,
            "arm_id": arm.id,
            "case_id": case.id,
            "repeat": repeat,
            "attempts": 0,
            "cache_hit": False,
            "started_at": datetime.now(UTC).replace(tzinfo=None),
            "queue_ms": None,  # set when the first attempt leaves: all waiting before it
            "latency_ms": None,  # the last attempt, from sending to the full response
            **extra,
        }

    def _fit(self, arm: ArmPlan, variables: dict[str, Any], row: dict[str, Any]) -> FittedPrompt:
        """The prompt fitted to the arm's budget, recorded in `row`; a provider that
        could not load fails here, before anything is reserved or sent."""
        load_error = self._load_errors.get(id(arm.provider))
        if load_error is not None:
            raise load_error
        fitted = arm.fit_vars(variables)
        row.update(
            est_input_tokens=fitted.est_input_tokens,
            est_method=fitted.method,
            truncated_json=json.dumps(fitted.truncated) if fitted.truncated else None,
            prompt_text=fitted.rendered.text,
        )
        return fitted

    async def _dispatch(
        self,
        arm: ArmPlan,
        request: Any,
        est_tokens: int,
        endpoint: _Endpoint,
        row: dict[str, Any],
        enqueued_at: float,
    ) -> ProviderResponse:
        """Reserve the call's worst case under the cost cap, make it (with retries) and
        settle the reservation to what it cost; the response is recorded in `row`."""
        worst = arm.worst_case_cost(est_tokens)
        if self.cost_cap.refused or not self.cost_cap.reserve(worst):
            raise BudgetError(
                f"not dispatched: max_cost_usd={self.cost_cap.max} would be exceeded "
                f"(spent {self.cost_cap.spent:.6f}, reserved {self.cost_cap.reserved:.6f}, "
                f"this call up to {worst:.6f})"
            )
        try:
            response = await self._attempts(arm, request, est_tokens, endpoint, row, enqueued_at)
        except BaseException as exc:
            # refused calls cost nothing; a timed-out or cancelled one may have been billed
            billed = isinstance(exc, TimeoutError_ | asyncio.CancelledError)
            self.cost_cap.settle(worst, None if billed else Decimal(0))
            raise
        # an unknown cost keeps its whole reservation
        self.cost_cap.settle(worst, self._record_response(row, response, arm))
        return response

    async def _call(self, work: _Work, endpoint: _Endpoint) -> None:
        arm, case = work.arm, work.case
        row = self._new_row(
            arm, case, work.repeat, call_id(self.run_id, arm.id, case.id, work.repeat)
        )
        response: ProviderResponse | None = None
        try:
            fitted = self._fit(arm, case.template_vars(), row)
            request = arm.request(fitted)
            parts = {
                "type": arm.endpoint.type,
                "endpoint": arm.provider.connection_key(),
                "model": request.model,
                "prompt": fitted.rendered.as_json(),
                "params": arm.params.model_dump(exclude_none=True, exclude={"timeout_s", "stream"}),
            }
            row["request_hash"] = content_hash(parts, 24)
            key = cache_key({**parts, "repeat": work.repeat}, request.temperature, request.seed)
            if self.cache is not None and key is not None:
                hit = await asyncio.to_thread(self.cache.get, key)
                if hit is not None:
                    await self._finish(row, _from_cache(row, hit), work)
                    return
            if endpoint.stopped is not None:
                endpoint.not_called += 1
                raise type(endpoint.stopped)(
                    f"not called: credentials failed earlier on this endpoint ({endpoint.stopped})"
                )
            response = await self._dispatch(
                arm, request, fitted.est_input_tokens, endpoint, row, work.enqueued_at
            )
            row["status"] = "ok"
            if self.cache is not None and key is not None:
                row["_cache_key"] = key
        except asyncio.CancelledError:
            raise  # cancelled by a second Ctrl-C or the grace period: no row, resume redoes it
        except Exception as exc:  # every failure is a row; nothing a call raises stops the run
            row.update(status="error", error_type=error_type_of(exc), error_message=_describe(exc))
        await self._finish(row, response, work)

    async def _attempts(
        self,
        arm: ArmPlan,
        request: Any,
        est_tokens: int,
        endpoint: _Endpoint,
        row: dict[str, Any],
        enqueued_at: float,
    ) -> ProviderResponse:
        """Make the call, retrying per the policy; count attempts, queue time and the
        last attempt's latency into `row`."""
        waited = 0.0
        while True:
            waited += await endpoint.breaker.before_call(self.policy.max_total_wait_s - waited)
            await endpoint.limits.acquire(est_tokens + (arm.params.max_tokens or 0))
            gated = not endpoint.proven
            if gated:
                await endpoint.gate.acquire()
            try:
                if endpoint.stopped is not None:
                    endpoint.not_called += 1
                    raise type(endpoint.stopped)(
                        f"not called: credentials failed earlier on this endpoint ({endpoint.stopped})"
                    )
                row["attempts"] += 1
                self.stats.attempts += 1
                sent = time.perf_counter()
                if row["queue_ms"] is None:
                    row["queue_ms"] = (sent - enqueued_at) * 1000
                response, error = await self._attempt(arm, request, endpoint)
                row["latency_ms"] = (time.perf_counter() - sent) * 1000
            finally:
                if gated:
                    endpoint.gate.release()
            if response is not None:
                return response
            assert error is not None
            if isinstance(error, AuthError):
                endpoint.stopped = error
                raise error
            if not self.policy.should_retry(error, row["attempts"]):
                raise error
            delay = self.policy.delay_s(row["attempts"], error.retry_after_s)
            if waited + delay > self.policy.max_total_wait_s:
                raise error
            await asyncio.sleep(delay)
            waited += delay

    async def _attempt(
        self, arm: ArmPlan, request: Any, endpoint: _Endpoint
    ) -> tuple[ProviderResponse | None, CallError | None]:
        """One attempt: the response, or the error it ended with (never raised)."""
        try:
            response = await asyncio.wait_for(arm.provider.generate(request), arm.params.timeout_s)
        except asyncio.CancelledError:
            endpoint.breaker.abandon()
            raise
        except TimeoutError as exc:
            error: CallError = TimeoutError_(f"no answer within timeout_s={arm.params.timeout_s}")
            error.__cause__ = exc
        except CallError as exc:
            error = exc
        except Exception as exc:  # a provider bug: recorded as 'other', never retried
            error = OtherCallError(f"{type(exc).__name__}: {exc}")
            error.__cause__ = exc
        else:
            endpoint.proven = True
            endpoint.breaker.record(None)
            return response, None
        if not isinstance(error, AuthError) and error.status_code is not None:
            endpoint.proven = True  # it answered, and not with an auth error
        endpoint.breaker.record(error)
        return None, error

    def _record_response(
        self, row: dict[str, Any], response: ProviderResponse, arm: ArmPlan
    ) -> Decimal | None:
        usage = response.usage
        metrics = _metrics(response, arm)
        cost, source = arm.cost(usage, row["started_at"])
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
        return cost

    async def _finish(
        self, row: dict[str, Any], response: ProviderResponse | None, work: _Work
    ) -> None:
        """Score, cache, account and write one finished call."""
        key = row.pop("_cache_key", None)
        if key is not None and self.cache is not None:
            await asyncio.to_thread(self.cache.put, key, row)
        scores = []
        if response is not None:
            for scorer in self.plan.scorers:
                base = {"call_id": row["call_id"], "run_id": self.run_id, "scorer": scorer.name}
                try:
                    if scorer.is_judge:
                        s = await self._judge(scorer, response.text, work, row)
                    else:
                        s = scorer.score(response.text, work.case.data)
                    scores.append(
                        {**base, "value": s.value, "passed": s.passed, "detail": s.detail}
                    )
                except Exception as exc:  # a scorer bug is recorded, not a crash
                    scores.append(
                        {**base, "value": None, "passed": None, "detail": f"scorer error: {exc}"}
                    )
        self._account(row)
        await self._writer.put("calls", row)
        for score_row in scores:
            await self._writer.put("scores", score_row)
        if self.on_call:
            self.on_call(row)

    async def _judge(
        self, scorer: Any, response_text: str, work: _Work, judged: dict[str, Any]
    ) -> Any:
        """Grade one response with the scorer's judge arm: one logged call of that arm,
        under the same limits, retries and cost cap as any other call."""
        judge = self.plan.judges[scorer.name]
        case = work.case
        expected = scorer.expected(case.data)
        variables = {
            **case.template_vars(),
            "response": response_text,
            "expected": expected[0] if expected else None,
        }
        cid = call_id(self.run_id, judge.id, judged["call_id"], work.repeat)
        row = self._new_row(judge, case, work.repeat, cid, judged_call_id=judged["call_id"])
        response = None
        try:
            fitted = self._fit(judge, variables, row)
            response = await self._dispatch(
                judge,
                judge.request(fitted),
                fitted.est_input_tokens,
                self._endpoint_for(judge.provider),
                row,
                time.perf_counter(),
            )
            row["status"] = "ok"
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # recorded as the judge's error row, then a scorer error
            row.update(status="error", error_type=error_type_of(exc), error_message=_describe(exc))
        await self._writer.put("calls", row)
        if response is None:
            raise RuntimeError(f"judge call failed: {row['error_type']}: {row['error_message']}")
        return scorer.judge_score(response.text)

    def _account(self, row: dict[str, Any]) -> None:
        self.stats.calls += 1
        if row["status"] == "ok":
            self.stats.ok += 1
            self.stats.cache_hits += bool(row["cache_hit"])
            self.stats.cost_usd += row.get("cost_usd") or 0.0
        else:
            self.stats.errors[row["error_type"]] += 1


def _from_cache(row: dict[str, Any], hit: dict[str, Any]) -> ProviderResponse:
    """Fill `row` from a cache hit: the stored response and counts, cost 0, no latency."""
    row.update(
        status="ok",
        cache_hit=True,
        cost_usd=0.0,
        price_source="cache",
        response_text=hit["response_text"],
        finish_reason=hit["finish_reason"],
        input_tokens=hit["input_tokens"],
        output_tokens=hit["output_tokens"],
        cache_read_tokens=hit["cache_read_tokens"],
        cache_write_tokens=hit["cache_write_tokens"],
        reasoning_tokens=hit["reasoning_tokens"],
        provider_metrics_json=json.dumps({"cached_from": hit["source_call_id"]}),
        latency_ms=None,
    )
    return ProviderResponse(text=hit["response_text"] or "", usage=Usage())


def _metrics(response: ProviderResponse, arm: ArmPlan) -> dict[str, Any]:
    ignored = [n for n in arm.provider.unsupported_params if getattr(arm.params, n) is not None]
    return {**response.metrics, "ignored_params": ignored} if ignored else response.metrics


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if isinstance(exc, CallError) else f"{type(exc).__name__}: {text}"
