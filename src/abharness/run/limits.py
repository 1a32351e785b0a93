"""Per-endpoint rate limits: requests and tokens per minute, without bursts.

aiolimiter's leaky bucket lets a full bucket through at once after an idle spell. To
keep to the configured rate at every moment, the request bucket holds one request
(``AsyncLimiter(1, 60 / rpm)``: requests are spaced by 60/rpm seconds) and the token
bucket holds one second's worth (``AsyncLimiter(tpm / 60, 1)``); a call needing more
tokens than that acquires them in one-second slices. A call acquires its estimated
input tokens plus ``max_tokens``, the most it can use.
"""

from __future__ import annotations

from aiolimiter import AsyncLimiter


class EndpointLimits:
    def __init__(self, rpm: int | None = None, tpm: int | None = None) -> None:
        self.rpm = rpm
        self.tpm = tpm
        self._requests = AsyncLimiter(1, 60 / rpm) if rpm else None
        self._token_slice = max(tpm / 60, 1.0) if tpm else 0.0
        self._tokens = AsyncLimiter(self._token_slice, 1) if tpm else None

    async def acquire(self, tokens: int) -> None:
        if self._requests is not None:
            await self._requests.acquire()
        if self._tokens is not None:
            remaining = float(tokens)
            while remaining > 0:
                piece = min(remaining, self._token_slice)
                await self._tokens.acquire(piece)
                remaining -= piece
