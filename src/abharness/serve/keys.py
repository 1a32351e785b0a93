"""Client keys and their rate limits (SPEC §16: ``keys_env``, ``rate_limit``).

The keys come from the environment variable the spec names (comma-separated); only
their SHA-256 digests are kept, compared in constant time, and neither a key nor its
digest is ever stored, logged or put in a metric label. Each key has a token bucket of
``rpm`` requests a minute (a burst of at most ``rpm``); a request that finds it empty
is told how many seconds until the next token (``Retry-After``).
"""

from __future__ import annotations

import hashlib
import hmac
import math
import os
import time
from dataclasses import dataclass

from ..errors import InvalidInput


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class ClientKeys:
    def __init__(self, keys: list[str]) -> None:
        self._digests = [_digest(k) for k in keys]

    @classmethod
    def from_env(cls, name: str | None) -> ClientKeys | None:
        """The keys in the variable `name`; None when the spec names none (no auth)."""
        if name is None:
            return None
        keys = [k.strip() for k in (os.environ.get(name) or "").split(",") if k.strip()]
        if not keys:
            raise InvalidInput(
                f"serve.keys_env: the environment variable {name} holds no keys; set it to "
                "the comma-separated bearer keys clients will send"
            )
        return cls(keys)

    def check(self, authorization: str | None) -> bytes | None:
        """The digest of the request's bearer key if it is one of ours, else None."""
        if not authorization:
            return None
        scheme, _, key = authorization.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            return None
        digest = _digest(key.strip())
        found = None
        for known in self._digests:  # every one compared: no early exit to time
            if hmac.compare_digest(known, digest):
                found = known
        return found


@dataclass
class _Bucket:
    tokens: float
    at: float


class RateLimiter:
    """Per key, `rpm` requests a minute as a token bucket."""

    def __init__(self, rpm: int) -> None:
        self.rpm = rpm
        self.rate = rpm / 60.0
        self._buckets: dict[bytes, _Bucket] = {}

    def admit(self, key: bytes, now: float | None = None) -> float:
        """0 if the request may go now (a token is taken), else the seconds to wait."""
        now = time.monotonic() if now is None else now
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(float(self.rpm), now)
        bucket.tokens = min(float(self.rpm), bucket.tokens + (now - bucket.at) * self.rate)
        bucket.at = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / self.rate


def retry_after_header(wait_s: float) -> str:
    """Whole seconds, rounded up (the header has no fractions); at least 1."""
    return str(max(1, math.ceil(wait_s)))
