"""The errors abharness raises, as one tree.

    AbharnessError
    ├── InvalidInput             exit 1: a spec, dataset or template is wrong; nothing written
    │   ├── SpecError            the experiment YAML (file, key path, line)
    │   ├── DatasetError         a JSONL/CSV dataset (file, line)
    │   ├── TemplateError        a prompt template (file, line)
    │   ├── PromptChangedError   name@N's content differs from what the database recorded
    │   ├── SetupError           what the spec needs is missing here: an API key, a model
    │   │                        file, the `local` extra
    │   └── DatabaseRefused      the database file is not one abharness can use: not DuckDB,
    │                            corrupt, someone else's tables, a newer schema
    ├── EnvironmentFailure       exit 5: the machine refused (disk full, read-only folder,
    │   │                        permission denied); the message says where the data is
    │   └── StoreWriteError      the run's staging file could not be written
    └── CallError                one call failed; recorded as an `error` row, never fatal
        ├── RateLimitError       rate_limit
        ├── TimeoutError_        timeout
        ├── ConnectionError_     connection
        ├── ServerError          server
        ├── AuthError            auth
        ├── BadRequestError      bad_request
        ├── ContextLengthError   context_length
        ├── ContentFilterError   content_filter
        ├── BudgetError          budget
        └── OtherCallError       other

Third-party exceptions are mapped to a `CallError` once, at each provider's boundary,
with ``raise ... from exc``; the runner only ever sees this tree.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

ERROR_TYPES = (
    "rate_limit",
    "timeout",
    "connection",
    "server",
    "auth",
    "bad_request",
    "context_length",
    "content_filter",
    "budget",
    "other",
)


class AbharnessError(Exception):
    """Base of every error abharness raises on purpose."""


class InvalidInput(AbharnessError):
    """Bad user input, found before any call is made or anything is written.

    The message reads ``<file>[:<line>]: [<key path>: ]<what is wrong>``.
    """

    def __init__(
        self,
        message: str,
        *,
        file: str | Path | None = None,
        line: int | None = None,
        key: str | None = None,
    ) -> None:
        self.file = str(file) if file is not None else None
        self.line = line
        self.key = key
        self.problem = message
        where = self.file or ""
        if where and line is not None:
            where += f":{line}"
        parts = [p for p in (where, key) if p]
        super().__init__(": ".join([*parts, message]))


class SpecError(InvalidInput):
    pass


class DatasetError(InvalidInput):
    pass


class TemplateError(InvalidInput):
    pass


class PromptChangedError(InvalidInput):
    pass


class SetupError(InvalidInput):
    """The spec is well formed but this machine cannot run (part of) it; the message
    says what to install or set."""


class DatabaseRefused(InvalidInput):
    """The database file is not one abharness can read or write: checked before any call."""


class EnvironmentFailure(AbharnessError):
    """The machine refused what abharness needed (disk full, a read-only folder, a
    permission). The message is one line that says what failed and where the data is
    now (``state``), so the user knows what is safe and what to run next."""

    def __init__(self, problem: str, state: str = "") -> None:
        self.problem = problem
        self.state = state
        super().__init__(f"{problem}; {state}" if state else problem)


class StoreWriteError(EnvironmentFailure):
    """The run's staging file could not be written: the run stopped; what was written
    before the failure is kept and the run can be resumed."""

    resume: str | None = None  # the command that resumes the run


class CallError(AbharnessError):
    """One call failed. ``error_type`` is one of `ERROR_TYPES`.

    ``retry_after_s`` carries the provider's Retry-After hint when it gave one, and
    ``status_code``/``request_id`` what the provider said, for the runner's retry policy.
    """

    error_type = "other"
    retryable = False
    rate_limits: Any = None  # the server's rate-limit headers on this error, if it sent them

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        retry_after_s: float | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.retry_after_s = retry_after_s
        self.request_id = request_id


class RateLimitError(CallError):
    error_type = "rate_limit"
    retryable = True


class TimeoutError_(CallError):  # noqa: N801 - avoid shadowing the builtin
    error_type = "timeout"
    retryable = True


class ConnectionError_(CallError):  # noqa: N801
    error_type = "connection"
    retryable = True


class ServerError(CallError):
    error_type = "server"
    retryable = True


class AuthError(CallError):
    error_type = "auth"


class BadRequestError(CallError):
    error_type = "bad_request"


class ContextLengthError(CallError):
    error_type = "context_length"


class ContentFilterError(CallError):
    error_type = "content_filter"


class BudgetError(CallError):
    error_type = "budget"


class OtherCallError(CallError):
    error_type = "other"


def error_type_of(exc: BaseException) -> str:
    """The SPEC `error_type` for any exception that ends a call."""
    if isinstance(exc, CallError):
        return exc.error_type
    if isinstance(exc, TimeoutError):  # asyncio.TimeoutError is TimeoutError on 3.11
        return "timeout"
    if isinstance(exc, ConnectionError):
        return "connection"
    return "other"
