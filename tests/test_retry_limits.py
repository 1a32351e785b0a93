"""Retry delays, the circuit breaker and the rate limiter, in isolation.

Timing assertions here are lower bounds only (a busy machine can only make them
slower), never speed targets."""

from __future__ import annotations

import asyncio
import time

import pytest

from abharness import errors
from abharness.providers._http import StreamCut
from abharness.run.limits import EndpointLimits
from abharness.run.retry import (
    CircuitBreaker,
    CircuitOpenError,
    EndpointDownError,
    RetryPolicy,
    failure_scope,
)

DELAY = RetryPolicy.delay_s  # the real one: tests zero it through an autouse fixture


def test_delay_is_full_jitter_capped_and_never_below_retry_after() -> None:
    policy = RetryPolicy(base_s=0.5, max_backoff_s=4)
    for attempts in range(1, 8):
        cap = min(4, 0.5 * 2 ** (attempts - 1))
        delays = [DELAY(policy, attempts, None) for _ in range(200)]
        assert all(0 <= d <= cap for d in delays) and max(delays) > cap / 2
        assert all(DELAY(policy, attempts, 3.0) >= 3.0 for _ in range(50))


@pytest.mark.parametrize(
    ("error", "retried"),
    [
        (errors.RateLimitError("x"), True),
        (errors.ServerError("x"), True),
        (errors.TimeoutError_("x"), True),
        (errors.ConnectionError_("x"), True),
        (errors.AuthError("x"), False),
        (errors.BadRequestError("x"), False),
        (errors.ContextLengthError("x"), False),
        (errors.ContentFilterError("x"), False),
        (errors.BudgetError("x"), False),
    ],
)
def test_what_is_retried(error: errors.CallError, retried: bool) -> None:
    policy = RetryPolicy(max_attempts=3)
    assert policy.should_retry(error, 1) is retried
    assert policy.should_retry(error, 3) is False


async def test_circuit_opens_probes_and_closes() -> None:
    breaker = CircuitBreaker(threshold=3, cooldown_s=0.2)
    for _ in range(3):
        assert await breaker.before_call(10) == 0
        breaker.record(errors.ServerError("503"))
    assert breaker.state == "open"
    started = time.monotonic()
    waited = await breaker.before_call(10)  # waits out the cool-down, then is the probe
    assert waited >= 0.19 and time.monotonic() - started >= 0.19 and breaker.state == "half_open"
    others = [asyncio.create_task(breaker.before_call(10)) for _ in range(3)]
    await asyncio.sleep(0.05)
    assert not any(t.done() for t in others)  # they wait for the probe
    breaker.record(None)  # the probe succeeded, so the others go too
    await asyncio.wait_for(asyncio.gather(*others), 1)
    assert breaker.state == "closed" and breaker.down is None


async def test_a_failed_probe_marks_the_endpoint_down_and_fails_waiters_at_once() -> None:
    breaker = CircuitBreaker(threshold=2, cooldown_s=0.05)
    for _ in range(2):
        breaker.record(errors.ServerError("HTTP 500: internal error"))
    await breaker.before_call(10)  # the probe
    others = [asyncio.create_task(breaker.before_call(60)) for _ in range(3)]
    await asyncio.sleep(0.01)
    breaker.record(errors.ServerError("HTTP 500: internal error"))  # the probe failed too
    done = await asyncio.wait_for(asyncio.gather(*others, return_exceptions=True), 1)
    assert all(isinstance(d, EndpointDownError) for d in done)  # no one waits out 60 s
    assert "endpoint down" in str(done[0]) and "HTTP 500" in str(done[0])
    with pytest.raises(EndpointDownError):
        await breaker.before_call(60)  # and later calls fail at once too


async def test_a_429_during_half_open_closes_the_circuit() -> None:
    breaker = CircuitBreaker(threshold=1, cooldown_s=0.01)
    breaker.record(errors.ServerError("500"))
    await asyncio.sleep(0.02)
    await breaker.before_call(10)
    waiter = asyncio.create_task(breaker.before_call(10))
    answered = errors.RateLimitError("429", status_code=429)
    assert failure_scope(answered) is None  # the endpoint answered: not down
    breaker.record(None)
    await asyncio.wait_for(waiter, 1)
    assert breaker.state == "closed"


@pytest.mark.parametrize(
    ("error", "first_byte", "scope"),
    [
        (errors.ConnectionError_("connection refused: http://x/v1"), False, "endpoint"),
        (errors.ConnectionError_("connection reset by the server"), True, "endpoint"),
        (errors.TimeoutError_("no answer in 10 s from http://x/v1"), False, "endpoint"),
        (errors.TimeoutError_("stalled"), True, "model"),
        (errors.TimeoutError_("HTTP 408", status_code=408), False, None),
        (errors.ServerError("HTTP 500", status_code=500), False, "model"),
        (StreamCut("stream ended before the final chunk"), True, "model"),
        (errors.BadRequestError("HTTP 404: model not found", status_code=404), False, "model"),
        (errors.BadRequestError("HTTP 400", status_code=400), False, None),
        (errors.RateLimitError("HTTP 429", status_code=429), False, None),
        (errors.AuthError("HTTP 401", status_code=401), False, None),
        (errors.ContextLengthError("too long", status_code=400), False, None),
    ],
)
def test_which_circuit_a_failure_counts_against(error, first_byte, scope) -> None:
    assert failure_scope(error, first_byte) == scope


async def test_a_down_circuit_is_typed_as_its_failures() -> None:
    """Calls not made because a dead server's circuit is down are connection (or
    timeout) errors, not 'server' errors."""
    breaker = CircuitBreaker(threshold=2, cooldown_s=0.01, name="endpoint http://127.0.0.1:9/v1")
    refused = errors.ConnectionError_("connection refused: http://127.0.0.1:9/v1")
    breaker.record(refused, "a")
    breaker.record(refused, "b")
    await asyncio.sleep(0.02)
    await breaker.before_call(10)  # the probe
    breaker.record(refused, "c")
    with pytest.raises(EndpointDownError) as down:
        await breaker.before_call(10)
    assert down.value.error_type == "connection"
    assert errors.error_type_of(down.value) == "connection"
    assert str(down.value).startswith("endpoint http://127.0.0.1:9/v1 down: 2 calls in a row")


async def test_circuit_gives_up_beyond_the_wait_budget() -> None:
    breaker = CircuitBreaker(threshold=1, cooldown_s=5)
    breaker.record(errors.ServerError("500"))
    with pytest.raises(CircuitOpenError):
        await breaker.before_call(max_wait_s=1)


@pytest.mark.slow
async def test_rpm_spaces_requests_and_does_not_burst_after_idle() -> None:
    limits = EndpointLimits(rpm=600)  # one request per 0.1 s
    started = time.monotonic()
    for _ in range(5):
        await limits.acquire(0)
    assert time.monotonic() - started >= 0.39
    await asyncio.sleep(0.5)  # idle: a plain AsyncLimiter(600, 60) would now let 600 through
    started = time.monotonic()
    for _ in range(4):
        await limits.acquire(0)
    assert time.monotonic() - started >= 0.29


@pytest.mark.slow
async def test_tpm_meters_tokens_including_calls_bigger_than_a_second() -> None:
    limits = EndpointLimits(tpm=60_000)  # 1,000 tokens per second
    started = time.monotonic()
    await limits.acquire(2_500)  # larger than the one-second bucket: acquired in slices
    await limits.acquire(500)
    assert time.monotonic() - started >= 1.9


def test_one_call_failing_again_and_again_does_not_open_the_circuit() -> None:
    breaker = CircuitBreaker(threshold=3, cooldown_s=60)
    for _ in range(10):  # a poisoned case: its own retries are one failure in the streak
        breaker.record(errors.ServerError("HTTP 503"), "call-1")
    assert breaker.state == "closed"
    breaker.record(errors.ServerError("HTTP 503"), "call-2")
    breaker.record(errors.ServerError("HTTP 503"), "call-3")  # three different calls: down?
    assert breaker.state == "open"
