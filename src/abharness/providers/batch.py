"""What a provider's batch API (SPEC §13) looks like to the runner.

A provider that has one (OpenAI's Batch API, Anthropic's Message Batches) implements
`BatchAPI`: it turns a request into one line of a batch (`batch_line`, keyed by the
call's id as ``custom_id``), submits lines (`batch_submit`), reports a batch's state in
the words both share (`batch_status`), streams its results in whatever order they come
(`batch_results`), cancels it (`batch_cancel`), and finds a batch by the metadata it
was submitted with (`batch_find`) — for a process killed between the provider's
answer and writing the batch's id down.

States, the same for both: ``validating``, ``in_progress``, ``finalizing``,
``cancelling`` (still running); ``ended`` (results ready, possibly with expired or
failed requests), ``failed`` (refused as a whole: `BatchState.error` says why, e.g.
its first bad line), ``expired`` (the window passed; finished results are still
there), ``cancelled``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from ..errors import CallError
from .base import ProviderRequest, ProviderResponse

RUNNING = ("validating", "in_progress", "finalizing", "cancelling")
ENDED = ("ended", "failed", "expired", "cancelled")


@dataclass
class BatchState:
    id: str
    status: str  # one of RUNNING or ENDED
    counts: dict[str, int] = field(default_factory=dict)  # the provider's, by its names
    error: str | None = None  # why a batch failed as a whole
    results: Any = None  # what `batch_results` needs: output/error file ids, a results URL
    created_at: float | None = None  # epoch seconds, the provider's clock
    ended_at: float | None = None

    @property
    def running(self) -> bool:
        return self.status in RUNNING

    def describe(self) -> str:
        counts = ", ".join(f"{n} {k}" for k, n in self.counts.items() if n)
        return f"{self.status}" + (f" ({counts})" if counts else "")


@dataclass
class BatchItem:
    """One request's outcome: a response, or an error (a request the batch's window
    passed before it ran is a `TimeoutError_`: retried in a new batch, like the other
    retryable errors)."""

    custom_id: str
    response: ProviderResponse | None = None
    error: CallError | None = None


@runtime_checkable
class BatchAPI(Protocol):
    # (requests, bytes) one batch may hold, as the provider documents
    batch_limits: tuple[int, int]

    def batch_group(self, request: ProviderRequest) -> str:
        """Requests that may share a batch have the same group (OpenAI: one endpoint
        per batch)."""

    def batch_line(self, custom_id: str, request: ProviderRequest) -> dict[str, Any]:
        """The request as one line of a batch."""

    async def batch_submit(
        self, group: str, lines: list[bytes], metadata: dict[str, str]
    ) -> BatchState:
        """Submit JSON lines (each one `batch_line`, encoded) as one batch."""

    async def batch_status(self, batch_id: str) -> BatchState: ...

    def batch_results(self, state: BatchState) -> AsyncIterator[BatchItem]:
        """Every result of an ended batch, in the provider's order."""

    async def batch_cancel(self, batch_id: str) -> BatchState: ...

    async def batch_find(
        self, metadata: dict[str, str], created_after: float, count: int
    ) -> BatchState | None:
        """The batch submitted with `metadata` (of `count` requests, at `created_after`
        or later), if the provider has it."""


def batch_url_unsupported(provider: Any) -> str | None:
    """For a provider with a batch API: None on its own URL, or on a custom ``base_url``
    whose entry says ``batch_api: true``; else why not."""
    if provider.config.batch_api or (provider.config.batch_api is None and provider.official_url()):
        return None
    where = provider.config.base_url or f"${provider.base_url_env}"
    return (
        f"{where} is not {provider.type_name}'s own API, and its entry does not say "
        "batch_api: true (say so if that server offers the batch API)"
    )
