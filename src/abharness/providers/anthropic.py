"""Anthropic messages through the official ``anthropic.AsyncAnthropic``.

The ``system`` message goes to the ``system`` parameter; a raw ``prompt`` template is
sent as one user message. Streaming by default: ``message_start`` carries the input
usage, ``message_delta`` the cumulative output usage, and the first text delta marks
the time to first token. A stream that ends before the ``message_delta`` carrying the
``stop_reason`` (empty, or cut mid-body) is a `server` error, retried like a 5xx,
never an empty ``ok``. Anthropic reports ``input_tokens`` without cached tokens;
abharness stores ``input_tokens`` = uncached + cache read + cache write (SPEC §8),
with ``cache_read_tokens`` and ``cache_write_tokens`` as reported.

This SDK's Messages API accepts no ``temperature``, ``top_p``, ``top_k`` or seed; an
arm that sets them runs without them and ``provider_metrics_json.ignored_params``
lists them (``validate`` warns).

Token estimate before the call: the documented ``estimate:chars/4`` (Anthropic's
tokenizer is not public); the report shows its error against the exact count.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

from ..errors import CallError, OtherCallError, TimeoutError_
from ..spec.models import ProviderSpec
from ._http import (
    error_from_status,
    map_stainless_error,
    parse_rate_limits,
    require_key,
    stream_cut,
    transport_error,
)
from .base import (
    Provider,
    ProviderRequest,
    ProviderResponse,
    Usage,
    emit_text,
    mark_first_byte,
)
from .batch import BatchItem, BatchState, batch_url_unsupported

DEFAULT_MAX_TOKENS = 1024  # Anthropic requires max_tokens


def _usage(
    input_tokens: int | None,
    cache_read: int | None,
    cache_write: int | None,
    output: int | None,
    thinking: int | None,
) -> Usage:
    total_in = None
    if input_tokens is not None:
        total_in = input_tokens + (cache_read or 0) + (cache_write or 0)
    return Usage(
        input_tokens=total_in,
        output_tokens=output,
        cache_read_tokens=cache_read,
        cache_write_tokens=cache_write,
        reasoning_tokens=thinking,
    )


def _from_message(message: Any) -> ProviderResponse:
    """A whole Message (the SDK's type), as the server sent it."""
    u = message.usage
    details = getattr(u, "output_tokens_details", None)
    return ProviderResponse(
        text="".join(b.text for b in message.content if b.type == "text"),
        usage=_usage(
            u.input_tokens,
            u.cache_read_input_tokens,
            u.cache_creation_input_tokens,
            u.output_tokens,
            getattr(details, "thinking_tokens", None),
        ),
        finish_reason=message.stop_reason,
        served_model=message.model,
        usage_source="body",
    )


# the HTTP status of each error type Anthropic names (its errors documentation)
_ERROR_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "overloaded_error": 529,
}


def _batch_state(batch: Any) -> BatchState:
    c = batch.request_counts
    status = {"in_progress": "in_progress", "canceling": "cancelling"}.get(
        batch.processing_status,
        "cancelled" if batch.cancel_initiated_at is not None else "ended",
    )
    return BatchState(
        id=batch.id,
        status=status,
        counts={
            "processing": c.processing,
            "succeeded": c.succeeded,
            "errored": c.errored,
            "canceled": c.canceled,
            "expired": c.expired,
        },
        results=batch.results_url,
        created_at=batch.created_at.timestamp(),
        ended_at=batch.ended_at.timestamp() if batch.ended_at else None,
    )


def _batch_item(item: Any) -> BatchItem:
    """One result: a message, its error, or a request not run (expired, cancelled). A
    result has no request id of its own: the message's id stands for it."""
    result = item.result
    if result.type == "succeeded":
        response = _from_message(result.message)
        response.request_id = result.message.id
        return BatchItem(item.custom_id, response=response)
    if result.type == "errored":
        err = result.error.error
        return BatchItem(
            item.custom_id,
            error=error_from_status(_ERROR_STATUS.get(err.type), err.message, code=err.type),
        )
    if result.type == "expired":
        return BatchItem(
            item.custom_id,
            error=TimeoutError_("not run: the batch's 24 hours passed before it ran (expired)"),
        )
    return BatchItem(
        item.custom_id, error=OtherCallError(f"not run: the batch was cancelled ({result.type})")
    )


class AnthropicProvider(Provider):
    type_name = "anthropic"
    sdk = "anthropic"
    default_concurrency = 8
    unsupported_params = ("temperature", "top_p", "top_k", "seed")
    default_rpm = 50  # Anthropic usage tier 1
    default_tpm = 50_000
    base_url_env = "ANTHROPIC_BASE_URL"

    def __init__(self, name: str, config: ProviderSpec, model: str | None = None) -> None:
        super().__init__(name, config, model)
        self._client: Any = None
        self._key: str | None = None

    def load(self) -> None:
        self._key = require_key(self.config.api_key_env, self.endpoint)

    def _get_client(self) -> Any:
        if self._client is None:
            import anthropic

            self._client = anthropic.AsyncAnthropic(
                api_key=self._key or "unused",
                base_url=self.config.base_url,
                max_retries=0,
                timeout=None,
            )
        return self._client

    def _params(self, request: ProviderRequest) -> dict[str, Any]:
        """The Messages API's parameters for `request`, unstreamed."""
        system = [m["content"] for m in request.messages if m["role"] == "system"]
        messages = [m for m in request.messages if m["role"] != "system"]
        if request.prompt is not None:
            messages = [{"role": "user", "content": request.prompt}]
        kwargs: dict[str, Any] = {
            "model": request.model,
            "messages": messages,
            "max_tokens": request.max_tokens or DEFAULT_MAX_TOKENS,
        }
        if system:
            kwargs["system"] = "\n\n".join(system)
        if request.stop:
            kwargs["stop_sequences"] = list(request.stop)
        return kwargs

    async def generate(self, request: ProviderRequest) -> ProviderResponse:
        import anthropic

        kwargs = self._params(request)
        try:
            if request.stream:
                response = await self._stream(kwargs)
            else:
                response = await self._create(kwargs)
        except CallError:
            raise
        except Exception as exc:
            raise map_stainless_error(exc, anthropic) from exc
        return response

    def _url(self) -> str:
        return str(self._get_client().base_url).rstrip("/") + "/v1/messages"

    async def _create(self, kwargs: dict[str, Any]) -> ProviderResponse:
        raw = await self._get_client().messages.with_raw_response.create(**kwargs)
        mark_first_byte()
        response = _from_message(await raw.parse())
        response.request_id = raw.headers.get("request-id")
        response.rate_limits = parse_rate_limits(raw.headers)
        return response

    async def _stream(self, kwargs: dict[str, Any]) -> ProviderResponse:
        import anthropic

        start = time.perf_counter()
        stream = await self._get_client().messages.create(**kwargs, stream=True)
        mark_first_byte()
        parts: list[str] = []
        ttft = finish = served = None
        n_in = cache_read = cache_write = n_out = thinking = None
        events = 0
        request_id = stream.response.headers.get("request-id")
        limits = parse_rate_limits(stream.response.headers)
        try:
            async with stream:
                async for event in stream:
                    events += 1
                    if event.type == "message_start":
                        u = event.message.usage
                        served = event.message.model
                        n_in, n_out = u.input_tokens, u.output_tokens
                        cache_read = u.cache_read_input_tokens
                        cache_write = u.cache_creation_input_tokens
                    elif event.type == "content_block_delta" and event.delta.type == "text_delta":
                        if ttft is None:
                            ttft = (time.perf_counter() - start) * 1000
                        parts.append(event.delta.text)
                        if event.delta.text:
                            emit_text(event.delta.text)
                    elif event.type == "message_delta":
                        u = event.usage  # cumulative counts; input fields only when they changed
                        n_out = u.output_tokens
                        n_in = u.input_tokens if u.input_tokens is not None else n_in
                        if u.cache_read_input_tokens is not None:
                            cache_read = u.cache_read_input_tokens
                        if u.cache_creation_input_tokens is not None:
                            cache_write = u.cache_creation_input_tokens
                        details = getattr(u, "output_tokens_details", None)
                        thinking = getattr(details, "thinking_tokens", thinking)
                        finish = event.delta.stop_reason or finish
        except anthropic.APIStatusError:
            raise  # an error event inside the stream: mapped by the caller
        except Exception as exc:  # the connection broke mid-body
            url = self._url()
            raise stream_cut(url, f"after {events} events: {transport_error(exc, url)}") from exc
        if finish is None:
            raise stream_cut(self._url(), f"{events} events, no message_delta with a stop_reason")
        return ProviderResponse(
            text="".join(parts),
            usage=_usage(n_in, cache_read, cache_write, n_out, thinking),
            finish_reason=finish,
            ttft_ms=ttft,
            request_id=request_id,
            served_model=served,
            rate_limits=limits,
            usage_source="final_chunk" if n_in is not None or n_out is not None else "missing",
        )

    # -- Message Batches (SPEC §13; `providers.batch.BatchAPI`) ---------------------

    batch_limits = (100_000, 256 * 1024 * 1024)  # requests, bytes per batch

    def batch_unsupported(self) -> str | None:
        return batch_url_unsupported(self)

    def batch_group(self, request: ProviderRequest) -> str:
        return "messages"

    def batch_line(self, custom_id: str, request: ProviderRequest) -> dict[str, Any]:
        return {"custom_id": custom_id, "params": self._params(request)}

    async def batch_submit(
        self, group: str, lines: list[bytes], metadata: dict[str, str]
    ) -> BatchState:
        """Message Batches take no metadata: `batch_find` matches by time and size."""
        import anthropic

        requests = [json.loads(line) for line in lines]
        try:
            return _batch_state(await self._get_client().messages.batches.create(requests=requests))
        except Exception as exc:
            raise map_stainless_error(exc, anthropic) from exc

    async def batch_status(self, batch_id: str) -> BatchState:
        import anthropic

        try:
            return _batch_state(await self._get_client().messages.batches.retrieve(batch_id))
        except Exception as exc:
            raise map_stainless_error(exc, anthropic) from exc

    async def batch_cancel(self, batch_id: str) -> BatchState:
        import anthropic

        try:
            return _batch_state(await self._get_client().messages.batches.cancel(batch_id))
        except Exception as exc:
            raise map_stainless_error(exc, anthropic) from exc

    async def batch_find(
        self, metadata: dict[str, str], created_after: float, count: int
    ) -> BatchState | None:
        """The one batch of `count` requests created since `created_after` (a minute's
        grace for clocks); none, or more than one, and it cannot be told: None."""
        import anthropic

        found = []
        try:
            async for batch in self._get_client().messages.batches.list(limit=100):
                if batch.created_at.timestamp() < created_after - 60:
                    break  # newest first
                state = _batch_state(batch)
                if sum(state.counts.values()) == count:
                    found.append(state)
        except Exception as exc:
            raise map_stainless_error(exc, anthropic) from exc
        return found[0] if len(found) == 1 else None

    async def batch_results(self, state: BatchState) -> AsyncIterator[BatchItem]:
        import anthropic

        try:
            results = await self._get_client().messages.batches.results(state.id)
            async for item in results:
                yield _batch_item(item)
        except CallError:
            raise
        except Exception as exc:
            raise map_stainless_error(exc, anthropic) from exc

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None
