"""One retry policy for every provider, and circuit breakers per endpoint and per model.

Retried: rate limits (429), timeouts (408 and our own), connection errors, server
errors (409, 5xx) — the `CallError` classes marked ``retryable``. Never retried: auth,
bad request, context length, content filter, budget.

The wait before attempt n+1 is full jitter, ``uniform(0, min(max_backoff_s,
base_s * 2**(n-1)))``, but never less than the provider's ``Retry-After`` /
``retry-after-ms``. A call gives up after ``max_attempts`` or when the next wait would
take its total waiting past ``max_total_wait_s``.

Which circuit an attempt's failure counts against (`failure_scope`): the *endpoint's*
for what says the server is unreachable (a refused or reset connection, no answer
before the first byte), the *model's* for what belongs to one model (5xx, a cut stream,
a 404 for the model, a stream that stalls after it began). Anything else (a 429, a 400,
a success) shows both are up. So one broken model behind a gateway stops its own arms,
never a healthy model's on the same base URL.

A `CircuitBreaker` counts the failures it is given from ``threshold`` different calls in
a row (one call that always fails, a poisoned case, never opens it by itself); calls
then wait (no attempts spent) until ``cooldown_s`` has passed, and one probe goes through
(half-open); its success closes the circuit. Its failure marks the circuit *down*:
every call still waiting, and every later one, fails at once with `EndpointDownError`,
typed as the failures were (``connection``, ``timeout``, ``server``), instead of waiting
out its retry budget (ten calls to a server answering 500 used to take eight minutes;
a server that accepts connections and never answers, hours). Resume makes those calls.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass
from typing import Literal

from ..errors import CallError, ConnectionError_, ServerError, TimeoutError_

log = logging.getLogger(__name__)

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


Scope = Literal["endpoint", "model"]


def failure_scope(error: CallError, first_byte: bool = False) -> Scope | None:
    """The circuit `error` counts against; None when it shows the endpoint and the model
    are up. `first_byte`: the server's answer had begun when the attempt ended."""
    if isinstance(error, ConnectionError_):
        return "endpoint"
    if isinstance(error, TimeoutError_) and error.status_code is None:
        return "model" if first_byte else "endpoint"
    if isinstance(error, ServerError) or error.status_code == 404:
        return "model"
    return None


class CircuitOpenError(ServerError):
    """Calls could not be made because a circuit stayed open. Typed as the failures that
    opened it (a dead server's calls are ``connection`` or ``timeout`` errors, not ``server``)."""

    def __init__(self, message: str, error_type: str = "server") -> None:
        super().__init__(message)
        self.error_type = error_type


class EndpointDownError(CircuitOpenError):
    """The circuit opened and the probe after the cool-down failed too."""


class CircuitBreaker:
    """One circuit: an endpoint's, or one model's on it. `name` says which in messages."""

    def __init__(
        self,
        threshold: int = CIRCUIT_THRESHOLD,
        cooldown_s: float = CIRCUIT_COOLDOWN_S,
        name: str = "endpoint",
    ) -> None:
        self.threshold = threshold
        self.cooldown_s = cooldown_s
        self.name = name
        self.state = "closed"
        self._streak: set[object] = set()  # the calls whose failures form the streak
        self.last_error: CallError | None = None
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
                    log.info("%s: cool-down over, probing", self.name)
                    return waited
                if waited + remaining > max_wait_s:
                    raise CircuitOpenError(
                        f"{self.name}: circuit open after {self.threshold} failures in a row "
                        f"({self.last_error}); not retried within the {max_wait_s:.0f} s wait budget",
                        self._error_type(),
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

    def _error_type(self) -> str:
        return self.last_error.error_type if self.last_error is not None else "server"

    def record(self, error: CallError | None, source: object | None = None) -> None:
        """Tell the breaker how an attempt ended: None, the circuit's endpoint or model is
        up (the streak ends, a half-open circuit closes); an error, one more failure.
        `source` names the call, so its retries count once in a streak; without one,
        every error counts. Which errors belong here is `failure_scope`'s to say."""
        if error is None:
            self._streak.clear()
            if self.state != "closed":
                log.info("%s: answered again, circuit closed", self.name)
                self.state = "closed"
                self._probe_done.set()
            return
        self._streak.add(source if source is not None else object())
        self.last_error = error
        if self.state == "half_open":
            self.down = EndpointDownError(
                f"{self.name} down: {self.threshold} calls in a row failed ({error}) and the "
                f"probe after a {self.cooldown_s:g} s cool-down failed too",
                error.error_type,
            )
            log.warning("%s", self.down)
        if self.state == "half_open" or (
            self.state == "closed" and self.failures >= self.threshold
        ):
            if self.state == "closed":
                log.warning(
                    "%s: %d calls in a row failed (%s): circuit open for %g s",
                    self.name,
                    self.failures,
                    error,
                    self.cooldown_s,
                )
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
