"""Experiment specs: YAML → validated pydantic models (SPEC §4).

Every model forbids unknown keys, so a typo is an error rather than a silently
ignored setting. `load_spec` reports the first problem as a `SpecError` naming the
file, the line and the key path (``arms[1].provider``) and what was expected; it
checks everything that can be checked without calling a model: arm ids, baseline,
providers, the dataset and every template.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import SpecError
from .hashing import content_hash
from .providers import BUILTIN_ENDPOINTS, LOCAL_TYPES, PROVIDER_TYPES

_NAME = r"^[a-z0-9_-]+$"
_ARM_ID = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Price(_Model):
    """USD per million tokens; overrides genai-prices for the arm or provider."""

    input_per_mtok: Decimal
    output_per_mtok: Decimal
    cache_read_per_mtok: Decimal | None = None
    cache_write_per_mtok: Decimal | None = None


class GenerationParams(_Model):
    """Sampling and call parameters; `defaults` sets them, an arm overrides them."""

    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=1)
    max_tokens: int | None = Field(None, ge=1)
    seed: int | None = None
    stop: list[str] | None = None
    timeout_s: float | None = Field(None, gt=0, description="per attempt")
    stream: bool | None = None

    def merged(self, override: GenerationParams) -> GenerationParams:
        """These params with every field `override` sets replacing ours."""
        data = self.model_dump(exclude_none=True)
        data.update(
            override.model_dump(exclude_none=True, include=set(GenerationParams.model_fields))
        )
        return GenerationParams(**data)


DEFAULT_PARAMS = GenerationParams(temperature=0, max_tokens=256, timeout_s=60)


class ProviderSpec(_Model):
    """A named endpoint beyond the built-ins (or settings for a built-in one)."""

    type: str
    base_url: str | None = None
    api_key_env: str | None = None
    tier: Literal[1, 2] | None = None
    rpm: int | None = Field(None, ge=1)
    tpm: int | None = Field(None, ge=1)
    concurrency: int | None = Field(None, ge=1)
    price: Price | None = None
    price_provider: str | None = Field(None, description="genai-prices provider id, e.g. openai")
    options: dict[str, Any] = Field(default_factory=dict, description="passed to the provider")


class Arm(GenerationParams):
    id: Annotated[str, Field(pattern=_ARM_ID)]
    provider: str
    model: str
    prompt: str | None = None
    tier: Literal[1, 2] | None = None
    price: Price | None = None


class ExactScorer(_Model):
    """The response equals ``expected`` (stripped unless ``strip: false``)."""

    type: Literal["exact"]
    name: str | None = None
    expected: str = "{{ case.expected }}"
    ignore_case: bool = False
    strip: bool = True


class ContainsScorer(_Model):
    """The response contains ``expected``; a list passes on ``any`` (default) or ``all``."""

    type: Literal["contains"]
    name: str | None = None
    expected: str | list[str] = "{{ case.expected }}"
    match: Literal["any", "all"] = "any"
    ignore_case: bool = False


class RegexScorer(_Model):
    type: Literal["regex"]
    name: str | None = None
    pattern: str
    ignore_case: bool = False


class JsonValidScorer(_Model):
    """The response parses as JSON (inside a ```json fence too, with ``extract: true``)."""

    type: Literal["json_valid"]
    name: str | None = None
    extract: bool = False


class JsonSchemaScorer(_Model):
    """The response is JSON valid against ``schema`` (inline, or a file relative to the spec)."""

    type: Literal["json_schema"]
    name: str | None = None
    schema_: dict[str, Any] | str = Field(alias="schema")
    extract: bool = False


class NumericScorer(_Model):
    """The first number in the response is within tolerance of ``expected``."""

    type: Literal["numeric"]
    name: str | None = None
    expected: str = "{{ case.expected }}"
    abs_tol: float = Field(0.0, ge=0)
    rel_tol: float = Field(0.0, ge=0)


class SimilarityScorer(_Model):
    """rapidfuzz's normalised ratio with ``expected`` (the value); passes at ``threshold``."""

    type: Literal["similarity"]
    name: str | None = None
    expected: str = "{{ case.expected }}"
    threshold: float = Field(0.8, ge=0, le=1)
    ignore_case: bool = True


class PythonScorer(_Model):
    """``function: module:function`` from the project, called as ``f(response, case)``;
    it returns a bool, a number in [0, 1], or ``(value, detail)``."""

    type: Literal["python"]
    name: str | None = None
    function: Annotated[str, Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")]
    threshold: float = Field(0.5, ge=0, le=1)


class LlmJudgeScorer(_Model):
    """A judge model grades each response with a rubric template (``rubric: name@N``).

    The rubric sees the case's fields, ``case``, ``response`` and ``expected``. The judge
    is a model on any provider; its calls go through the runner (limits, retries, cost
    cap) and are logged as calls of the arm ``judge-<name>``. Its answer is parsed for a
    score in ``scale`` (``Score: 7``, ``7/10`` or the first number in range), normalised
    to [0, 1]; it passes at ``threshold``."""

    type: Literal["llm_judge"]
    name: str | None = None
    provider: str
    model: str
    rubric: str
    expected: str | None = None
    scale: tuple[float, float] = (0, 10)
    threshold: float = Field(0.5, ge=0, le=1)
    temperature: float | None = Field(0, ge=0, le=2)
    max_tokens: int = Field(256, ge=1)
    price: Price | None = None


ScorerSpec = Annotated[
    ExactScorer
    | ContainsScorer
    | RegexScorer
    | JsonValidScorer
    | JsonSchemaScorer
    | NumericScorer
    | SimilarityScorer
    | PythonScorer
    | LlmJudgeScorer,
    Field(discriminator="type"),
]


class Budget(_Model):
    max_input_tokens: int | None = Field(None, ge=1)


class Gates(_Model):
    score_drop: Literal["significant"] | float | None = None
    latency_p50_increase_pct: float | None = None
    cost_increase_pct: float | None = None


class Experiment(_Model):
    name: Annotated[str, Field(pattern=_NAME)]
    description: str = ""
    dataset: str | None = None
    cases: list[dict[str, Any]] | None = None
    prompt: str | None = None
    prompts_dir: str | None = None
    repeats: int = Field(1, ge=1)
    baseline: str | None = None
    defaults: GenerationParams = Field(default_factory=GenerationParams)
    budget: Budget = Field(default_factory=Budget)
    providers: dict[str, ProviderSpec] = Field(default_factory=dict)
    arms: list[Arm] = Field(min_length=1)
    scorers: list[ScorerSpec] = Field(default_factory=list)
    gates: Gates = Field(default_factory=Gates)
    max_cost_usd: float | None = Field(None, ge=0)
    max_error_rate: float = Field(0.0, ge=0, le=1, description="above it `run` exits 2")


class LoadedSpec:
    """A validated experiment with paths resolved and its source kept for the record."""

    def __init__(self, path: Path, source: str, experiment: Experiment, prompts_dir: Path) -> None:
        self.path = path
        self.source = source
        self.experiment = experiment
        self.prompts_dir = prompts_dir
        self.hash = content_hash(source)

    @property
    def baseline(self) -> str:
        return self.experiment.baseline or self.experiment.arms[0].id

    def endpoint(self, arm: Arm) -> ProviderSpec:
        """The arm's endpoint: a spec `providers:` entry, else the built-in of that name.

        An entry named like a built-in of the same type overrides only what it sets; a
        plain ``type: openai`` or ``type: anthropic`` entry without ``base_url`` talks to
        the official API and authenticates and prices like the built-in.
        """
        spec = self.experiment.providers.get(arm.provider)
        builtin = BUILTIN_ENDPOINTS.get(arm.provider)
        if spec is None:
            assert builtin is not None, "validated in load_spec"
            return ProviderSpec(
                type=builtin.type,
                base_url=builtin.base_url,
                api_key_env=builtin.api_key_env,
                price_provider=builtin.price_provider,
            )
        if builtin is None or builtin.type != spec.type:
            if spec.base_url is not None or spec.type not in ("openai", "anthropic"):
                return spec
            builtin = BUILTIN_ENDPOINTS[spec.type]
        defaults = {
            "base_url": builtin.base_url,
            "api_key_env": builtin.api_key_env,
            "price_provider": builtin.price_provider,
        }
        return ProviderSpec(**{**defaults, **spec.model_dump(exclude_none=True)})

    def tier(self, arm: Arm) -> int:
        endpoint = self.endpoint(arm)
        return arm.tier or endpoint.tier or (1 if endpoint.type in LOCAL_TYPES else 2)

    def params(self, arm: Arm) -> GenerationParams:
        return DEFAULT_PARAMS.merged(self.experiment.defaults).merged(arm)

    def prompt_ref(self, arm: Arm) -> str:
        ref = arm.prompt or self.experiment.prompt
        assert ref is not None, "validated in load_spec"
        return ref

    def dataset_path(self) -> Path | None:
        ds = self.experiment.dataset
        return (self.path.parent / ds) if ds else None


def load_spec(path: str | Path, *, cwd: Path | None = None) -> LoadedSpec:
    """Read, parse and validate a spec file, or raise `SpecError`."""
    path = Path(path)
    try:
        source = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise SpecError("spec file not found", file=path) from exc
    except OSError as exc:
        raise SpecError(f"cannot read spec: {exc.strerror}", file=path) from exc
    try:
        root = yaml.compose(source)
        data = yaml.safe_load(source)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError(
            f"YAML syntax error: {problem}",
            file=path,
            line=mark.line + 1 if mark is not None else None,
        ) from exc
    if not isinstance(data, dict):
        raise SpecError(
            "expected a YAML mapping with name, arms, ... at the top", file=path, line=1
        )

    try:
        experiment = Experiment.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p in _SCORER_TAGS))
        raise SpecError(
            _explain(err, tuple(err["loc"])),
            file=path,
            line=_line_of(root, loc),
            key=_key_path(loc),
        ) from exc

    def fail(message: str, *loc: str | int) -> SpecError:
        return SpecError(message, file=path, line=_line_of(root, loc), key=_key_path(loc))

    x = experiment
    seen: dict[str, int] = {}
    for i, arm in enumerate(x.arms):
        if arm.id in seen:
            raise fail(
                f"arm id {arm.id!r} is already used by arms[{seen[arm.id]}]", "arms", i, "id"
            )
        seen[arm.id] = i
        if arm.provider not in x.providers and arm.provider not in BUILTIN_ENDPOINTS:
            known = sorted({*BUILTIN_ENDPOINTS, *x.providers})
            raise fail(
                f"unknown provider {arm.provider!r}; expected one of {', '.join(known)} "
                "or a name defined under providers:",
                "arms",
                i,
                "provider",
            )
        if arm.prompt is None and x.prompt is None:
            raise fail("no prompt: set prompt on the arm or at the top of the spec", "arms", i)
    for name, p in x.providers.items():
        if p.type not in PROVIDER_TYPES:
            raise fail(
                f"unknown provider type {p.type!r}; expected one of {', '.join(PROVIDER_TYPES)}",
                "providers",
                name,
                "type",
            )
    for i, sc in enumerate(x.scorers):
        if isinstance(sc, LlmJudgeScorer) and sc.provider not in {*x.providers, *BUILTIN_ENDPOINTS}:
            raise fail(f"unknown judge provider {sc.provider!r}", "scorers", i, "provider")
    if x.baseline is not None and x.baseline not in seen:
        raise fail(f"baseline {x.baseline!r} is not an arm id; arms: {', '.join(seen)}", "baseline")
    if (x.dataset is None) == (x.cases is None):
        raise fail(
            "give exactly one of dataset: (a JSONL or CSV file) or cases: (a list)", "dataset"
        )
    if x.dataset is not None:
        ds = path.parent / x.dataset
        if not ds.is_file():
            raise fail(f"dataset file not found: {ds}", "dataset")
        if ds.suffix.lower() not in (".jsonl", ".csv"):
            raise fail(
                f"dataset must be .jsonl or .csv, got {ds.suffix or 'no extension'}", "dataset"
            )
    if x.prompts_dir is not None:
        prompts_dir = (path.parent / x.prompts_dir).resolve()
    else:
        prompts_dir = ((cwd or Path.cwd()) / "prompts").resolve()
    if not prompts_dir.is_dir():
        raise fail(f"prompts directory not found: {prompts_dir}", "prompts_dir")
    return LoadedSpec(path, source, experiment, prompts_dir)


_SCORER_MODELS: dict[str, type[BaseModel]] = {
    m.model_fields["type"].annotation.__args__[0]: m  # type: ignore[union-attr]
    for m in (
        ExactScorer,
        ContainsScorer,
        RegexScorer,
        JsonValidScorer,
        JsonSchemaScorer,
        NumericScorer,
        SimilarityScorer,
        PythonScorer,
        LlmJudgeScorer,
    )
}
_SCORER_TAGS = set(_SCORER_MODELS)


def _key_path(loc: tuple[Any, ...]) -> str | None:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or None


def _line_of(root: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    """1-based line of the deepest YAML node along `loc` that exists."""
    node, line = root, (root.start_mark.line + 1 if root is not None else None)
    for part in loc:
        nxt = None
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if key.value == part:
                    nxt, line = value, key.start_mark.line + 1
                    break
        elif (
            isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value)
        ):
            nxt = node.value[part]
            line = nxt.start_mark.line + 1
        if nxt is None:
            break
        node = nxt
    return line


def _explain(err: Any, loc: tuple[Any, ...]) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        allowed = _allowed_keys(loc[:-1])
        hint = f"; expected one of: {', '.join(allowed)}" if allowed else ""
        return f"unknown key {loc[-1]!r}{hint}"
    if kind == "missing":
        return "required key is missing"
    if kind == "union_tag_invalid":
        return f"unknown scorer type; expected one of: {', '.join(sorted(_SCORER_TAGS))}"
    if kind == "string_pattern_mismatch":
        if loc and loc[-1] == "id":
            return f"arm id {err.get('input')!r}: expected letters, digits, '.', '-' or '_'"
        return f"{err.get('input')!r}: expected lowercase letters, digits, '-' or '_' only"
    return f"{err['msg']} (got {err.get('input')!r})"


def _allowed_keys(loc: tuple[Any, ...]) -> list[str]:
    """Field names of the model found by walking `loc` from `Experiment`."""
    model: Any = Experiment
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return []
        field = model.model_fields.get(part)
        if field is None:
            if part in _SCORER_TAGS:
                model = _SCORER_MODELS[part]
            continue
        model = _inner_model(field.annotation)
    if isinstance(model, type) and issubclass(model, BaseModel):
        return list(model.model_fields)
    return []


def _inner_model(tp: Any) -> Any:
    origin = get_origin(tp)
    if origin is None:
        return tp
    for arg in get_args(tp):
        inner = _inner_model(arg)
        if isinstance(inner, type) and issubclass(inner, BaseModel):
            return inner
    return None
