"""A word-level diff of two outputs, for the case page: which words one arm's answer
drops and adds against another's."""

from __future__ import annotations

import difflib
import re

TOKENS = re.compile(r"\s+|[^\s]+")
MAX_TOKENS = 20_000  # past this, the answers are shown whole, not diffed


def word_diff(before: str | None, after: str | None) -> list[tuple[str, str]]:
    """`after` against `before` as segments (op, text), op one of ``same``, ``del``
    (in `before` only) and ``add`` (in `after` only); whitespace stays with its words."""
    old, new = TOKENS.findall(before or ""), TOKENS.findall(after or "")
    if len(old) + len(new) > MAX_TOKENS:
        return [("del", before or ""), ("add", after or "")]
    out: list[tuple[str, str]] = []
    matcher = difflib.SequenceMatcher(None, old, new, autojunk=False)
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        if op == "equal":
            out.append(("same", "".join(old[i1:i2])))
            continue
        if i2 > i1:
            out.append(("del", "".join(old[i1:i2])))
        if j2 > j1:
            out.append(("add", "".join(new[j1:j2])))
    return out
