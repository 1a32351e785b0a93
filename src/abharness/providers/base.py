"""The one provider contract.

A provider turns one `ProviderRequest` into one `ProviderResponse` with `generate`,
its only abstract method, and maps its SDK's exceptions to the `CallError` tree at that
boundary. Everything else has a documented default a provider may override:

- `connection_key()`: what limits are shared by: the base URL and the identity (a
  hash, never the key) of the credentials, so arms on one account share one budget;
- `max_concurrency()`: calls in flight per connection key;
- `rate_limits()`: (requests, tokens) per minute: the spec's ``rpm``/``tpm``, else the
  provider's defaults (``default_rpm``/``default_tpm``: a new account's published tier);
- `tokenizer(model)`: the counter the budget builder uses before the call;
- `context_window(model)`: tokens the model accepts, prompt plus completion, if known;
- `unsupported_params`: sampling parameters the API cannot take; the runner records
  any an arm sets as ``ignored_params`` and ``validate`` warns, so nothing is dropped
  silently;
- `Options`: the provider's own ``options:`` as a pydantic model with
  ``extra="forbid"``, so a typo (``hostz``, ``n_ctxx``) is an error in ``validate``;
- `check_setup()`: raise `SetupError` when the spec asks for something this machine
  lacks (a model file, an extra), found before anything runs;
- `unavailable()`: why this endpoint cannot be called here (an unset API key), or
  None; the run refuses such arms unless ``--skip-unavailable``;
- `batch_unsupported()`: why ``mode: batch`` cannot go to this endpoint, or None
  when the provider implements `providers.batch.BatchAPI` and the URL offers it;
- `api_for(request)`: which of the endpoint's APIs a request goes to, where it has
  more than one (OpenAI: chat or completions); shown by ``validate``;
- `load()` / `aclose()`: set-up before the first call (blocking work is fine: the
  runner calls it off the event loop) and clean-up after the last;
- `where()`: the address calls go to, for messages ("no answer in 10 s from ...").

A provider calls `mark_first_byte()` when the server's answer begins (the response's
headers, or the first chunk or token): a timeout after it belongs to the model, one
before it to the endpoint (`run.retry.failure_scope`). A streaming provider calls
`emit_text(piece)` for each piece of text as it arrives, which hands it to the
attempt's relay, if it has one (`abharness serve` passes a stream through that way).

Providers know nothing of the runner, the store or templates.
"""

from __future__ import annotations

import os
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from ..hashing import content_hash
from ..prompts.tokenizers import CharEstimateTokenizer, Tokenizer
from ..spec.models import ProviderSpec
from ..store.records import Usage

__all__ = ["Usage"]  # defined with the records, whose columns derive from it


class NoOptions(BaseModel):
    """A provider without options of its own: any key under ``options:`` is a typo."""

    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class ProviderRequest:
    """One call. Exactly one of `messages` (chat) and `prompt` (raw completion) is set."""

    model: str
    messages: tuple[dict[str, str], ...] = ()
    prompt: str | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    max_tokens: int | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stream: bool = True


@dataclass
class ProviderResponse:
    text: str
    usage: Usage
    finish_reason: str | None = None
    ttft_ms: float | None = None  # from sending the request to the first output token
    request_id: str | None = None
    served_model: str | None = None  # the model the server says answered
    metrics: dict[str, Any] = field(default_factory=dict)  # -> provider_metrics_json
    rate_limits: Any = None  # `RateLimits` from the response's headers, if it had any
    # where `usage` came from: final_chunk (a stream's last), body, missing (the server
    # sent none: the counts stay null), proxy_estimate (a proxy's own count, not the model's)
    usage_source: str | None = None


@dataclass
class AttemptProgress:
    """How far one attempt got; `track_attempt` makes one per attempt."""

    first_byte_at: float | None = None  # perf_counter() when the answer began
    relay: Callable[[str], None] | None = None  # takes each piece of text as it arrives


_attempt: ContextVar[AttemptProgress | None] = ContextVar("abharness_attempt", default=None)


@contextmanager
def track_attempt(relay: Callable[[str], None] | None = None) -> Iterator[AttemptProgress]:
    """The executor wraps each attempt in this; `mark_first_byte` fills it in (from the
    attempt's task, or a worker thread it started: both see the same object)."""
    progress = AttemptProgress(relay=relay)
    token = _attempt.set(progress)
    try:
        yield progress
    finally:
        _attempt.reset(token)


def mark_first_byte() -> None:
    """The server's answer has begun (its headers, or the first chunk or token)."""
    progress = _attempt.get()
    if progress is not None and progress.first_byte_at is None:
        progress.first_byte_at = time.perf_counter()


def emit_text(piece: str) -> None:
    """A piece of the answer's text has arrived (from the attempt's task)."""
    progress = _attempt.get()
    if progress is not None and progress.relay is not None:
        progress.relay(piece)


class Provider(ABC):
    """Base of every provider. One instance serves one endpoint (or, with `per_model`,
    one model) for a whole run; `model` is set only for `per_model` providers."""

    type_name: ClassVar[str]
    default_concurrency: ClassVar[int] = 8
    # One instance per endpoint serves every model on it (one SDK client, one pool);
    # a provider that holds a model itself (llama.cpp) sets this and gets one per model.
    per_model: ClassVar[bool] = False
    default_rpm: ClassVar[int | None] = None
    base_url_env: ClassVar[str | None] = None  # the SDK's own base-URL variable
    sdk: ClassVar[str | None] = None  # the module the first call imports (see `Plan.warm_up`)
    default_tpm: ClassVar[int | None] = None
    unsupported_params: ClassVar[tuple[str, ...]] = ()
    Options: ClassVar[type[BaseModel]] = NoOptions

    def __init__(self, name: str, config: ProviderSpec, model: str | None = None) -> None:
        """`name`: the spec's name for the endpoint; `config`: its typed settings (a
        ``providers:`` entry, or a built-in's); its ``options`` become `opts`, an
        instance of this provider's `Options` (pydantic raises on a typo: `validate`
        has said so with the line before)."""
        self.endpoint = name
        self.config = config
        self.model = model
        self.opts: Any = self.Options.model_validate(config.options)

    @abstractmethod
    async def generate(self, request: ProviderRequest) -> ProviderResponse:
        """Make the call; raise a `CallError` subclass on failure."""

    def check_setup(self) -> None:  # noqa: B027 - an optional hook, empty by default
        """Raise `SetupError` if this machine lacks what the spec asks of this provider."""

    def unavailable(self) -> str | None:
        """Why this endpoint cannot be called here, or None. By default: its API key
        variable (``api_key_env``) is unset."""
        key_env = self.config.api_key_env
        if key_env and not os.environ.get(key_env):
            return f"{key_env} is not set"
        return None

    def batch_unsupported(self) -> str | None:
        """Why this endpoint cannot take ``mode: batch`` (SPEC §13), or None when it can
        (the provider implements `providers.batch.BatchAPI`)."""
        return f"{self.type_name} has no batch API"

    def api_for(self, request: ProviderRequest) -> str | None:
        """The API `request` goes to, where the endpoint offers more than one."""
        return None

    def cache_parts(self) -> dict[str, Any]:
        """What else shapes the answer besides the request (options sent with every
        call): part of the request hash and the cache key."""
        return {}

    def connection_key(self) -> str:
        key_env = self.config.api_key_env
        identity = content_hash(os.environ.get(key_env) or "", 8) if key_env else "-"
        return f"{self.type_name}:{self.config.base_url or self.endpoint}:{identity}"

    def rate_limits(self) -> tuple[int | None, int | None]:
        """(rpm, tpm) to start from: the spec's, else the provider's published new-account
        tier on its own URL, else none (a self-hosted server or gateway: concurrency
        only, until its headers or a 429 say otherwise)."""
        official = self.official_url()
        return (
            self.config.rpm or (self.default_rpm if official else None),
            self.config.tpm or (self.default_tpm if official else None),
        )

    def spec_limits(self) -> tuple[int | None, int | None]:
        """The spec's own rpm/tpm: learned limits never go above them."""
        return self.config.rpm, self.config.tpm

    def official_url(self) -> bool:
        """Whether calls go to the provider's own API (no base_url in the spec or the
        SDK's environment variable)."""
        env = self.base_url_env
        return self.config.base_url is None and not (env and os.environ.get(env))

    def max_concurrency(self) -> int:
        return self.config.concurrency or self.default_concurrency

    def tokenizer(self, model: str) -> Tokenizer:
        return CharEstimateTokenizer()

    def context_window(self, model: str) -> int | None:
        return None

    @property
    def label(self) -> str:
        return f"{self.endpoint}/{self.model}" if self.model else self.endpoint

    def where(self) -> str:
        """The address this provider's calls go to, for messages: its base URL, else the
        endpoint's name."""
        return self.config.base_url or self.endpoint

    def load(self) -> None:  # noqa: B027 - an optional hook, empty by default
        """Blocking set-up before the first call (runs in a worker thread)."""

    async def aclose(self) -> None:  # noqa: B027
        """Release clients and models after the last call."""
