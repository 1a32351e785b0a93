"""Per-endpoint rate limits: requests and tokens per minute, without bursts, learned
from the server as it answers.

aiolimiter's leaky bucket lets a full bucket through at once after an idle spell. To
keep to the rate at every moment, the request bucket holds one request
(``AsyncLimiter(1, 60 / rpm)``: requests are spaced by 60/rpm seconds) and the token
bucket holds one second's worth (``AsyncLimiter(tpm / 60, 1)``); a call needing more
tokens than that acquires them in one-second slices. A call acquires its estimated
input tokens plus ``max_tokens``, the most it can use.

The limits start from the spec's ``rpm``/``tpm``, else the provider's published tier
on its own URL, else none (a self-hosted server or a gateway: concurrency only). Each
response's rate-limit headers (OpenAI ``x-ratelimit-*``, Anthropic
``anthropic-ratelimit-*``) then set them to what the server says — never above the
spec's own figures — and a header saying nothing is left until a reset pauses the
endpoint until then.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from aiolimiter import AsyncLimiter

from ..providers._http import RateLimits

log = logging.getLogger(__name__)


class EndpointLimits:
    def __init__(
        self,
        rpm: int | None = None,
        tpm: int | None = None,
        *,
        ceiling: tuple[int | None, int | None] = (None, None),
        source: str = "spec",
    ) -> None:
        self.ceiling = ceiling
        self.source = source if (rpm or tpm) else "none"
        self.seen: dict[str, Any] = {}  # the last rate-limit headers, as numbers
        self._paused_until = 0.0
        self.rpm: int | None = None
        self.tpm: int | None = None
        self._requests: AsyncLimiter | None = None
        self._tokens: AsyncLimiter | None = None
        self._token_slice = 0.0
        self._set(rpm, tpm)

    def _set(self, rpm: int | None, tpm: int | None) -> None:
        if rpm != self.rpm:
            self.rpm = rpm
            self._requests = AsyncLimiter(1, 60 / rpm) if rpm else None
        if tpm != self.tpm:
            self.tpm = tpm
            self._token_slice = max(tpm / 60, 1.0) if tpm else 0.0
            self._tokens = AsyncLimiter(self._token_slice, 1) if tpm else None

    async def acquire(self, tokens: int) -> None:
        wait = self._paused_until - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        if self._requests is not None:
            await self._requests.acquire()
        if self._tokens is not None:
            remaining = float(tokens)
            while remaining > 0:
                piece = min(remaining, self._token_slice)
                await self._tokens.acquire(piece)
                remaining -= piece

    def observe(self, limits: RateLimits) -> None:
        """Adopt what a response's headers say of the endpoint's limits."""
        self.seen = limits.as_json()
        rpm = _capped(limits.requests_limit, self.ceiling[0]) or self.rpm
        tpm = _capped(limits.tokens_limit, self.ceiling[1]) or self.tpm
        if (rpm, tpm) != (self.rpm, self.tpm):
            self._set(rpm, tpm)
            self.source = "headers"
            log.info("limits from the server's headers: %s", self.describe())
        for left, reset in (
            (limits.requests_remaining, limits.requests_reset_s),
            (limits.tokens_remaining, limits.tokens_reset_s),
        ):
            if left is not None and left <= 0 and reset:
                self._paused_until = max(self._paused_until, time.monotonic() + reset)
                log.info("the server says nothing is left: paused for %.1f s", reset)

    def describe(self) -> str:
        rpm = f"{self.rpm:,} requests/min" if self.rpm else "no request limit"
        tpm = f"{self.tpm:,} tokens/min" if self.tpm else "no token limit"
        source = {
            "spec": "from the spec",
            "tier": "a new account's published tier",
            "headers": "from the server's headers",
            "none": "concurrency only",
        }[self.source]
        return f"{rpm}, {tpm} ({source})"


def _capped(value: int | None, ceiling: int | None) -> int | None:
    if not value:
        return None
    return min(value, ceiling) if ceiling else value
