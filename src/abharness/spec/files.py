"""Reading the user's files strictly: UTF-8 or a message naming the line and byte, and
YAML without duplicate keys (PyYAML silently keeps the last one; a spec whose
``temperature`` is set twice would run with whichever came last).
"""

from __future__ import annotations

from pathlib import Path

import yaml

from ..errors import InvalidInput


def not_utf8(
    data: bytes,
    exc: UnicodeDecodeError,
    path: Path | str,
    error: type[InvalidInput],
    line_offset: int = 0,
) -> InvalidInput:
    """An `error` naming the line and byte where `data` stops being UTF-8."""
    line = data.count(b"\n", 0, exc.start) + 1 + line_offset
    column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
    bad = data[exc.start : exc.start + 1].hex()
    return error(
        f"not UTF-8: byte 0x{bad} at byte {column} of the line (offset {exc.start}); save the "
        "file as UTF-8",
        file=path,
        line=line,
    )


def read_utf8(path: Path, error: type[InvalidInput]) -> str:
    """The file's text; `error` (naming the file, line and byte) if it is not UTF-8."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise not_utf8(data, exc, path, error) from exc


def check_unique_keys(
    node: yaml.Node | None, path: Path | str, error: type[InvalidInput], line_offset: int = 0
) -> None:
    """Raise `error` at the first mapping that sets a key twice, naming both lines."""
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key, value in node.value:
            name = key.value if isinstance(key, yaml.ScalarNode) else None
            line = key.start_mark.line + 1 + line_offset
            if name is not None and name in seen:
                raise error(
                    f"duplicate key {name!r} (first at line {seen[name]}): YAML would keep "
                    "only the last one; remove one of them",
                    file=path,
                    line=line,
                    key=name,
                )
            if name is not None:
                seen[name] = line
            check_unique_keys(value, path, error, line_offset)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            check_unique_keys(item, path, error, line_offset)
