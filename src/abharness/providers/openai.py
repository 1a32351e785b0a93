"""OpenAI chat completions and every OpenAI-compatible API (DeepSeek, xAI, OpenRouter,
vLLM, llama.cpp server, LM Studio) through the official ``openai.AsyncOpenAI``.

Streaming by default with ``stream_options.include_usage`` so the final chunk carries
the exact usage; time to first token is taken at the first content delta. A raw
``prompt`` template is sent as one user message. ``input_tokens`` is
``prompt_tokens`` (which includes cached tokens); ``cache_read_tokens`` is
``prompt_tokens_details.cached_tokens``; ``reasoning_tokens`` is
``completion_tokens_details.reasoning_tokens``. Counts the API omits stay null.

Options: ``transport``: ``aiohttp`` (default: measured faster, see BENCHMARKS.md) or ``httpx``.
"""

from __future__ import annotations

import time
from typing import Any

from ..tokenizers import TiktokenTokenizer, Tokenizer
from ._http import map_stainless_error, require_key
from .base import Provider, ProviderRequest, ProviderResponse, Usage

DEFAULT_TRANSPORT = "aiohttp"  # 1.47x the throughput of httpx2 here: BENCHMARKS.md


def _usage(raw: Any) -> Usage:
    if raw is None:
        return Usage()
    prompt_details = getattr(raw, "prompt_tokens_details", None)
    completion_details = getattr(raw, "completion_tokens_details", None)
    return Usage(
        input_tokens=raw.prompt_tokens,
        output_tokens=raw.completion_tokens,
        cache_read_tokens=getattr(prompt_details, "cached_tokens", None),
        reasoning_tokens=getattr(completion_details, "reasoning_tokens", None),
    )


class OpenAIProvider(Provider):
    type_name = "openai"
    default_concurrency = 16
    unsupported_params = ("top_k",)
    default_rpm = 500  # OpenAI usage tier 1 for the gpt-4.1 family
    default_tpm = 200_000

    def __init__(
        self, endpoint: str, model: str | None = None, options: dict[str, Any] | None = None
    ) -> None:
        super().__init__(endpoint, model, options)
        self._client: Any = None
        self._key: str | None = None

    def load(self) -> None:
        self._key = require_key(self.options.get("api_key_env"), self.endpoint)

    def tokenizer(self, model: str) -> Tokenizer:
        return TiktokenTokenizer(model)

    def _get_client(self) -> Any:
        if self._client is None:  # created on the run's event loop
            import openai

            kwargs: dict[str, Any] = {}
            if self.options.get("transport", DEFAULT_TRANSPORT) == "aiohttp":
                kwargs["http_client"] = openai.DefaultAioHttpClient()
            self._client = openai.AsyncOpenAI(
                api_key=self._key or "unused",
                base_url=self.options.get("base_url"),
                max_retries=0,
                timeout=None,  # the runner owns timeouts
                **kwargs,
            )
        return self._client

    async def generate(self, request: ProviderRequest) -> ProviderResponse:
        import openai

        messages = list(request.messages) or [{"role": "user", "content": request.prompt or ""}]
        kwargs: dict[str, Any] = {"model": request.model, "messages": messages}
        official = self.options.get("base_url") is None
        if request.max_tokens is not None:
            kwargs["max_completion_tokens" if official else "max_tokens"] = request.max_tokens
        for name in ("temperature", "top_p", "seed"):
            if getattr(request, name) is not None:
                kwargs[name] = getattr(request, name)
        if request.stop:
            kwargs["stop"] = list(request.stop)
        try:
            if request.stream:
                return await self._stream(kwargs)
            raw = await self._get_client().chat.completions.with_raw_response.create(**kwargs)
            completion = raw.parse()
            choice = completion.choices[0] if completion.choices else None
            return ProviderResponse(
                text=(choice.message.content or "") if choice else "",
                usage=_usage(completion.usage),
                finish_reason=choice.finish_reason if choice else None,
                request_id=raw.headers.get("x-request-id"),
                metrics=_missing(completion.usage),
            )
        except Exception as exc:
            raise map_stainless_error(exc, openai) from exc

    async def _stream(self, kwargs: dict[str, Any]) -> ProviderResponse:
        start = time.perf_counter()
        stream = await self._get_client().chat.completions.create(
            **kwargs, stream=True, stream_options={"include_usage": True}
        )
        parts: list[str] = []
        ttft = finish = usage = None
        async with stream:
            async for chunk in stream:
                if chunk.usage is not None:
                    usage = chunk.usage
                for choice in chunk.choices:
                    if choice.delta and choice.delta.content:
                        if ttft is None:
                            ttft = (time.perf_counter() - start) * 1000
                        parts.append(choice.delta.content)
                    if choice.finish_reason:
                        finish = choice.finish_reason
            request_id = stream.response.headers.get("x-request-id")
        return ProviderResponse(
            text="".join(parts),
            usage=_usage(usage),
            finish_reason=finish,
            ttft_ms=ttft,
            request_id=request_id,
            metrics=_missing(usage),
        )

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None


def _missing(usage: Any) -> dict[str, Any]:
    """Flag a response without usage, so a null is never mistaken for zero."""
    return {} if usage is not None else {"usage_missing": True}
