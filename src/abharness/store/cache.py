"""The response cache: one DuckDB file (``cache.duckdb`` beside the results database).

The key covers the provider type, endpoint, model, the exact messages or prompt,
every sampling parameter, and the repeat index (so repeat k reuses repeat k of an
earlier run and a run's repeats stay independent samples). Sampling at temperature > 0
without a seed is never cached: it is meant to differ. A hit copies the stored response
and its token counts, costs 0 and is excluded from latency statistics.

Only runs open this file, so an analyst's connection to the results database never
blocks a lookup; if another run holds it, this run goes on without the cache and says so.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import duckdb

from ..hashing import content_hash
from .records import USAGE_FIELDS, CallRecord

COLUMNS = (
    "response_text",
    "finish_reason",
    *USAGE_FIELDS,
    "provider_metrics_json",
    "source_call_id",
)


def cache_key(parts: dict[str, Any], temperature: float | None, seed: int | None) -> str | None:
    if (temperature is None or temperature > 0) and seed is None:
        return None
    return content_hash(parts, 32)


class ResponseCache:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._con = duckdb.connect(str(path))
        self._lock = threading.Lock()
        self._con.execute(f"""
            CREATE TABLE IF NOT EXISTS response_cache (
                cache_key VARCHAR PRIMARY KEY, created_at TIMESTAMP DEFAULT now(),
                {", ".join(f"{c} {'INTEGER' if c.endswith('tokens') else 'VARCHAR'}" for c in COLUMNS)}
            )""")

    def get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._con.execute(
                f"SELECT {', '.join(COLUMNS)} FROM response_cache WHERE cache_key = ?", [key]
            ).fetchone()
        return dict(zip(COLUMNS, row, strict=True)) if row else None

    def put(self, key: str, record: CallRecord) -> None:
        values = [
            record.response_text,
            record.finish_reason,
            *(getattr(record.usage, name) for name in USAGE_FIELDS),
            record.provider_metrics_json,
            record.call_id,
        ]
        with self._lock:
            self._con.execute(
                f"INSERT OR REPLACE INTO response_cache (cache_key, {', '.join(COLUMNS)}) "
                f"VALUES (?, {', '.join('?' * len(COLUMNS))})",
                [key, *values],
            )

    def close(self) -> None:
        with self._lock:
            self._con.close()


def open_cache(path: Path) -> tuple[ResponseCache | None, str | None]:
    """The cache, or (None, why not) when another process holds it."""
    try:
        return ResponseCache(path), None
    except duckdb.IOException as exc:
        return (
            None,
            f"response cache {path} is in use by another process ({exc}); running without it",
        )
