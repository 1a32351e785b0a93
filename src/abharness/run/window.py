"""Adaptive concurrency: how many of one model's calls may be on the wire at once.

Servers that run out of room do not say 429: llama-cpp-python's server cuts the stream
it is serving when another request arrives (``interrupt_requests``), others answer 5xx
or go silent. A fixed concurrency of 16 against such a server failed 35% of its calls.
So each model on an endpoint has a window, managed as TCP manages its congestion
window (AIMD):

- it starts at the endpoint's concurrency (the spec's cap) and never goes above it;
- an attempt that failed *in company* (other calls of the model were on the wire) with
  a cut stream, a 5xx, a timeout or a reset connection halves it, at most once per
  round: only attempts sent after the last halving can halve it again;
- each success grows it by `GROWTH` / window, so a window of w gains one call after
  about 4·w successes; the level at which it last failed is approached ten times more
  slowly, so it settles just below what the server can take instead of bouncing on it.

A failure with no other call on the wire says nothing about concurrency: it is left to
the retries and the circuit breaker. The run summary and each call's
``provider_metrics_json.concurrency`` say what was in force and why.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque

from ..errors import CallError, ConnectionError_, ServerError, TimeoutError_
from ..providers._http import StreamCut

log = logging.getLogger(__name__)

GROWTH = 0.25  # per success, divided by the window
NEAR_FAILURE_SLOWDOWN = 10  # approaching the level that failed


def overload_reason(error: CallError) -> str | None:
    """Why `error` may mean "too many at once", or None if it cannot."""
    if isinstance(error, StreamCut):
        return "cut stream"
    if isinstance(error, TimeoutError_) and error.status_code is None:
        return "timeout"
    if isinstance(error, ServerError) and (error.status_code is None or error.status_code >= 500):
        return f"HTTP {error.status_code}" if error.status_code else "server error"
    if isinstance(error, ConnectionError_) and "reset" in str(error):
        return "reset connection"
    return None


class ConcurrencyWindow:
    def __init__(self, cap: int, name: str) -> None:
        self.cap = cap
        self.name = name
        self.limit = float(cap)
        self.in_use = 0  # holding room in the window (on the wire, or waiting for a slot)
        self.on_wire = 0  # sent and not yet answered
        self.failed_at: int | None = None  # the window's size when it last failed
        self.lowered_by: Counter[str] = Counter()
        self._last_cut = 0.0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def in_force(self) -> int:
        return max(1, int(self.limit))

    async def acquire(self) -> None:
        """Wait for room in the window."""
        while self.in_use >= self.in_force:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
                raise
        self.in_use += 1

    def sending(self) -> tuple[float, bool]:
        """An attempt goes on the wire now: (when, whether others of the model are on
        the wire with it). `answered` must follow."""
        self.on_wire += 1
        return time.monotonic(), self.on_wire > 1

    def answered(self) -> None:
        self.on_wire -= 1

    def release(self) -> None:
        self.in_use -= 1
        self._wake()

    def _wake(self) -> None:
        room = self.in_force - self.in_use
        while room > 0 and self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                room -= 1

    def succeeded(self) -> None:
        if self.limit >= self.cap:
            return
        step = GROWTH / self.limit
        if self.failed_at is not None and self.limit + 1 >= self.failed_at:
            step /= NEAR_FAILURE_SLOWDOWN
        before = self.in_force
        self.limit = min(float(self.cap), self.limit + step)
        if self.in_force > before:
            log.info("%s: concurrency back up to %d", self.name, self.in_force)
            self._wake()

    def failed(self, error: CallError, sent_at: float, in_company: bool) -> None:
        """An attempt sent at `sent_at` failed with `error`: halve the window if that
        says the server had too many of this model's calls at once."""
        reason = overload_reason(error)
        if reason is None or not in_company or sent_at < self._last_cut or self.limit <= 1:
            return
        self.failed_at = self.in_force
        self.limit = max(1.0, self.limit / 2)
        self._last_cut = time.monotonic()
        self.lowered_by[reason] += 1
        log.warning(
            "%s: %s with %d on the wire: concurrency lowered to %d",
            self.name,
            reason,
            self.failed_at,
            self.in_force,
        )

    def metrics(self) -> dict[str, object] | None:
        """For a call's provider_metrics_json: what was in force, when it was lowered."""
        if not self.lowered_by:
            return None
        return {"in_force": self.in_force, "cap": self.cap, "lowered_by": dict(self.lowered_by)}

    def describe(self) -> str | None:
        """One line for the run summary, when the window was ever lowered."""
        if not self.lowered_by:
            return None
        why = ", ".join(f"{n} × {reason}" for reason, n in self.lowered_by.most_common())
        return (
            f"{self.name}: concurrency {self.cap} → {self.in_force} in force at the end "
            f"(lowered {sum(self.lowered_by.values())} times after calls failed in company: {why})"
        )
