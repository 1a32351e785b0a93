"""Scorers: each turns (response, case) into a value in [0, 1], a pass/fail and a detail.

One small class per scorer type, registered for its spec model (`registers`):
`build_scorers` picks the class from the spec entry's type, so a new scorer is a spec
model in `spec/models.py` and a class here, nothing else.

``expected`` is a Jinja expression over the case (``"{{ case.answer }}"``), rendered in
the same sandbox as the prompts with strict undefined variables, so a typo in it is an
error at validation, not a silent zero. Everything a scorer needs from outside (a JSON
schema file, a Python function) is loaded when the spec is, and a missing one is a
`SpecError`. A scorer that raises while scoring is recorded as a scorer error (value
and passed null), which counts as not passed; it never stops the run.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from jinja2 import StrictUndefined, TemplateSyntaxError, UndefinedError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from pydantic import BaseModel

from ..errors import SpecError
from ..spec.models import (
    ContainsScorer,
    ExactScorer,
    JsonSchemaScorer,
    JsonValidScorer,
    LlmJudgeScorer,
    NumericScorer,
    PythonScorer,
    RegexScorer,
    ScorerSpec,
    SimilarityScorer,
)
from .python_scorer import load_function

_env = ImmutableSandboxedEnvironment(undefined=StrictUndefined, autoescape=False)
_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?")
_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL)


@dataclass(frozen=True)
class Score:
    scorer: str
    value: float
    passed: bool
    detail: str


class Scorer:
    """Base of every scorer: `expected` renders the spec's ``expected`` for a case;
    subclasses implement `score`. A judge (`is_judge`) is scored by the runner, which
    makes the judge's call and hands its answer to `judge_score`."""

    is_judge: ClassVar[bool] = False

    def __init__(self, spec: Any, name: str, base_dir: Path) -> None:
        self.spec = spec
        self.name = name
        self._templates: list[Any] = []
        expected = getattr(spec, "expected", None)
        for source in [expected] if isinstance(expected, str) else (expected or []):
            try:
                self._templates.append(_env.from_string(source))
            except TemplateSyntaxError as exc:
                raise SpecError(
                    f"scorer {name}: expected is not valid Jinja: {exc.message}"
                ) from exc

    def expected(self, case: dict[str, Any]) -> list[str]:
        try:
            return [t.render(case=case, **case) for t in self._templates]
        except UndefinedError as exc:
            raise SpecError(f"scorer {self.name}: expected: {exc.message}") from exc

    def check(self, case: dict[str, Any]) -> None:
        """Raise `SpecError` now if this scorer cannot be evaluated for `case`."""
        self.expected(case)

    def score(self, response: str, case: dict[str, Any]) -> Score:
        raise NotImplementedError

    def judge_score(self, answer: str) -> Score:
        raise NotImplementedError

    def _result(self, ok: bool, detail: str) -> Score:
        return Score(self.name, float(ok), ok, detail)


_REGISTRY: dict[type[BaseModel], type[Scorer]] = {}
S = TypeVar("S", bound=type[Scorer])


def registers(spec_model: type[BaseModel]) -> Callable[[S], S]:
    """Class decorator: this scorer class implements `spec_model`'s entries."""

    def register(cls: S) -> S:
        _REGISTRY[spec_model] = cls
        return cls

    return register


@registers(ExactScorer)
class Exact(Scorer):
    def score(self, response: str, case: dict[str, Any]) -> Score:
        got, wanted = response, self.expected(case)[0]
        if self.spec.ignore_case:
            got, wanted = got.casefold(), wanted.casefold()
        if self.spec.strip:
            got, wanted = got.strip(), wanted.strip()
        ok = got == wanted
        return self._result(ok, f"equals {wanted!r}: {'yes' if ok else 'no'}")


@registers(ContainsScorer)
class Contains(Scorer):
    def score(self, response: str, case: dict[str, Any]) -> Score:
        got, wanted = response, self.expected(case)
        if self.spec.ignore_case:
            got, wanted = got.casefold(), [w.casefold() for w in wanted]
        hits = [w for w in wanted if w in got]
        every = self.spec.match == "all"
        ok = len(hits) == len(wanted) if every else bool(hits)
        if len(wanted) == 1:
            return self._result(ok, f"contains {wanted[0]!r}: {'yes' if ok else 'no'}")
        return Score(
            self.name,
            len(hits) / len(wanted) if every else float(ok),
            ok,
            f"contains {len(hits)} of {len(wanted)} ({self.spec.match}): {hits}",
        )


@registers(RegexScorer)
class Regex(Scorer):
    def __init__(self, spec: Any, name: str, base_dir: Path) -> None:
        super().__init__(spec, name, base_dir)
        try:
            self._regex = re.compile(spec.pattern, re.IGNORECASE if spec.ignore_case else 0)
        except re.error as exc:
            raise SpecError(f"scorer {name}: invalid regex: {exc}") from exc

    def score(self, response: str, case: dict[str, Any]) -> Score:
        m = self._regex.search(response)
        return self._result(bool(m), f"matched {m.group(0)!r}" if m else "no match")


@registers(JsonValidScorer)
class JsonValid(Scorer):
    def score(self, response: str, case: dict[str, Any]) -> Score:
        try:
            value = _json_from(response, self.spec.extract)
        except json.JSONDecodeError as exc:
            return self._result(False, f"not JSON: {exc.msg} at column {exc.colno}")
        return self._check(value)

    def _check(self, value: Any) -> Score:
        return self._result(True, "valid JSON")


@registers(JsonSchemaScorer)
class JsonSchema(JsonValid):
    def __init__(self, spec: Any, name: str, base_dir: Path) -> None:
        super().__init__(spec, name, base_dir)
        self._validator = _load_schema(spec.schema_, base_dir, name)

    def _check(self, value: Any) -> Score:
        errors = sorted(self._validator.iter_errors(value), key=lambda e: list(e.path))
        if errors:
            where = "/".join(str(p) for p in errors[0].path) or "(root)"
            return self._result(
                False, f"{len(errors)} schema error(s); first at {where}: {errors[0].message}"
            )
        return self._result(True, "matches the schema")


@registers(NumericScorer)
class Numeric(Scorer):
    def score(self, response: str, case: dict[str, Any]) -> Score:
        wanted = self.expected(case)[0]
        try:
            target = float(wanted.replace(",", ""))
        except ValueError as exc:
            raise ValueError(f"expected {wanted!r} is not a number") from exc
        m = _NUMBER.search(response)
        if not m:
            return self._result(False, "no number in the response")
        got = float(m.group(0).replace(",", ""))
        ok = math.isclose(got, target, rel_tol=self.spec.rel_tol, abs_tol=self.spec.abs_tol)
        return self._result(ok, f"{got:g} vs expected {target:g}")


@registers(SimilarityScorer)
class Similarity(Scorer):
    def score(self, response: str, case: dict[str, Any]) -> Score:
        from rapidfuzz import fuzz

        a, b = response.strip(), self.expected(case)[0].strip()
        if self.spec.ignore_case:
            a, b = a.casefold(), b.casefold()
        ratio = fuzz.ratio(a, b) / 100
        threshold = self.spec.threshold
        return Score(
            self.name, ratio, ratio >= threshold, f"similarity {ratio:.3f} (threshold {threshold})"
        )


@registers(PythonScorer)
class Python(Scorer):
    def __init__(self, spec: Any, name: str, base_dir: Path) -> None:
        super().__init__(spec, name, base_dir)
        self._function = load_function(spec.function, base_dir, name, spec.trusted)

    def score(self, response: str, case: dict[str, Any]) -> Score:
        result = self._function(response, case)
        detail = ""
        if isinstance(result, tuple):
            result, detail = result
        value = float(result)
        if not 0 <= value <= 1:
            raise ValueError(f"{self.spec.function} returned {value}, expected a value in [0, 1]")
        return Score(self.name, value, value >= self.spec.threshold, detail or f"{value:g}")


@registers(LlmJudgeScorer)
class LlmJudge(Scorer):
    """Graded by a judge model: the runner makes the call (`Plan.judges`), this parses it."""

    is_judge = True

    def score(self, response: str, case: dict[str, Any]) -> Score:
        raise RuntimeError("llm_judge scores come from the runner's judge call")

    def judge_score(self, answer: str) -> Score:
        low, high = self.spec.scale
        value = parse_judge_score(answer, low, high)
        if value is None:
            raise ValueError(
                f"no score in {low:g}..{high:g} in the judge's answer: {answer[:120]!r}"
            )
        return Score(
            self.name,
            value,
            value >= self.spec.threshold,
            f"judge: {value * (high - low) + low:g} on {low:g}..{high:g}",
        )


def _json_from(response: str, extract: bool) -> Any:
    text = response.strip()
    if extract:
        fenced = _FENCE.search(text)
        if fenced:
            text = fenced.group(1).strip()
        else:
            start = min((i for i in (text.find("{"), text.find("[")) if i >= 0), default=-1)
            end = max(text.rfind("}"), text.rfind("]"))
            if start >= 0 and end > start:
                text = text[start : end + 1]
    return json.loads(text)


def _load_schema(schema: dict[str, Any] | str, base_dir: Path, name: str) -> Any:
    from jsonschema import Draft202012Validator, SchemaError, validators

    if isinstance(schema, str):
        path = base_dir / schema
        try:
            schema = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise SpecError(f"scorer {name}: schema file not found: {path}") from exc
        except json.JSONDecodeError as exc:
            raise SpecError(
                f"scorer {name}: schema {path} is not JSON: {exc.msg} at line {exc.lineno}"
            ) from exc
    cls = validators.validator_for(schema, default=Draft202012Validator)
    try:
        cls.check_schema(schema)
    except SchemaError as exc:
        raise SpecError(f"scorer {name}: invalid JSON schema: {exc.message}") from exc
    return cls(schema)


def build_scorers(specs: list[ScorerSpec], base_dir: Path | None = None) -> list[Scorer]:
    """One scorer per spec entry, of the class registered for its type; names are the
    entry's `name`, else its type (``_2``... on repeats)."""
    out: list[Scorer] = []
    used: set[str] = set()
    for spec in specs:
        name = spec.name or spec.type
        base, n = name, 2
        while name in used:
            name, n = f"{base}_{n}", n + 1
        used.add(name)
        out.append(_REGISTRY[type(spec)](spec, name, base_dir or Path.cwd()))
    return out


_JUDGE_PATTERNS = (
    re.compile(
        r"(?:score|rating|grade)\s*(?:is|of)?\s*[:=]?\s*\**\s*([-+]?\d+(?:\.\d+)?)", re.IGNORECASE
    ),
    re.compile(r"([-+]?\d+(?:\.\d+)?)\s*(?:/|out of)\s*\d+", re.IGNORECASE),
    re.compile(r"(?<![\w.])([-+]?\d+(?:\.\d+)?)(?![\w.])"),
)


def parse_judge_score(text: str, low: float, high: float) -> float | None:
    """The judge's score normalised to [0, 1], or None if it gave none in range.

    Tried in order: an explicit "Score: 7" (or rating/grade), then "7/10" or "7 out of
    10", then the first bare number; the first candidate inside [low, high] wins."""
    for pattern in _JUDGE_PATTERNS:
        for m in pattern.finditer(text):
            value = float(m.group(1))
            if low <= value <= high:
                return (value - low) / (high - low) if high > low else 1.0
    return None
