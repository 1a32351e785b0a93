"""Datasets: the cases of an experiment, from JSONL, CSV or an inline list.

A case is a flat mapping of template variables. ``id`` (optional) names it; without
one, the id is a hash of its content, so it is stable across runs and file order.
``expected`` (optional) is stored apart as the case's expected answer; everything is
also available to templates and scorers as ``case``.

Cases are streamed: `iter_cases` re-reads the file each time, so memory does not
grow with the dataset. `check_dataset` reads it once to find the first bad line.

Files must be UTF-8 (the error names the line and byte), a JSON object must not set a
key twice, and a case is at most `MAX_FIELD_BYTES` per field and `MAX_CASE_BYTES` in
all (UTF-8): every call stores its prompt, so a case past that would not fit the
run's staging store, and a resume would fail the same way every time.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import DatasetError
from ..hashing import content_hash
from .files import not_utf8

MAX_FIELD_BYTES = 4 * 1024 * 1024
MAX_CASE_BYTES = 8 * 1024 * 1024


def _megabytes(n: int) -> str:
    return f"{n / 1024 / 1024:.1f} MB"


@dataclass(frozen=True)
class Case:
    id: str
    data: dict[str, Any]  # every field, for templates (`case.x` and `x`) and scorers
    line: int | None = None  # 1-based line in the file; None for inline cases

    @property
    def vars(self) -> dict[str, Any]:
        return {k: v for k, v in self.data.items() if k not in ("id", "expected")}

    @property
    def expected(self) -> Any:
        return self.data.get("expected")

    def template_vars(self) -> dict[str, Any]:
        return {**self.data, "case": self.data}


def _case(raw: Any, source: Path | str, line: int | None) -> Case:
    if not isinstance(raw, dict):
        raise DatasetError(
            f"expected a JSON object per case, got {type(raw).__name__}", file=source, line=line
        )
    total = 0
    for key, value in raw.items():
        size = len(value.encode("utf-8")) if isinstance(value, str) else len(json.dumps(value))
        total += size
        if size > MAX_FIELD_BYTES:
            raise DatasetError(
                f"case {raw.get('id', '')!s:.40}: field {key!r} is {_megabytes(size)}; a field "
                f"may hold at most {_megabytes(MAX_FIELD_BYTES)} (a case "
                f"{_megabytes(MAX_CASE_BYTES)})",
                file=source,
                line=line,
                key=str(key),
            )
    if total > MAX_CASE_BYTES:
        raise DatasetError(
            f"case {raw.get('id', '')!s:.40} is {_megabytes(total)}; a case may hold at most "
            f"{_megabytes(MAX_CASE_BYTES)} in all its fields",
            file=source,
            line=line,
        )
    raw_id = raw.get("id")
    if raw_id is not None and not isinstance(raw_id, (str, int)):
        raise DatasetError("'id' must be a string or an integer", file=source, line=line, key="id")
    case_id = str(raw_id) if raw_id is not None else content_hash(raw, 12)
    return Case(case_id, dict(raw), line)


def iter_cases(
    path: Path | None = None,
    inline: list[dict[str, Any]] | None = None,
    spec_file: Path | str = "spec",
) -> Iterator[Case]:
    """Yield cases one at a time; raise `DatasetError` at the first bad one."""
    if inline is not None:
        for i, raw in enumerate(inline):
            yield _case(raw, f"{spec_file} cases[{i}]", None)
        return
    assert path is not None
    if path.suffix.lower() == ".csv":
        with path.open("rb") as f:
            reader = csv.DictReader(_decoded(f, path))
            if not reader.fieldnames:
                raise DatasetError("CSV file has no header row", file=path, line=1)
            for row in reader:
                if None in row:
                    raise DatasetError(
                        f"more fields than the {len(reader.fieldnames)} header columns",
                        file=path,
                        line=reader.line_num,
                    )
                yield _case(row, path, reader.line_num)
        return
    with path.open("rb") as f:
        for n, text in enumerate(_decoded(f, path), start=1):
            if not text.strip():
                continue
            try:
                raw = json.loads(text, object_pairs_hook=_unique_keys)
            except json.JSONDecodeError as exc:
                raise DatasetError(
                    f"malformed JSON: {exc.msg} at column {exc.colno}", file=path, line=n
                ) from exc
            except _DuplicateKey as exc:
                raise DatasetError(
                    f"key {exc.key!r} appears twice in this object: JSON would keep only the "
                    "last; remove one",
                    file=path,
                    line=n,
                    key=exc.key,
                ) from None
            yield _case(raw, path, n)


class _DuplicateKey(Exception):
    def __init__(self, key: str) -> None:
        self.key = key


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _decoded(lines: Iterator[bytes] | Any, path: Path) -> Iterator[str]:
    """A binary file's lines as text; a line that is not UTF-8 is a `DatasetError` naming
    the line and byte (a bare decode error names neither)."""
    for n, raw in enumerate(lines, start=1):
        try:
            yield raw.decode("utf-8").removeprefix("\ufeff") if n == 1 else raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise not_utf8(raw, exc, path, DatasetError, line_offset=n - 1) from exc


def check_dataset(
    path: Path | None,
    inline: list[dict[str, Any]] | None,
    spec_file: Path | str,
    cluster: str | None = None,
) -> int:
    """Read every case once; return how many there are. Duplicate ids are an error, and
    so is a case without the `cluster` field when the spec names one."""
    seen: dict[str, int | None] = {}
    for case in iter_cases(path, inline, spec_file):
        if cluster is not None and case.data.get(cluster) in (None, ""):
            raise DatasetError(
                f"case {case.id!r} has no {cluster!r}: the spec's `cluster` field must be set "
                "on every case",
                file=path or spec_file,
                line=case.line,
                key=cluster,
            )
        if case.id in seen:
            where = f" (first at line {seen[case.id]})" if seen[case.id] else ""
            raise DatasetError(
                f"duplicate case id {case.id!r}{where}", file=path or spec_file, line=case.line
            )
        seen[case.id] = case.line
    if not seen:
        raise DatasetError("the dataset has no cases", file=path or spec_file)
    return len(seen)
