"""One retry policy for every provider, and a circuit breaker per endpoint.

Retried: rate limits (429), timeouts (408 and our own), connection errors, server
errors (409, 5xx) — the `CallError` classes marked ``retryable``. Never retried: auth,
bad request, context length, content filter, budget.

The wait before attempt n+1 is full jitter, ``uniform(0, min(max_backoff_s,
base_s * 2**(n-1)))``, but never less than the provider's ``Retry-After`` /
``retry-after-ms``. A call gives up after ``max_attempts`` or when the next wait would
take its total waiting past ``max_total_wait_s``.

An endpoint failing with server errors from ``threshold`` different calls in a row opens
its circuit (one call that always fails, a poisoned case, never does by itself):
calls wait (no attempts spent) until ``cooldown_s`` has passed, then one probe goes
through (half-open); its success closes the circuit. Its failure marks the endpoint
*down*: every call still waiting, and every later one, fails at once with
`EndpointDownError` instead of waiting out its retry budget (ten calls to a server
answering 500 used to take eight minutes). Resume makes those calls again.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass

from ..errors import CallError, ConnectionError_, ServerError

MAX_ATTEMPTS = 5
BASE_S = 0.5
MAX_BACKOFF_S = 30.0
MAX_TOTAL_WAIT_S = 120.0
CIRCUIT_THRESHOLD = 5
CIRCUIT_COOLDOWN_S = 30.0


@dataclass
class RetryPolicy:
    max_attempts: int = MAX_ATTEMPTS
    base_s: float = BASE_S
    max_backoff_s: float = MAX_BACKOFF_S
    max_total_wait_s: float = MAX_TOTAL_WAIT_S
    circuit_threshold: int = CIRCUIT_THRESHOLD
    circuit_cooldown_s: float = CIRCUIT_COOLDOWN_S

    def should_retry(self, error: CallError, attempts: int) -> bool:
        return error.retryable and attempts < self.max_attempts

    def delay_s(self, attempts: int, retry_after_s: float | None) -> float:
        """Seconds to wait after `attempts` failed attempts: full jitter, floored at Retry-After."""
        jitter = random.uniform(0, min(self.max_backoff_s, self.base_s * 2 ** (attempts - 1)))
        return max(jitter, retry_after_s or 0.0)


class CircuitOpenError(ServerError):
    """Calls could not be made because the endpoint's circuit stayed open."""


class EndpointDownError(CircuitOpenError):
    """The circuit opened and the probe after the cool-down failed too."""


class CircuitBreaker:
    def __init__(
        self, threshold: int = CIRCUIT_THRESHOLD, cooldown_s: float = CIRCUIT_COOLDOWN_S
    ) -> None:
        self.threshold = threshold
        self.cooldown_s = cooldown_s
        self.state = "closed"
        self._streak: set[object] = set()  # the calls whose server errors form the streak
        self.opened_at = 0.0
        self.times_opened = 0
        self.down: EndpointDownError | None = None
        self._probe_done = asyncio.Event()

    async def before_call(self, max_wait_s: float) -> float:
        """Wait until a call may go out; return the seconds waited.

        Raises `CircuitOpenError` if that would take longer than `max_wait_s`."""
        waited = 0.0
        while True:
            if self.down is not None:
                raise self.down
            if self.state == "closed":
                return waited
            if self.state == "open":
                remaining = self.opened_at + self.cooldown_s - time.monotonic()
                if remaining <= 0:
                    self.state = "half_open"  # this caller is the probe
                    self._probe_done = asyncio.Event()
                    return waited
                if waited + remaining > max_wait_s:
                    raise CircuitOpenError(
                        f"circuit open after {self.threshold} server errors in a row; "
                        f"not retried within the {max_wait_s:.0f} s wait budget"
                    )
                await asyncio.sleep(remaining)
                waited += remaining
            else:  # half open: wait for the probe's outcome
                started = time.monotonic()
                await self._probe_done.wait()
                waited += time.monotonic() - started

    @property
    def failures(self) -> int:
        return len(self._streak)

    def record(self, error: CallError | None, source: object | None = None) -> None:
        """Tell the breaker how an attempt ended (None: success). Anything but a server or
        connection error (a 429, a 400, a timeout, a success) shows the endpoint is up: the
        streak ends, and a half-open circuit closes. `source` names the call, so its
        retries count once in a streak; without one, every error counts."""
        if not isinstance(error, ServerError | ConnectionError_):
            self._streak.clear()
            if self.state != "closed":
                self.state = "closed"
                self._probe_done.set()
            return
        self._streak.add(source if source is not None else object())
        if self.state == "half_open":
            self.down = EndpointDownError(
                f"endpoint down: {self.threshold} server errors in a row opened its circuit and "
                f"the probe after a {self.cooldown_s:g} s cool-down failed too ({error})"
            )
        if self.state == "half_open" or (
            self.state == "closed" and self.failures >= self.threshold
        ):
            self.state = "open"
            self.opened_at = time.monotonic()
            self.times_opened += 1
            self._probe_done.set()

    def abandon(self) -> None:
        """The call in flight was cancelled: a half-open probe lets the next caller probe."""
        if self.state == "half_open":
            self.state = "open"
            self.opened_at = time.monotonic() - self.cooldown_s
            self._probe_done.set()
