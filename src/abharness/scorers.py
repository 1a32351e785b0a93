"""Scorers: each turns (response, case) into a value in [0, 1], a pass/fail and a detail.

``expected`` is a Jinja expression over the case (``"{{ case.answer }}"``), rendered in
the same sandbox as the prompts with strict undefined variables, so a typo in it is an
error at validation, not a silent zero.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from jinja2 import StrictUndefined, TemplateSyntaxError, UndefinedError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from .errors import SpecError
from .spec import ContainsScorer, ExactScorer, RegexScorer, ScorerSpec

_env = ImmutableSandboxedEnvironment(undefined=StrictUndefined, autoescape=False)


@dataclass(frozen=True)
class Score:
    scorer: str
    value: float
    passed: bool
    detail: str


class Scorer:
    def __init__(self, spec: Any, name: str) -> None:
        self.spec = spec
        self.name = name
        self._expected = None
        if hasattr(spec, "expected"):
            try:
                self._expected = _env.from_string(spec.expected)
            except TemplateSyntaxError as exc:
                raise SpecError(
                    f"scorer {name}: expected is not valid Jinja: {exc.message}"
                ) from exc

    def expected(self, case: dict[str, Any]) -> str:
        assert self._expected is not None
        try:
            return self._expected.render(case=case, **case)
        except UndefinedError as exc:
            raise SpecError(f"scorer {self.name}: expected: {exc.message}") from exc

    def check(self, case: dict[str, Any]) -> None:
        """Raise `SpecError` now if this scorer cannot be evaluated for `case`."""
        if self._expected is not None:
            self.expected(case)

    def score(self, response: str, case: dict[str, Any]) -> Score:
        spec = self.spec
        if isinstance(spec, RegexScorer):
            flags = re.IGNORECASE if spec.ignore_case else 0
            m = re.search(spec.pattern, response, flags)
            return Score(
                self.name, float(bool(m)), bool(m), f"matched {m.group(0)!r}" if m else "no match"
            )
        want = self.expected(case)
        got = response
        if spec.ignore_case:
            want, got = want.casefold(), got.casefold()
        if isinstance(spec, ExactScorer):
            if spec.strip:
                want, got = want.strip(), got.strip()
            ok = got == want
        else:
            assert isinstance(spec, ContainsScorer)
            ok = want in got
        verb = "equals" if isinstance(spec, ExactScorer) else "contains"
        return Score(self.name, float(ok), ok, f"{verb} {want!r}: {'yes' if ok else 'no'}")


def build_scorers(specs: list[ScorerSpec]) -> list[Scorer]:
    """One `Scorer` per spec entry; names are the entry's `name`, else its type (``_2``... on repeats)."""
    out: list[Scorer] = []
    used: set[str] = set()
    for spec in specs:
        name = spec.name or spec.type
        if isinstance(spec, RegexScorer):
            try:
                re.compile(spec.pattern)
            except re.error as exc:
                raise SpecError(f"scorer regex: invalid pattern: {exc}") from exc
        base, n = name, 2
        while name in used:
            name, n = f"{base}_{n}", n + 1
        used.add(name)
        out.append(Scorer(spec, name))
    return out
