"""Ollama (Tier 1) through the official ``ollama.AsyncClient``.

A raw ``prompt`` template goes to ``/api/generate`` with ``raw=True`` (no chat
template applied, as base models need); chat templates go to ``/api/chat``. The final
chunk (or the single response) carries ``prompt_eval_count`` and ``eval_count``,
stored as the exact input and output tokens, and the server's timings, stored in
``provider_metrics_json`` in milliseconds with tokens/s: a long ``load_duration_ms``
is a cold model load, not a slow model. Ollama omits ``prompt_eval_count`` when the
whole prompt came from its cache; the count then stays null and is flagged.

Hosts: ``base_url`` (one), the option ``hosts`` (a list: calls go to the host with the
fewest calls in flight), else ``OLLAMA_HOST``, else the client's default.
Token estimate before the call: ``estimate:chars/4`` (the model's tokenizer lives in
the server).
"""

from __future__ import annotations

import os
import time
from typing import Any

from pydantic import BaseModel, ConfigDict

from ..errors import CallError, OtherCallError
from ..spec.models import ProviderSpec
from ._http import error_from_status, stream_cut, transport_error
from .base import (
    Provider,
    ProviderRequest,
    ProviderResponse,
    Usage,
    emit_text,
    mark_first_byte,
)

NS_PER_MS = 1_000_000


class OllamaOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    hosts: list[str] | None = None  # several servers: calls go to the least busy


class OllamaProvider(Provider):
    type_name = "ollama"
    sdk = "ollama"
    default_concurrency = 4  # per host; Ollama's OLLAMA_NUM_PARALLEL default is 1-4
    Options = OllamaOptions

    opts: OllamaOptions

    def __init__(self, name: str, config: ProviderSpec, model: str | None = None) -> None:
        super().__init__(name, config, model)
        self.hosts: list[str | None] = list(self.opts.hosts or []) or [
            config.base_url or os.environ.get("OLLAMA_HOST")
        ]
        self._clients: dict[str | None, Any] = {}
        self._in_flight = dict.fromkeys(self.hosts, 0)

    def connection_key(self) -> str:
        return "ollama:" + ",".join(sorted(h or "default" for h in self.hosts))

    def where(self) -> str:
        return "ollama at " + ", ".join(h or "the default host" for h in self.hosts)

    def max_concurrency(self) -> int:
        return (self.config.concurrency or self.default_concurrency) * len(self.hosts)

    def _client(self, host: str | None) -> Any:
        if host not in self._clients:
            import ollama

            self._clients[host] = ollama.AsyncClient(host=host)
        return self._clients[host]

    async def generate(self, request: ProviderRequest) -> ProviderResponse:
        host = min(self.hosts, key=lambda h: self._in_flight[h])
        self._in_flight[host] += 1
        try:
            return await self._generate(host, request)
        finally:
            self._in_flight[host] -= 1

    async def _generate(self, host: str | None, request: ProviderRequest) -> ProviderResponse:
        import httpx
        import ollama

        options: dict[str, Any] = {}
        for name, key in (
            ("temperature", "temperature"),
            ("top_p", "top_p"),
            ("top_k", "top_k"),
            ("seed", "seed"),
            ("max_tokens", "num_predict"),
        ):
            if getattr(request, name) is not None:
                options[key] = getattr(request, name)
        if request.stop:
            options["stop"] = list(request.stop)
        client = self._client(host)
        raw = request.prompt is not None
        start = time.perf_counter()
        try:
            if raw:
                result = await client.generate(
                    model=request.model,
                    prompt=request.prompt,
                    raw=True,
                    options=options,
                    stream=request.stream,
                )
            else:
                result = await client.chat(
                    model=request.model,
                    messages=list(request.messages),
                    options=options,
                    stream=request.stream,
                )
            ttft = None
            if request.stream:
                parts, final = [], None
                async for part in result:
                    mark_first_byte()
                    piece = part.response if raw else (part.message.content if part.message else "")
                    if piece:
                        if ttft is None:
                            ttft = (time.perf_counter() - start) * 1000
                        parts.append(piece)
                        emit_text(piece)
                    if part.done:
                        final = part
                text = "".join(parts)
            else:
                mark_first_byte()
                final = result
                text = (result.response if raw else result.message.content) or ""
        except ollama.ResponseError as exc:
            raise error_from_status(exc.status_code, exc.error) from exc
        except (httpx.TransportError, ConnectionError) as exc:
            raise transport_error(exc, f"ollama at {host or 'the default host'}") from exc
        except CallError:
            raise
        except Exception as exc:
            raise OtherCallError(f"ollama: {type(exc).__name__}: {exc}") from exc
        if final is None:
            raise stream_cut(host or "default host", "no chunk with done: true")
        return ProviderResponse(
            text=text,
            usage=Usage(input_tokens=final.prompt_eval_count, output_tokens=final.eval_count),
            finish_reason=final.done_reason,
            ttft_ms=ttft,
            served_model=final.model,
            metrics=_metrics(final, host),
            usage_source=(
                "missing"
                if final.prompt_eval_count is None and final.eval_count is None
                else "final_chunk"
                if request.stream
                else "body"
            ),
        )

    async def aclose(self) -> None:
        for client in self._clients.values():
            inner = getattr(client, "_client", None)
            if inner is not None:
                await inner.aclose()
        self._clients.clear()


def _metrics(final: Any, host: str | None) -> dict[str, Any]:
    m: dict[str, Any] = {"host": host or "default"}
    for name in ("total_duration", "load_duration", "prompt_eval_duration", "eval_duration"):
        value = getattr(final, name, None)
        if value is not None:
            m[f"{name}_ms"] = value / NS_PER_MS
    if final.eval_count and final.eval_duration:
        m["tokens_per_s"] = final.eval_count / (final.eval_duration / 1e9)
    if final.prompt_eval_count is None:
        m["prompt_eval_count_missing"] = True  # whole prompt served from Ollama's cache
    return m
