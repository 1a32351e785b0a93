"""OpenAI and every OpenAI-compatible API (DeepSeek, xAI, OpenRouter, vLLM, llama.cpp
server, LiteLLM, LM Studio) through the official ``openai.AsyncOpenAI``.

Chat templates go to ``/chat/completions``. A raw ``prompt`` template (base models)
goes to ``/completions`` where the endpoint offers it, chosen by the option ``api``:

- ``auto`` (default): ``completions`` on a spec-defined ``base_url`` (self-hosted
  servers all offer it) and for OpenAI's own completion models
  (``gpt-3.5-turbo-instruct``, ``davinci-002``, ``babbage-002``); ``chat`` (the prompt
  as one user message) on the hosted chat APIs;
- ``chat`` or ``completions``: always that one for raw prompts.
``validate`` shows which one each arm uses.

Streaming by default with ``stream_options.include_usage`` so the last chunk carries
the exact usage; time to first token is taken at the first content delta. A stream
that ends without a ``finish_reason`` (an empty 200, a server that dropped the request,
a connection cut mid-body) is a `server` error, retried like a 5xx, never an empty
``ok``. ``input_tokens`` is ``prompt_tokens`` (cached tokens included);
``cache_read_tokens`` is ``prompt_tokens_details.cached_tokens``; ``reasoning_tokens``
is ``completion_tokens_details.reasoning_tokens``. Counts the API omits stay null.

Through LiteLLM's proxy (it answers with ``x-litellm-call-id``), a stream's usage is
LiteLLM's own count with its own tokenizer when the server behind it sends none
(llama-cpp-python's never does), and nothing says which: such counts are stored with
``usage_source = 'proxy_estimate'``. Non-streamed counts are passed through as the
server sent them.

Options: ``transport``: ``aiohttp`` (default: the SDK on aiohttp, measured faster
than ``httpx``, BENCHMARKS.md), ``httpx``, or ``direct``: the same requests without
the SDK's request machinery (`providers.wire`), 0.7-0.9 ms less CPU a call, for a
gateway at hundreds of requests a second; ``api``; and ``extra_body``: fields added to
every request for servers that take more than OpenAI's parameters (llama-cpp-python's
server: ``repeat_penalty: 1.0`` to sample as in-process llama.cpp does; vLLM:
``min_p``, ``top_k``). They are part of the cache key.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any, Literal
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict

from ..errors import CallError, OtherCallError, TimeoutError_
from ..prompts.tokenizers import TiktokenTokenizer, Tokenizer
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
from .wire import Wire

# Hosted APIs that answer chat only; a raw prompt goes there as one user message.
CHAT_ONLY_HOSTS = ("api.openai.com", "api.deepseek.com", "api.x.ai")
OPENAI_COMPLETION_MODELS = ("gpt-3.5-turbo-instruct", "davinci-002", "babbage-002")


class OpenAIOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    transport: Literal["aiohttp", "httpx", "direct"] = "aiohttp"
    api: Literal["auto", "chat", "completions"] = "auto"
    extra_body: dict[str, Any] | None = None


def _usage(raw: dict[str, Any] | None) -> Usage:
    """The usage object of a response or a stream's last chunk, as sent."""
    if raw is None:
        return Usage()
    prompt_details = raw.get("prompt_tokens_details") or {}
    completion_details = raw.get("completion_tokens_details") or {}
    return Usage(
        input_tokens=raw.get("prompt_tokens"),
        output_tokens=raw.get("completion_tokens"),
        cache_read_tokens=prompt_details.get("cached_tokens"),
        reasoning_tokens=completion_details.get("reasoning_tokens"),
    )


def httpx_response() -> Any:
    """The HTTP response class of the SDK's HTTP library, to ask `post` for the raw
    response (openai 3 is built on httpx2; earlier versions on httpx)."""
    try:
        import httpx2

        return httpx2.Response
    except ImportError:  # pragma: no cover - an openai before 3
        import httpx

        return httpx.Response


def _request_id(headers: Any, body_id: str | None) -> str | None:
    """The provider's request id; through a gateway that sends none (LiteLLM), the
    gateway's call id; else the response's own id."""
    return headers.get("x-request-id") or headers.get("x-litellm-call-id") or body_id


def _from_completion(completion: dict[str, Any], url: str) -> ProviderResponse:
    """A non-streamed completion (chat or raw), as the server sent it."""
    choices = completion.get("choices") or []
    if not choices:
        raise stream_cut(url, "a response without choices")
    choice = choices[0]
    message = choice.get("message")
    text = message.get("content") if isinstance(message, dict) else choice.get("text")
    usage = completion.get("usage")
    return ProviderResponse(
        text=text or "",
        usage=_usage(usage),
        finish_reason=choice.get("finish_reason"),
        request_id=completion.get("id"),
        served_model=completion.get("model"),
        usage_source="body" if usage is not None else "missing",
    )


_BATCH_STATUS = {
    "validating": "validating",
    "in_progress": "in_progress",
    "finalizing": "finalizing",
    "completed": "ended",
    "failed": "failed",
    "expired": "expired",
    "cancelling": "cancelling",
    "cancelled": "cancelled",
}


def _batch_state(batch: Any) -> BatchState:
    counts = batch.request_counts
    error = None
    if batch.errors and batch.errors.data:
        first = batch.errors.data[0]
        where = f"line {first.line}: " if first.line is not None else ""
        param = f", {first.param}" if first.param else ""
        error = f"{where}{first.message} ({first.code}{param})"
    return BatchState(
        id=batch.id,
        status=_BATCH_STATUS.get(batch.status, batch.status),
        counts=(
            {"total": counts.total, "completed": counts.completed, "failed": counts.failed}
            if counts
            else {}
        ),
        error=error,
        results=[f for f in (batch.output_file_id, batch.error_file_id) if f],
        created_at=float(batch.created_at),
        ended_at=next(
            (
                float(t)
                for t in (
                    batch.completed_at,
                    batch.failed_at,
                    batch.expired_at,
                    batch.cancelled_at,
                )
                if t
            ),
            None,
        ),
    )


def _batch_item(line: dict[str, Any], url: str) -> BatchItem:
    """One line of an output or error file."""
    custom_id = line.get("custom_id") or ""
    failure = line.get("error")
    if failure:
        code, message = failure.get("code"), failure.get("message") or ""
        if code == "batch_expired":  # a timeout: retried in a new batch
            return BatchItem(custom_id, error=TimeoutError_(f"not run: {message} ({code})"))
        if code == "batch_cancelled":
            return BatchItem(custom_id, error=OtherCallError(f"not run: {message} ({code})"))
        return BatchItem(custom_id, error=OtherCallError(f"{message} ({code})"))
    response = line.get("response") or {}
    status = response.get("status_code")
    body = response.get("body") or {}
    if status != 200:
        err: dict[str, Any] = body["error"] if isinstance(body.get("error"), dict) else {}
        return BatchItem(
            custom_id,
            error=error_from_status(
                status,
                err.get("message") or json.dumps(body)[:500],
                request_id=response.get("request_id"),
                code=err.get("code") or err.get("type"),
            ),
        )
    try:
        parsed = _from_completion(body, url)
    except CallError as exc:
        return BatchItem(custom_id, error=exc)
    parsed.request_id = response.get("request_id") or parsed.request_id
    return BatchItem(custom_id, response=parsed)


class OpenAIProvider(Provider):
    type_name = "openai"
    sdk = "openai"
    default_concurrency = 16
    unsupported_params = ("top_k",)
    default_rpm = 500  # OpenAI usage tier 1 for the gpt-4.1 family
    base_url_env = "OPENAI_BASE_URL"
    default_tpm = 200_000
    Options = OpenAIOptions

    opts: OpenAIOptions

    def __init__(self, name: str, config: ProviderSpec, model: str | None = None) -> None:
        super().__init__(name, config, model)
        self._client: Any = None
        self._wire: Wire | None = None
        self._base_url: str | None = None
        self._key: str | None = None

    def load(self) -> None:
        self._key = require_key(self.config.api_key_env, self.endpoint)

    def tokenizer(self, model: str) -> Tokenizer:
        return TiktokenTokenizer(model)

    def cache_parts(self) -> dict[str, Any]:
        extra = self.opts.extra_body
        return {"extra_body": extra} if extra else {}

    def api_for(self, request: ProviderRequest) -> str:
        if request.prompt is None:
            return "chat"
        api = self.opts.api
        if api != "auto":
            return api
        base_url = self.config.base_url
        host = urlparse(base_url).hostname if base_url else "api.openai.com"
        if host in CHAT_ONLY_HOSTS:
            return "completions" if request.model in OPENAI_COMPLETION_MODELS else "chat"
        return "completions"

    def _get_client(self) -> Any:
        if self._client is None:  # created on the run's event loop
            import openai

            kwargs: dict[str, Any] = {}
            if self.opts.transport == "aiohttp":
                kwargs["http_client"] = openai.DefaultAioHttpClient()
            self._client = openai.AsyncOpenAI(
                api_key=self._key or "unused",
                base_url=self.config.base_url,
                max_retries=0,
                timeout=None,  # the runner owns timeouts
                **kwargs,
            )
        return self._client

    def _url(self, path: str) -> str:
        if self._base_url is None:  # the SDK's: the spec's, OPENAI_BASE_URL's or OpenAI's
            self._base_url = str(self._get_client().base_url).rstrip("/")
        return f"{self._base_url}/{path}"

    def _get_wire(self) -> Wire:
        if self._wire is None:
            self._wire = Wire(self._url(""), self._key)
        return self._wire

    def _body(self, request: ProviderRequest) -> tuple[str, dict[str, Any]]:
        """(path, JSON body) of `request`, unstreamed."""
        api = self.api_for(request)
        kwargs: dict[str, Any] = {"model": request.model}
        if api == "completions":
            kwargs["prompt"] = request.prompt or ""
        else:
            kwargs["messages"] = list(request.messages) or [
                {"role": "user", "content": request.prompt or ""}
            ]
        official = self.config.base_url is None
        if request.max_tokens is not None:
            name = "max_completion_tokens" if official and api == "chat" else "max_tokens"
            kwargs[name] = request.max_tokens
        for name in ("temperature", "top_p", "seed"):
            if getattr(request, name) is not None:
                kwargs[name] = getattr(request, name)
        if request.stop:
            kwargs["stop"] = list(request.stop)
        kwargs.update(self.opts.extra_body or {})
        return ("/completions" if api == "completions" else "/chat/completions"), kwargs

    async def generate(self, request: ProviderRequest) -> ProviderResponse:
        import openai

        path, kwargs = self._body(request)
        url = self._url(path.lstrip("/"))
        try:
            if request.stream:
                return await self._stream(path, kwargs, self.api_for(request), url)
            if self.opts.transport == "direct":
                completion, headers = await self._get_wire().post(path, kwargs)
            else:
                # The SDK's own request path, without its per-request type transform and
                # response model construction: the body is already plain JSON, and the
                # answer is read as a dict (BENCHMARKS.md: the two were half its CPU).
                raw = await self._get_client().post(path, body=kwargs, cast_to=httpx_response())
                completion, headers = raw.json(), raw.headers
            mark_first_byte()
        except Exception as exc:
            raise map_stainless_error(exc, openai) from exc
        response = _from_completion(completion, url)
        response.request_id = _request_id(headers, completion.get("id"))
        response.rate_limits = parse_rate_limits(headers)
        return response

    async def _open_stream(self, path: str, body: dict[str, Any]) -> tuple[Any, Mapping[str, str]]:
        """The stream answering `body` (an async context and iterator of chunk dicts)
        and the response's headers."""
        if self.opts.transport == "direct":
            events = await self._get_wire().stream(path, body)
            return events, events.headers
        import openai

        stream = await self._get_client().post(
            path,
            body=body,
            cast_to=object,  # chunks stay dicts
            stream=True,
            stream_cls=openai.AsyncStream[object],
        )
        return stream, stream.response.headers

    async def _stream(
        self, path: str, kwargs: dict[str, Any], api: str, url: str
    ) -> ProviderResponse:
        import openai

        start = time.perf_counter()
        try:
            stream, headers = await self._open_stream(
                path, {**kwargs, "stream": True, "stream_options": {"include_usage": True}}
            )
        except Exception as exc:
            raise map_stainless_error(exc, openai) from exc
        mark_first_byte()
        parts: list[str] = []
        ttft = finish = usage = served = None
        chunks = 0
        first_id: str | None = None
        limits = parse_rate_limits(headers)
        chat = api != "completions"
        try:
            async with stream:
                async for chunk in stream:
                    chunks += 1
                    served = served or chunk.get("model")
                    first_id = first_id or chunk.get("id")
                    if chunk.get("usage") is not None:
                        usage = chunk["usage"]
                    for choice in chunk.get("choices") or ():
                        piece = (
                            (choice.get("delta") or {}).get("content")
                            if chat
                            else choice.get("text")
                        )
                        if piece:
                            if ttft is None:
                                ttft = (time.perf_counter() - start) * 1000
                            parts.append(piece)
                            emit_text(piece)
                        if choice.get("finish_reason"):
                            finish = choice["finish_reason"]
        except CallError:
            raise
        except openai.APIError as exc:  # an error event inside the stream
            raise map_stainless_error(exc, openai) from exc
        except Exception as exc:  # the connection broke mid-body
            cut = transport_error(exc, url)
            raise stream_cut(url, f"after {chunks} chunks: {cut}") from exc
        if finish is None:
            raise stream_cut(url, f"{chunks} chunks, no finish_reason")
        return ProviderResponse(
            text="".join(parts),
            usage=_usage(usage),
            finish_reason=finish,
            ttft_ms=ttft,
            request_id=_request_id(headers, first_id),
            served_model=served,
            rate_limits=limits,
            usage_source=(
                "missing"
                if usage is None
                else "proxy_estimate"
                if "x-litellm-call-id" in headers
                else "final_chunk"
            ),
        )

    # -- the Batch API (SPEC §13; `providers.batch.BatchAPI`) ----------------------

    batch_limits = (50_000, 200 * 1024 * 1024)  # requests, bytes of the input file

    def batch_unsupported(self) -> str | None:
        return batch_url_unsupported(self)

    def batch_group(self, request: ProviderRequest) -> str:
        return "/v1" + self._body(request)[0]  # one endpoint per batch

    def batch_line(self, custom_id: str, request: ProviderRequest) -> dict[str, Any]:
        path, body = self._body(request)
        return {"custom_id": custom_id, "method": "POST", "url": "/v1" + path, "body": body}

    async def batch_submit(
        self, group: str, lines: list[bytes], metadata: dict[str, str]
    ) -> BatchState:
        import openai

        client = self._get_client()
        try:
            uploaded = await client.files.create(
                file=("abharness-batch.jsonl", b"".join(lines), "application/jsonl"),
                purpose="batch",
            )
            batch = await client.batches.create(
                completion_window="24h",
                endpoint=group,
                input_file_id=uploaded.id,
                metadata=metadata,
            )
        except Exception as exc:
            raise map_stainless_error(exc, openai) from exc
        return _batch_state(batch)

    async def batch_status(self, batch_id: str) -> BatchState:
        import openai

        try:
            return _batch_state(await self._get_client().batches.retrieve(batch_id))
        except Exception as exc:
            raise map_stainless_error(exc, openai) from exc

    async def batch_cancel(self, batch_id: str) -> BatchState:
        import openai

        try:
            return _batch_state(await self._get_client().batches.cancel(batch_id))
        except Exception as exc:
            raise map_stainless_error(exc, openai) from exc

    async def batch_find(
        self, metadata: dict[str, str], created_after: float, count: int
    ) -> BatchState | None:
        import openai

        try:
            async for batch in self._get_client().batches.list(limit=100):
                if batch.created_at < created_after - 60:
                    return None  # newest first: nothing older can be ours
                mine = batch.metadata or {}
                if all(mine.get(k) == v for k, v in metadata.items()):
                    return _batch_state(batch)
        except Exception as exc:
            raise map_stainless_error(exc, openai) from exc
        return None

    async def batch_results(self, state: BatchState) -> AsyncIterator[BatchItem]:
        """The output file's lines, then the error file's, read as they download."""
        import openai

        url = self._url("batches")
        for file_id in state.results or ():
            try:
                async with self._get_client().files.with_streaming_response.content(file_id) as raw:
                    async for line in raw.iter_lines():
                        if line.strip():
                            yield _batch_item(json.loads(line), url)
            except CallError:
                raise
            except Exception as exc:
                raise map_stainless_error(exc, openai) from exc

    async def aclose(self) -> None:
        if self._wire is not None:
            await self._wire.aclose()
            self._wire = None
        if self._client is not None:
            await self._client.close()
            self._client = None
