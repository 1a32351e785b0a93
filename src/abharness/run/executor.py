"""The one call path: every call, an arm's or a judge's, goes through `Executor.execute`.

    fit the prompt ─▶ cache? ─▶ reserve its worst-case cost ─▶ per attempt: breakers,
    slot, limits ─▶ attempts with retries ─▶ settle the cost ─▶ one `CallRecord`
    ─▶ `on_finished` (the journal), before anything else runs on the loop

Nothing a call raises escapes: it ends as exactly one record, ``ok`` or ``error`` with
a SPEC ``error_type``, the attempts made and each failed attempt's error. The only
exception is a call not started because the run is stopping (`NotStarted`): it gets
no record, so resume makes it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from ..errors import (
    AuthError,
    BudgetError,
    CallError,
    ConnectionError_,
    OtherCallError,
    ServerError,
    TimeoutError_,
    error_type_of,
)
from ..hashing import content_hash
from ..providers.base import ProviderRequest, ProviderResponse, Usage, track_attempt
from ..spec.dataset import Case
from ..store.cache import ResponseCache, cache_key
from ..store.records import USAGE_FIELDS, CallRecord
from .arm import ArmPlan, CompositePlan
from .costcap import CostCap
from .endpoints import Circuit, Endpoint, Endpoints
from .retry import CircuitOpenError, RetryPolicy, failure_scope
from .window import ConcurrencyWindow, overload_reason

log = logging.getLogger(__name__)


class NotStarted(Exception):
    """The run is stopping and this call had not been sent: no record, resume makes it."""


def call_id(run_id: str, arm_id: str, case_id: str, repeat: int) -> str:
    """Stable id of one (run, arm, case, repeat): a resumed run finds its calls again."""
    return content_hash([run_id, arm_id, case_id, repeat], 24)


class Relay:
    """Where a streamed call's text goes as it arrives (`abharness serve`'s client), and
    whether any has gone. Once a piece has gone the answer is the client's: the call is
    not retried, a route does not move on and no fallback answers, since the client
    already holds half an answer; an error then ends the call (and the client's stream)."""

    def __init__(self) -> None:
        self.pieces: asyncio.Queue[str | None] = asyncio.Queue()  # None: the request is answered
        self.began = asyncio.Event()
        self.call_id: str | None = None  # the call whose text flows
        self.arm_id: str | None = None

    @property
    def sent(self) -> bool:
        return self.began.is_set()

    def __call__(self, piece: str) -> None:
        self.began.set()
        self.pieces.put_nowait(piece)

    def end(self) -> None:
        self.pieces.put_nowait(None)


@dataclass
class CallJob:
    """One call to make: an arm's on a case, a judge's on an arm's call, or a part's of a
    composite call (`parent_call_id`). A route arm's job is made by its routes in turn;
    a panel's by `run.composite`."""

    arm: ArmPlan | CompositePlan
    case: Case
    repeat: int
    call_id: str
    variables: dict[str, Any]
    judged_call_id: str | None = None
    parent_call_id: str | None = None
    cost_cap: CostCap | None = None  # a composite call's hold, else the run's cap
    relay: Relay | None = None  # a live streamed request's: its text goes on as it arrives
    enqueued_at: float = field(default_factory=time.perf_counter)


@dataclass
class Prepared:
    """A call ready to be made: its request, estimated input tokens and cache key."""

    request: ProviderRequest
    est_tokens: int
    cache_key: str | None


@dataclass
class Call:
    """One call on its way down the path: what every step needs, in one place."""

    job: CallJob
    arm: ArmPlan  # the job's, or the route's that makes it
    request: ProviderRequest
    est_tokens: int
    endpoint: Endpoint
    model: Circuit  # the model's circuit on the endpoint, with its concurrency window
    record: CallRecord
    cost_cap: CostCap
    waited: float = 0.0  # seconds spent waiting for circuits and retries
    fallback_on: frozenset[str] = frozenset()  # a route's: errors that move on, not retried
    unreached: bool = False  # the last attempt could not connect to the server

    @property
    def circuits(self) -> tuple[Circuit, Circuit]:
        return self.endpoint.circuit, self.model

    @property
    def window(self) -> ConcurrencyWindow:
        assert self.model.window is not None
        return self.model.window


class Executor:
    def __init__(
        self,
        run_id: str,
        endpoints: Endpoints,
        policy: RetryPolicy,
        cost_cap: CostCap,
        cache: ResponseCache | None = None,
        load_errors: dict[int, CallError] | None = None,
        stopping: Callable[[], bool] = lambda: False,
        on_finished: Callable[[CallRecord], None] = lambda record: None,
    ) -> None:
        self.run_id = run_id
        self.endpoints = endpoints
        self.policy = policy
        self.cost_cap = cost_cap
        self.cache = cache
        self.load_errors = load_errors if load_errors is not None else {}
        self.stopping = stopping
        self.on_finished = on_finished

    async def execute(self, job: CallJob) -> tuple[CallRecord, ProviderResponse | None]:
        """Make `job`'s call; its record, and the response when it succeeded. The record
        is handed to `on_finished` (the journal) before anything else runs."""
        if isinstance(job.arm, CompositePlan):
            record, response = await self._route(job)
            self.on_finished(record)
            return record, response
        return await self._run(job, job.arm, self.on_finished)

    async def _route(self, job: CallJob) -> tuple[CallRecord, ProviderResponse | None]:
        """A route arm: its models in order until one answers. A route whose endpoint's or
        model's circuit is open or down is skipped at once; an error of a type in
        `fallback_on` moves on; anything else ends the call. The record is the serving
        route's, with `served_by`, every attempt counted and every failed route's error."""
        route = job.arm
        assert isinstance(route, CompositePlan)
        attempts = 0
        errors: list[dict[str, Any]] = []
        record: CallRecord | None = None
        response: ProviderResponse | None = None
        for part in route.parts:
            label = f"{part.endpoint_name}:{part.model}"
            endpoint = self.endpoints.of(part.provider)
            closed = [
                c
                for c in (endpoint.circuit, endpoint.model(part.model))
                if c.stopped is not None or c.breaker.state == "open" or c.breaker.down
            ]
            if closed:
                errors.append(
                    {
                        "route": label,
                        "error_type": "server",
                        "message": f"skipped: {closed[0].breaker.name}: circuit open",
                    }
                )
                continue
            record, response = await self._run(job, part, lambda r: None, route.fallback_on)
            attempts += record.attempts
            record.attempts = attempts
            if record.ok or record.error_type not in route.fallback_on:
                break
            if job.relay is not None and job.relay.sent:
                break  # the client has this route's half answer: no other may follow it
            errors.append(
                {"route": label, "error_type": record.error_type, "message": record.error_message}
            )
        if record is None:  # every route skipped
            record = CallRecord(job.call_id, self.run_id, route.id, job.case.id, job.repeat)
            record.fail("server", "not called: every route's circuit is open")
            record.unfinished = True
        record.arm_id, record.role = route.id, "arm"
        record.served_by = label if record.ok else None
        # each route it moved on from, then the last route's own attempts
        tried = json.loads(record.attempt_errors_json) if record.attempt_errors_json else []
        routed = [*errors, *tried]
        record.attempt_errors_json = json.dumps(routed, ensure_ascii=False) if routed else None
        return record, response

    def new_record(self, job: CallJob, arm: ArmPlan) -> CallRecord:
        """The record `job`'s call made by `arm` will fill."""
        return CallRecord(
            job.call_id,
            self.run_id,
            arm.id,
            job.case.id,
            job.repeat,
            judged_call_id=job.judged_call_id,
            role=arm.role if arm.role in ("judge", "member", "synthesizer") else "arm",
            parent_call_id=job.parent_call_id,
        )

    def prepare(self, job: CallJob, arm: ArmPlan, record: CallRecord) -> Prepared:
        """The prompt fitted to the arm's budget, the request, its hash and cache key, put
        on `record`; raises the `CallError` that ends the call before it is made (the
        provider could not load, the prompt cannot fit)."""
        load_error = self.load_errors.get(id(arm.provider))
        if load_error is not None:
            raise load_error
        fitted = arm.fit_vars(job.variables)
        record.est_input_tokens = fitted.est_input_tokens
        record.est_method = fitted.method
        record.truncated_json = json.dumps(fitted.truncated) if fitted.truncated else None
        record.prompt_text = fitted.rendered.text
        request = arm.request(fitted)
        parts = {
            "type": arm.endpoint.type,
            "endpoint": arm.provider.connection_key(),
            "model": request.model,
            "prompt": fitted.rendered.as_json(),
            "params": arm.hashed_params(),
        }
        api = arm.provider.api_for(request)
        if api is not None:  # only where one request can go to two APIs
            parts["api"] = api
        parts.update(arm.provider.cache_parts())
        record.request_hash = content_hash(parts, 24)
        key = None
        if self.cache is not None:
            key = cache_key({**parts, "repeat": job.repeat}, request.temperature, request.seed)
        return Prepared(request, fitted.est_input_tokens, key)

    async def from_cache(self, prepared: Prepared, record: CallRecord) -> ProviderResponse | None:
        """The cached answer to the call, filled into `record`, or None."""
        if prepared.cache_key is None:
            return None
        assert self.cache is not None
        hit = await asyncio.to_thread(self.cache.get, prepared.cache_key)
        if hit is None:
            return None
        _fill_from_cache(record, hit)
        return ProviderResponse(text=hit["response_text"] or "", usage=Usage())

    async def to_cache(self, prepared: Prepared, record: CallRecord) -> None:
        if prepared.cache_key is not None:
            assert self.cache is not None
            await asyncio.to_thread(self.cache.put, prepared.cache_key, record)

    async def _run(
        self,
        job: CallJob,
        arm: ArmPlan,
        finished: Callable[[CallRecord], None],
        fallback_on: frozenset[str] = frozenset(),
    ) -> tuple[CallRecord, ProviderResponse | None]:
        """`job`'s call made by `arm` (its own, or a route's); `finished` gets the record
        as soon as it is final, before the cache is written. A route's errors of a type
        in `fallback_on` are not retried: the next route is tried instead."""
        record = self.new_record(job, arm)
        cap = job.cost_cap or self.cost_cap
        try:
            prepared = self.prepare(job, arm, record)
            hit = await self.from_cache(prepared, record)
            if hit is not None:
                finished(record)
                return record, hit
            endpoint = self.endpoints.of(arm.provider)
            call = Call(
                job,
                arm,
                prepared.request,
                prepared.est_tokens,
                endpoint,
                endpoint.model(prepared.request.model),
                record,
                cap,
                fallback_on=fallback_on,
            )
            response = await self._reserve_and_call(call)
            record.status = "ok"
            finished(record)  # no await since its slot was freed: nothing ran yet
            await self.to_cache(prepared, record)
            return record, response
        except (asyncio.CancelledError, NotStarted):
            raise
        except Unfinished as stop:  # its circuit went down: missing data, resume makes it
            record.fail(stop.cause.error_type, _describe(stop.cause))
            record.unfinished = True
            finished(record)
            return record, None
        except Exception as exc:  # every failure is a record; nothing a call raises stops the run
            failed(record, exc)
            finished(record)
            return record, None

    async def _reserve_and_call(self, call: Call) -> ProviderResponse:
        """Reserve the call's worst case under the cost cap, make it and settle the
        reservation to what it cost (an unknown cost keeps its whole reservation)."""
        for circuit in call.circuits:
            if circuit.stopped is not None:
                circuit.not_called += 1
                raise _not_called(circuit.stopped)
        arm, record, cap = call.arm, call.record, call.cost_cap
        worst = arm.worst_case_cost(call.est_tokens)
        if cap.refused or not cap.reserve(worst):
            raise BudgetError(
                f"not dispatched: max_cost_usd={cap.root().max} would be exceeded "
                f"(spent {cap.spent:.6f}, reserved {cap.reserved:.6f}, this call up to "
                f"{worst:.6f})"
            )
        try:
            response = await self._attempts(call)
        except BaseException as exc:
            # refused calls cost nothing; a timed-out or cancelled one may have been billed
            billed = isinstance(exc, TimeoutError_ | asyncio.CancelledError)
            cap.settle(worst, None if billed else Decimal(0))
            raise
        cost = answered(record, response, arm)
        cap.settle(worst, cost)
        record.ttft_ms = response.ttft_ms
        record.provider_metrics_json = _metrics_json(call, response)
        return response

    async def _attempts(self, call: Call) -> ProviderResponse:
        """Make the call, retrying per the policy; each attempt holds room in the model's
        window and one of the endpoint's slots, and only while it is on the wire."""
        record = call.record
        while True:
            await self._wait_for_circuits(call)
            await call.window.acquire()
            try:
                response, error, blocked = await self._in_slot(call)
            finally:
                call.window.release()
            if blocked:
                continue  # back to the breakers: wait for the probe, or fail as down
            if response is not None:
                return response
            assert error is not None
            record.add_attempt_error(error.error_type, _describe(error), error.status_code)
            record.request_id = error.request_id or record.request_id
            log.debug(
                "%s attempt %d: %s: %s", record.call_id, record.attempts, error.error_type, error
            )
            if isinstance(error, AuthError):
                call.endpoint.circuit.stop(error)
                raise error
            for circuit in call.circuits:
                if circuit.breaker.down is not None:
                    circuit.stop(circuit.breaker.down)
                    raise Unfinished(error) from error
            if error.error_type in call.fallback_on:
                raise error
            if call.job.relay is not None and call.job.relay.sent:
                raise error  # the client has half of this answer: a retry cannot undo it
            delay = self.policy.delay_s(record.attempts, error.retry_after_s)
            if not self.policy.should_retry(error, record.attempts) or (
                call.waited + delay > self.policy.max_total_wait_s
            ):
                # it never reached a server (refused, reset, no such host): the call has no
                # outcome, missing data like a call never made (a timeout is an outcome:
                # the model was too slow for timeout_s)
                raise Unfinished(error) if call.unreached else error
            log.debug("%s: retry in %.2f s", record.call_id, delay)
            await asyncio.sleep(delay)
            call.waited += delay

    async def _wait_for_circuits(self, call: Call) -> None:
        """Until the endpoint's and the model's circuits let a call through; a circuit
        that is down, or stays open past the call's wait budget, ends the call
        unfinished (or not made, before its first attempt)."""
        for circuit in call.circuits:
            if call.fallback_on and circuit.breaker.state != "closed":
                # a route does not wait out a cool-down: the next route is tried at once
                raise _not_called(
                    CircuitOpenError(
                        f"skipped: {circuit.breaker.name}: circuit open",
                        circuit.breaker.last_error.error_type
                        if circuit.breaker.last_error
                        else "server",
                    )
                )
            try:
                call.waited += await circuit.breaker.before_call(
                    self.policy.max_total_wait_s - call.waited
                )
            except CircuitOpenError as exc:
                if circuit.breaker.down is not None:
                    circuit.stop(circuit.breaker.down)
                if call.record.attempts == 0:
                    circuit.not_called += 1
                    raise _not_called(exc) from exc
                raise Unfinished(exc) from exc

    async def _in_slot(self, call: Call) -> tuple[ProviderResponse | None, CallError | None, bool]:
        """One attempt in one of the endpoint's slots, once the limits allow it:
        (response, error, blocked: a circuit opened while it waited, nothing was sent).
        The model's window learns from how it ended."""
        endpoint, record, window = call.endpoint, call.record, call.window
        response: ProviderResponse | None = None
        error: CallError | None = None
        async with endpoint.slots:
            if record.attempts == 0 and self.stopping():
                raise NotStarted
            gated = not endpoint.proven
            if gated:
                await endpoint.gate.acquire()
                if endpoint.proven:  # it answered while this call waited: no need to go alone
                    endpoint.gate.release()
                    gated = False
            try:
                # after the gate: the first answer's headers may have set the limits
                await endpoint.limits.acquire(call.est_tokens + (call.arm.params.max_tokens or 0))
                # a circuit may have opened while this call waited for its slot
                if any(
                    c.breaker.state == "open" or c.breaker.down is not None for c in call.circuits
                ):
                    return None, None, True
                stopped = next((c for c in call.circuits if c.stopped is not None), None)
                if stopped is not None:
                    assert stopped.stopped is not None
                    if record.attempts == 0:
                        stopped.not_called += 1
                    raise _not_called(stopped.stopped)
                record.attempts += 1
                sent = time.perf_counter()
                if record.queue_ms is None:
                    record.queue_ms = (sent - call.job.enqueued_at) * 1000
                endpoint.in_flight += 1
                endpoint.peak_in_flight = max(endpoint.peak_in_flight, endpoint.in_flight)
                sent_at, in_company = window.sending()
                try:
                    response, error = await self._attempt(call, in_company)
                finally:
                    endpoint.in_flight -= 1
                    window.answered()
                record.latency_ms = (time.perf_counter() - sent) * 1000
                if error is not None:
                    window.failed(error, sent_at, in_company)
                else:
                    window.succeeded()
            finally:
                if gated:
                    endpoint.gate.release()
        return response, error, False

    async def _attempt(
        self, call: Call, in_company: bool
    ) -> tuple[ProviderResponse | None, CallError | None]:
        """One attempt: the response, or the error it ended with (never raised).
        `in_company`: other calls of the model were on the wire when it was sent."""
        endpoint = call.endpoint
        endpoint_breaker, model_breaker = endpoint.circuit.breaker, call.model.breaker
        timeout_s = call.arm.params.timeout_s
        with track_attempt(call.job.relay) as progress:
            try:
                async with asyncio.timeout(timeout_s):  # no extra task, unlike wait_for
                    response = await call.arm.provider.generate(call.request)
            except asyncio.CancelledError:
                endpoint_breaker.abandon()
                model_breaker.abandon()
                raise
            except TimeoutError as exc:
                began = progress.first_byte_at is not None
                error: CallError = TimeoutError_(
                    f"the answer from {endpoint.where} stalled: not finished in {timeout_s:g} s"
                    if began
                    else f"no answer in {timeout_s:g} s from {endpoint.where}"
                )
                error.__cause__ = exc
            except CallError as exc:
                error = exc
            except Exception as exc:  # a provider bug: recorded as 'other', never retried
                error = OtherCallError(f"{type(exc).__name__}: {exc}")
                error.__cause__ = exc
            else:
                endpoint.proven = True
                endpoint_breaker.record(None)
                model_breaker.record(None)
                if response.rate_limits is not None:
                    endpoint.limits.observe(response.rate_limits)
                return response, None
        if error.rate_limits is not None:
            endpoint.limits.observe(error.rate_limits)
        if error.status_code is not None and not isinstance(error, AuthError | ServerError):
            # it answered, and neither "who are you" nor "I am broken": the floodgates
            # open; a server error keeps the calls one at a time until the breaker decides
            endpoint.proven = True
        scope = failure_scope(error, progress.first_byte_at is not None)
        call.unreached = isinstance(error, ConnectionError_)
        if scope == "model" and in_company and overload_reason(error) is not None:
            scope = None  # too many at once, not a broken model: the window's to handle
        if scope == "endpoint":
            endpoint_breaker.record(error, call.record.call_id)
        else:  # the server answered: the endpoint is up
            endpoint_breaker.record(None)
            model_breaker.record(error if scope == "model" else None, call.record.call_id)
        return None, error


def answered(record: CallRecord, response: ProviderResponse, arm: ArmPlan) -> Decimal | None:
    """Put what the provider answered on `record`, with its cost on `arm`; the cost."""
    cost, source = arm.cost(response.usage, record.started_at)
    record.usage = response.usage
    record.cost_usd = float(cost) if cost is not None else None
    record.price_source = source
    record.response_text = response.text
    record.finish_reason = response.finish_reason
    record.request_id = response.request_id
    record.served_model = response.served_model
    record.usage_source = response.usage_source
    return cost


def failed(record: CallRecord, exc: Exception) -> None:
    """`record` ends with `exc` (typed as SPEC's error_type), keeping its request id."""
    record.fail(error_type_of(exc), _describe(exc))
    if isinstance(exc, CallError) and exc.request_id and record.request_id is None:
        record.request_id = exc.request_id


def _metrics_json(call: Call, response: ProviderResponse) -> str | None:
    """``provider_metrics_json``: the provider's own figures, the parameters its API
    ignored, the model's concurrency when it was lowered, the rate-limit headers."""
    arm = call.arm
    metrics = dict(response.metrics)
    ignored = [n for n in arm.provider.unsupported_params if getattr(arm.params, n) is not None]
    if ignored:
        metrics["ignored_params"] = ignored
    concurrency = call.window.metrics()
    if concurrency is not None:
        metrics["concurrency"] = concurrency
    if response.rate_limits is not None:
        metrics["rate_limits"] = response.rate_limits.as_json()
    return json.dumps(metrics) if metrics else None


class Unfinished(Exception):  # noqa: N818 - a call's state, not an error of ours
    """A call ended because its endpoint or model went down (or stayed open past its wait
    budget), not because it used up its own retries: recorded with the `cause`'s type,
    ``unfinished``, so it is missing data rather than an error, and resume makes it."""

    def __init__(self, cause: CallError) -> None:
        super().__init__(str(cause))
        self.cause = cause


def _not_called(reason: CallError) -> Unfinished:
    """A call not made because its endpoint or model stopped, typed as what stopped it
    (a dead server's calls are ``connection`` errors)."""
    error = CallError(f"not called: {reason}")
    error.error_type = reason.error_type
    return Unfinished(error)


def _fill_from_cache(record: CallRecord, hit: dict[str, Any]) -> None:
    """A cache hit: the stored response and counts, cost 0, no latency."""
    record.status = "ok"
    record.cache_hit = True
    record.cost_usd = 0.0
    record.price_source = "cache"
    record.response_text = hit["response_text"]
    record.finish_reason = hit["finish_reason"]
    record.usage = Usage(**{name: hit[name] for name in USAGE_FIELDS})
    record.provider_metrics_json = json.dumps({"cached_from": hit["source_call_id"]})
    record.usage_source = "cache"  # the counts of the call that answered it first


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if isinstance(exc, CallError) else f"{type(exc).__name__}: {text}"
