"""What every HTTP provider shares at its boundary: keys, Retry-After, status → error.

The official SDKs are configured with ``max_retries=0`` so the runner sees (and counts)
every attempt; each provider maps its SDK's exceptions through `error_from_status`
once, with ``raise ... from exc``.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any

from ..errors import (
    AuthError,
    BadRequestError,
    CallError,
    ConnectionError_,
    ContentFilterError,
    ContextLengthError,
    OtherCallError,
    RateLimitError,
    ServerError,
    TimeoutError_,
)

# Phrases providers use for an over-long prompt (OpenAI code, Anthropic, vLLM, Ollama).
_CONTEXT_MARKERS = (
    "context_length_exceeded",
    "maximum context length",
    "prompt is too long",
    "context window",
    "too many tokens",
)
_FILTER_MARKERS = ("content_filter", "content management policy", "content_policy")


def require_key(env_var: str | None, endpoint: str) -> str | None:
    """The API key from `env_var`, or an `AuthError` that names the variable to set."""
    if env_var is None:
        return None
    key = os.environ.get(env_var)
    if not key:
        raise AuthError(f"{env_var} is not set: export it to run the arms on {endpoint!r}")
    return key


def parse_retry_after(headers: Mapping[str, str] | None, now: float | None = None) -> float | None:
    """Seconds to wait from ``retry-after-ms``, or ``retry-after`` in seconds or as an HTTP date."""
    if not headers:
        return None
    lowered = {k.lower(): v for k, v in headers.items()}
    ms = lowered.get("retry-after-ms")
    if ms is not None:
        try:
            return max(float(ms) / 1000, 0.0)
        except ValueError:
            pass
    value = lowered.get("retry-after")
    if value is None:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - (time.time() if now is None else now), 0.0)


@dataclass(frozen=True)
class RateLimits:
    """What a server said of its rate limits on one response: per-minute limits,
    what is left, and seconds until each resets. Any field may be missing."""

    requests_limit: int | None = None
    requests_remaining: int | None = None
    requests_reset_s: float | None = None
    tokens_limit: int | None = None
    tokens_remaining: int | None = None
    tokens_reset_s: float | None = None

    def as_json(self) -> dict[str, float]:
        return {f: v for f in _FIELDS if (v := getattr(self, f)) is not None}


_FIELDS = tuple(f.name for f in fields(RateLimits))
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def _seconds(value: str | None, now: float | None = None) -> float | None:
    """OpenAI's "6m0s", "20ms", "1s"; Anthropic's RFC 3339 instant; or plain seconds."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    parts = _DURATION.findall(value)
    if parts and "".join(n + u for n, u in parts) == value:
        return sum(float(n) * _UNIT_S[u] for n, u in parts)
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return max(when.timestamp() - (time.time() if now is None else now), 0.0)


def _int(value: str | None) -> int | None:
    try:
        return int(float(value)) if value is not None else None
    except ValueError:
        return None


def parse_rate_limits(headers: Mapping[str, str] | None) -> RateLimits | None:
    """OpenAI's ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}`` or Anthropic's
    ``anthropic-ratelimit-{requests,tokens}-{limit,remaining,reset}``; None if neither."""
    if not headers:
        return None
    h = {k.lower(): v for k, v in headers.items() if "ratelimit" in k.lower()}
    if not h:
        return None

    def pick(*names: str) -> str | None:
        return next((h[n] for n in names if n in h), None)

    out = RateLimits(
        _int(pick("x-ratelimit-limit-requests", "anthropic-ratelimit-requests-limit")),
        _int(pick("x-ratelimit-remaining-requests", "anthropic-ratelimit-requests-remaining")),
        _seconds(pick("x-ratelimit-reset-requests", "anthropic-ratelimit-requests-reset")),
        _int(
            pick(
                "x-ratelimit-limit-tokens",
                "anthropic-ratelimit-tokens-limit",
                "anthropic-ratelimit-input-tokens-limit",
            )
        ),
        _int(
            pick(
                "x-ratelimit-remaining-tokens",
                "anthropic-ratelimit-tokens-remaining",
                "anthropic-ratelimit-input-tokens-remaining",
            )
        ),
        _seconds(
            pick(
                "x-ratelimit-reset-tokens",
                "anthropic-ratelimit-tokens-reset",
                "anthropic-ratelimit-input-tokens-reset",
            )
        ),
    )
    return out if out.as_json() else None


def error_from_status(
    status: int | None,
    message: str,
    *,
    headers: Mapping[str, str] | None = None,
    request_id: str | None = None,
    code: str | None = None,
) -> CallError:
    """The `CallError` for an HTTP error response (one class per status, as the SDKs do)."""
    text = f"{message} {code or ''}".lower()
    cls: type[CallError]
    if status == 429:
        cls = RateLimitError
    elif status in (401, 403):
        cls = AuthError
    elif status == 408:
        cls = TimeoutError_
    elif status == 409 or (status is not None and status >= 500):
        cls = ServerError
    elif any(m in text for m in _CONTEXT_MARKERS):
        cls = ContextLengthError
    elif any(m in text for m in _FILTER_MARKERS):
        cls = ContentFilterError
    elif status is not None and 400 <= status < 500:
        cls = BadRequestError
    else:
        cls = OtherCallError
    error = cls(
        f"HTTP {status}: {message}" if status else message,
        status_code=status,
        retry_after_s=parse_retry_after(headers),
        request_id=request_id,
    )
    error.rate_limits = parse_rate_limits(headers)
    return error


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and cur not in seen:
        seen.append(cur)
        cur = cur.__cause__ or cur.__context__
    return seen


def transport_error(exc: BaseException, url: str | None) -> CallError:
    """What really happened on the wire, and where.

    The transports hide it: the aiohttp transport reports a refused or reset
    connection as ``ConnectTimeout``; the cause chain still holds the OS error."""
    where = f": {url}" if url else ""
    for cause in _chain(exc):
        name = type(cause).__name__
        if isinstance(cause, ConnectionRefusedError) or "refused" in str(cause).lower():
            return ConnectionError_(f"connection refused{where}")
        if isinstance(cause, ConnectionResetError) or name in (
            "ServerDisconnectedError",
            "RemoteProtocolError",
            "ClientOSError",
        ):
            return ConnectionError_(f"connection reset by the server{where} ({name}: {cause})")
        if name in ("ClientConnectorDNSError", "gaierror"):
            return ConnectionError_(f"host not found{where} ({cause})")
    for cause in _chain(exc):
        if isinstance(cause, TimeoutError) or "Timeout" in type(cause).__name__:
            return TimeoutError_(f"timed out{where}")
    return ConnectionError_(f"connection error{where}: {type(exc).__name__}: {exc}")


def request_url(exc: BaseException) -> str | None:
    """The URL of the request an SDK exception is about, without its query."""
    request = getattr(exc, "request", None)
    if request is None:
        response = getattr(exc, "response", None)
        request = getattr(response, "request", None)
    url = getattr(request, "url", None)
    return str(url).split("?")[0] if url is not None else None


def error_from_body(
    status: int,
    body: Any,
    headers: Mapping[str, str],
    url: str | None,
    request_id: str | None = None,
    fallback: str | None = None,
) -> CallError:
    """The `CallError` of an error response of the OpenAI or Anthropic API: the message
    and code of its ``{"error": {...}}`` body (`fallback` or the body itself if it has
    none); a 404 says where nothing was found."""
    err = body.get("error", body) if isinstance(body, dict) else {}
    code = err.get("code") or err.get("type") if isinstance(err, dict) else None
    message = (err.get("message") if isinstance(err, dict) else None) or fallback
    if not message:
        message = body[:500] if isinstance(body, str) and body else f"HTTP {status}"
    if status == 404 and url:
        message = (
            f"{message} — nothing at {url}: check base_url (OpenAI-compatible servers "
            "usually serve under /v1) and the model name"
        )
    return error_from_status(
        status,
        message,
        headers=headers,
        request_id=request_id or headers.get("x-request-id"),
        code=code,
    )


def map_stainless_error(exc: Exception, sdk: object) -> CallError:
    """Map an exception of the openai or anthropic SDK (same generated structure)."""
    if isinstance(exc, CallError):
        return exc
    url = request_url(exc)
    if isinstance(exc, sdk.APIConnectionError):  # type: ignore[attr-defined] # timeouts too
        return transport_error(exc, url)
    if isinstance(exc, sdk.APIStatusError):  # type: ignore[attr-defined]
        return error_from_body(
            exc.status_code,
            exc.body if isinstance(exc.body, dict) else {},
            dict(exc.response.headers),
            url,
            request_id=getattr(exc, "request_id", None),
            fallback=str(exc),
        )
    return OtherCallError(f"{type(exc).__name__}: {exc}")


class StreamCut(ServerError):
    """A 200 stream that ended without its final chunk: retried like a 5xx."""


def stream_cut(url: str | None, detail: str) -> StreamCut:
    return StreamCut(
        f"stream ended before the final chunk{f' from {url}' if url else ''} ({detail}); "
        "servers cut streams when they have too many requests (llama-cpp-python's server "
        "interrupts one whenever another arrives): abharness retries it and lowers its "
        "concurrency"
    )
