"""Scorers: each turns (response, case) into a value in [0, 1], a pass/fail and a detail.

``expected`` is a Jinja expression over the case (``"{{ case.answer }}"``), rendered in
the same sandbox as the prompts with strict undefined variables, so a typo in it is an
error at validation, not a silent zero. Everything a scorer needs from outside (a JSON
schema file, a Python function) is loaded when the spec is, and a missing one is a
`SpecError`. A scorer that raises while scoring is recorded as a scorer error (value
and passed null), which counts as not passed; it never stops the run.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import math
import re
import sys
import sysconfig
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from jinja2 import StrictUndefined, TemplateSyntaxError, UndefinedError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from ..errors import SpecError
from ..hashing import content_hash
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

_env = ImmutableSandboxedEnvironment(undefined=StrictUndefined, autoescape=False)
_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?")
_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL)


@dataclass(frozen=True)
class Score:
    scorer: str
    value: float
    passed: bool
    detail: str


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


class Scorer:
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
        self._validator: Any = None
        self._function: Callable[..., Any] | None = None
        if isinstance(spec, RegexScorer):
            try:
                self._regex = re.compile(spec.pattern, re.IGNORECASE if spec.ignore_case else 0)
            except re.error as exc:
                raise SpecError(f"scorer {name}: invalid regex: {exc}") from exc
        if isinstance(spec, JsonSchemaScorer):
            self._validator = _load_schema(spec.schema_, base_dir, name)
        if isinstance(spec, PythonScorer):
            self._function = _load_function(spec.function, base_dir, name, spec.trusted)

    def expected(self, case: dict[str, Any]) -> list[str]:
        try:
            return [t.render(case=case, **case) for t in self._templates]
        except UndefinedError as exc:
            raise SpecError(f"scorer {self.name}: expected: {exc.message}") from exc

    @property
    def is_judge(self) -> bool:
        """Judged by a model: the runner makes the call and calls `judge_score`."""
        return isinstance(self.spec, LlmJudgeScorer)

    def judge_score(self, answer: str) -> Score:
        spec = self.spec
        low, high = spec.scale
        value = parse_judge_score(answer, low, high)
        if value is None:
            raise ValueError(
                f"no score in {low:g}..{high:g} in the judge's answer: {answer[:120]!r}"
            )
        return Score(
            self.name,
            value,
            value >= spec.threshold,
            f"judge: {value * (high - low) + low:g} on {low:g}..{high:g}",
        )

    def check(self, case: dict[str, Any]) -> None:
        """Raise `SpecError` now if this scorer cannot be evaluated for `case`."""
        self.expected(case)

    def score(self, response: str, case: dict[str, Any]) -> Score:
        spec = self.spec
        if self.is_judge:
            raise RuntimeError("llm_judge scores come from the runner's judge call")
        if isinstance(spec, RegexScorer):
            m = self._regex.search(response)
            return self._result(bool(m), f"matched {m.group(0)!r}" if m else "no match")
        if isinstance(spec, JsonValidScorer | JsonSchemaScorer):
            try:
                value = _json_from(response, spec.extract)
            except json.JSONDecodeError as exc:
                return self._result(False, f"not JSON: {exc.msg} at column {exc.colno}")
            if self._validator is None:
                return self._result(True, "valid JSON")
            errors = sorted(self._validator.iter_errors(value), key=lambda e: list(e.path))
            if errors:
                where = "/".join(str(p) for p in errors[0].path) or "(root)"
                return self._result(
                    False, f"{len(errors)} schema error(s); first at {where}: {errors[0].message}"
                )
            return self._result(True, "matches the schema")
        if isinstance(spec, PythonScorer):
            return self._python(response, case)
        wanted = self.expected(case)
        if isinstance(spec, NumericScorer):
            return self._numeric(response, wanted[0])
        if isinstance(spec, SimilarityScorer):
            from rapidfuzz import fuzz

            a, b = response.strip(), wanted[0].strip()
            if spec.ignore_case:
                a, b = a.casefold(), b.casefold()
            ratio = fuzz.ratio(a, b) / 100
            return Score(
                self.name,
                ratio,
                ratio >= spec.threshold,
                f"similarity {ratio:.3f} (threshold {spec.threshold})",
            )
        got = response
        if spec.ignore_case:
            got, wanted = got.casefold(), [w.casefold() for w in wanted]
        if isinstance(spec, ExactScorer):
            if spec.strip:
                got, wanted = got.strip(), [w.strip() for w in wanted]
            ok = got == wanted[0]
            return self._result(ok, f"equals {wanted[0]!r}: {'yes' if ok else 'no'}")
        assert isinstance(spec, ContainsScorer)
        hits = [w for w in wanted if w in got]
        ok = len(hits) == len(wanted) if spec.match == "all" else bool(hits)
        if len(wanted) == 1:
            return self._result(ok, f"contains {wanted[0]!r}: {'yes' if ok else 'no'}")
        return Score(
            self.name,
            len(hits) / len(wanted) if spec.match == "all" else float(ok),
            ok,
            f"contains {len(hits)} of {len(wanted)} ({spec.match}): {hits}",
        )

    def _result(self, ok: bool, detail: str) -> Score:
        return Score(self.name, float(ok), ok, detail)

    def _numeric(self, response: str, wanted: str) -> Score:
        spec = self.spec
        try:
            target = float(wanted.replace(",", ""))
        except ValueError as exc:
            raise ValueError(f"expected {wanted!r} is not a number") from exc
        m = _NUMBER.search(response)
        if not m:
            return self._result(False, "no number in the response")
        got = float(m.group(0).replace(",", ""))
        ok = math.isclose(got, target, rel_tol=spec.rel_tol, abs_tol=spec.abs_tol)
        return self._result(ok, f"{got:g} vs expected {target:g}")

    def _python(self, response: str, case: dict[str, Any]) -> Score:
        assert self._function is not None
        result = self._function(response, case)
        detail = ""
        if isinstance(result, tuple):
            result, detail = result
        value = float(result)
        if not 0 <= value <= 1:
            raise ValueError(f"{self.spec.function} returned {value}, expected a value in [0, 1]")
        return Score(self.name, value, value >= self.spec.threshold, detail or f"{value:g}")


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


def _is_standard_library(module: ModuleType) -> bool:
    """Python's own modules: built in, frozen, or files under the interpreter's library
    folder outside site-packages."""
    top = module.__name__.split(".")[0]
    if top in sys.stdlib_module_names or top in sys.builtin_module_names:
        return True
    origin = getattr(module, "__file__", None)
    if origin is None:
        return True  # built in or frozen
    stdlib = Path(sysconfig.get_paths()["stdlib"]).resolve()
    path = Path(origin).resolve()
    return stdlib in path.parents and "site-packages" not in path.parts


def _load_function(target: str, base_dir: Path, name: str, trusted: bool) -> Callable[..., Any]:
    """Load ``module:function`` without touching ``sys.path`` or ``sys.modules``.

    A scorer is a function *defined* in a project file: ``module.py`` (or a package) in
    the spec's folder or the working directory, loaded under a private name so a project
    file named like a library (``rapidfuzz.py``) never shadows the library. With
    ``trusted: true`` it may instead be defined in an installed third-party package.
    Never the standard library, even re-exported by a project file: a deny-list of
    dangerous modules cannot be complete (``cProfile:run`` executes its argument), an
    allow-list of where the function was defined can."""
    module_name, _, attr = target.partition(":")
    parts = module_name.split(".")
    module: ModuleType | None = None
    for folder in dict.fromkeys((base_dir.resolve(), Path.cwd().resolve())):
        for candidate in (
            folder.joinpath(*parts).with_suffix(".py"),
            folder.joinpath(*parts, "__init__.py"),
        ):
            if candidate.is_file():
                module = _load_file(
                    candidate, f"abharness_scorer_{content_hash(str(candidate), 12)}", name
                )
                break
        if module is not None:
            break
    if module is None:
        if not trusted:
            raise SpecError(
                f"scorer {name}: {module_name} is not a file in {base_dir} or {Path.cwd()}; "
                "a function from an installed package runs only with trusted: true"
            )
        if parts[0] in sys.stdlib_module_names or parts[0] in sys.builtin_module_names:
            raise SpecError(
                f"scorer {name}: {target} is in Python's standard library: a scorer must be "
                "defined in a project file or an installed third-party package"
            )
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise SpecError(f"scorer {name}: cannot import {target}: {exc}") from exc
        if _is_standard_library(module):
            raise SpecError(
                f"scorer {name}: {target} is in Python's standard library: a scorer must be "
                "defined in a project file or an installed third-party package"
            )
    fn = getattr(module, attr, None)
    if fn is None:
        raise SpecError(f"scorer {name}: cannot import {target}: {module_name} has no {attr!r}")
    defined_in = getattr(fn, "__module__", None) or ""
    home = module.__name__ if module.__name__.startswith("abharness_scorer_") else parts[0]
    if not (inspect.isfunction(fn) and (defined_in == home or defined_in.startswith(f"{home}."))):
        where = f"in {defined_in}" if defined_in else "elsewhere"
        raise SpecError(
            f"scorer {name}: {target} is not a function defined in {module_name} (it is "
            f"{type(fn).__name__} defined {where}): name the function where it is written"
        )
    return fn


def _load_file(path: Path, private_name: str, name: str) -> Any:
    spec = importlib.util.spec_from_file_location(
        private_name,
        path,
        submodule_search_locations=[str(path.parent)] if path.name == "__init__.py" else None,
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        raise SpecError(
            f"scorer {name}: cannot import {path}: {type(exc).__name__}: {exc}"
        ) from exc
    return module


def build_scorers(specs: list[ScorerSpec], base_dir: Path | None = None) -> list[Scorer]:
    """One `Scorer` per spec entry; names are the entry's `name`, else its type (``_2``... on repeats)."""
    out: list[Scorer] = []
    used: set[str] = set()
    for spec in specs:
        name = spec.name or spec.type
        base, n = name, 2
        while name in used:
            name, n = f"{base}_{n}", n + 1
        used.add(name)
        out.append(Scorer(spec, name, base_dir or Path.cwd()))
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
