"""Typed records: the single source of the ``calls`` and ``scores`` columns.

The runner fills one `CallRecord` per call and one `ScoreRecord` per scorer; the store
inserts them by field name. ``tests/test_store.py`` checks that the fields and the
tables' columns are the same set, so a column cannot be added in one place only.
`Usage` is the one definition of the token counts: the provider's answer carries one,
a record holds one, and every column list (``calls``, the response cache, pricing)
derives its token columns from its fields.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from operator import attrgetter
from typing import Any


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts exactly as the provider reported them; None when it reported none
    (never a guess). ``input_tokens`` includes cached input tokens, of which
    ``cache_read_tokens`` and ``cache_write_tokens`` are parts."""

    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_read_tokens: int | None = None
    cache_write_tokens: int | None = None
    reasoning_tokens: int | None = None

    @property
    def reported(self) -> bool:
        return self.input_tokens is not None or self.output_tokens is not None


USAGE_FIELDS = tuple(f.name for f in fields(Usage))


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


@dataclass(slots=True)
class CallRecord:
    """One row of ``calls``: what happened to one call, good or bad."""

    call_id: str
    run_id: str
    arm_id: str
    case_id: str
    repeat: int
    status: str = "error"  # 'ok' | 'error'
    error_type: str | None = None
    error_message: str | None = None
    attempts: int = 0
    started_at: datetime = field(default_factory=_now)
    latency_ms: float | None = None  # the last attempt, from sending to the full response
    ttft_ms: float | None = None
    queue_ms: float | None = None  # all waiting before the first attempt left
    usage: Usage = field(default_factory=Usage)  # one column per field (USAGE_FIELDS)
    est_input_tokens: int | None = None
    est_method: str | None = None
    truncated_json: str | None = None
    cost_usd: float | None = None
    price_source: str | None = None
    cache_hit: bool = False
    request_hash: str | None = None
    prompt_text: str | None = None
    response_text: str | None = None
    finish_reason: str | None = None
    provider_metrics_json: str | None = None
    judged_call_id: str | None = None  # on a judge's call: the call it graded
    request_id: str | None = None  # the provider's id for the (last) request
    served_model: str | None = None  # the model the server says it used
    attempt_errors_json: str | None = None  # each failed attempt: [{attempt, error_type, message}]
    usage_source: str | None = None  # final_chunk | body | missing | proxy_estimate | cache
    unfinished: bool = False  # ended because its endpoint or model went down: resume makes it
    role: str = "arm"  # arm | judge | member | synthesizer
    parent_call_id: str | None = None  # a panel part's: the panel's call
    served_by: str | None = None  # a route arm's: provider:model of the route that answered
    subject_hash: str | None = None  # online: keyed SHA-256 of the request's subject
    assignment: str | None = None  # online: assigned | shadow | fallback

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def made(self) -> bool:
        """Whether the call has its outcome: attempted to the end, answered from the
        cache, or refused as too long for the model before sending (a real outcome of
        the prompt). A call never made (cost cap, an endpoint or model that stopped) or
        left unfinished when its endpoint went down is missing data: not an error, not
        in the error rate; resume makes it. Same rule as `MADE_SQL`."""
        return not self.unfinished and (
            self.attempts > 0 or self.cache_hit or self.error_type == "context_length"
        )

    def fail(self, error_type: str, message: str) -> None:
        self.status, self.error_type, self.error_message = "error", error_type, message

    @classmethod
    def from_columns(cls, values: dict[str, Any]) -> CallRecord:
        """A record from its columns (a row read back, a journal line)."""
        usage = Usage(**{name: values.pop(name, None) for name in USAGE_FIELDS})
        return cls(**values, usage=usage)

    def add_attempt_error(self, error_type: str, message: str, status_code: int | None) -> None:
        errors = json.loads(self.attempt_errors_json) if self.attempt_errors_json else []
        entry: dict[str, Any] = {"attempt": self.attempts, "error_type": error_type}
        if status_code is not None:
            entry["status_code"] = status_code
        errors.append({**entry, "message": message})
        self.attempt_errors_json = json.dumps(errors, ensure_ascii=False)


@dataclass(slots=True)
class ScoreRecord:
    """One row of ``scores``: one scorer's verdict on one call (value and passed null
    when the scorer itself failed)."""

    call_id: str
    run_id: str
    scorer: str
    value: float | None
    passed: bool | None
    detail: str


def _call_columns() -> tuple[tuple[str, str], ...]:
    """(column, attribute path) in table order: the usage fields stand for `usage`."""
    out: list[tuple[str, str]] = []
    for f in fields(CallRecord):
        if f.name == "usage":
            out += [(name, f"usage.{name}") for name in USAGE_FIELDS]
        else:
            out.append((f.name, f.name))
    return tuple(out)


_CALL_PATHS = _call_columns()
CALL_COLUMNS = tuple(column for column, _ in _CALL_PATHS)


def made_sql(unfinished_column: bool = True) -> str:
    """`CallRecord.made` in SQL over ``calls``; without the ``unfinished`` column (a
    database from before migration 6, read as it is) no call was left unfinished."""
    made = "(attempts > 0 OR cache_hit OR coalesce(error_type = 'context_length', FALSE))"
    return f"(NOT coalesce(unfinished, FALSE) AND {made})" if unfinished_column else made


MADE_SQL = made_sql()
SCORE_COLUMNS = tuple(f.name for f in fields(ScoreRecord))


_GETTERS = {
    CallRecord: attrgetter(*(path for _, path in _CALL_PATHS)),
    ScoreRecord: attrgetter(*SCORE_COLUMNS),
}


def as_rows(records: list[CallRecord] | list[ScoreRecord]) -> list[tuple[Any, ...]]:
    """Records as tuples in column order (all of one type)."""
    if not records:
        return []
    get = _GETTERS[type(records[0])]
    return [get(r) for r in records]
