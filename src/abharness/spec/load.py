"""Load an experiment spec: YAML → validated `Experiment`, or a `SpecError`.

`load_spec` reports the first problem naming the file, the line and the key path
(``arms[1].provider``) and what was expected; it checks everything that can be
checked without calling a model: arm ids, baseline, providers, the dataset.
`LoadedSpec` keeps the source (for the record) and the YAML tree (so later checks,
such as a provider's options, can point at a line too).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from ..errors import SpecError
from ..hashing import content_hash
from .endpoints import BUILTIN_ENDPOINTS, LOCAL_TYPES, PROVIDER_TYPES
from .files import check_unique_keys, read_utf8
from .models import (
    DEFAULT_PARAMS,
    Arm,
    ContainsScorer,
    ExactScorer,
    Experiment,
    GenerationParams,
    JsonSchemaScorer,
    JsonValidScorer,
    LlmJudgeScorer,
    NumericScorer,
    Part,
    ProviderSpec,
    PythonScorer,
    RegexScorer,
    SimilarityScorer,
)


class LoadedSpec:
    """A validated experiment with paths resolved and its source kept for the record."""

    def __init__(
        self,
        path: Path,
        source: str,
        experiment: Experiment,
        prompts_dir: Path,
        root: yaml.Node | None = None,
    ) -> None:
        self.path = path
        self.source = source
        self.experiment = experiment
        self.prompts_dir = prompts_dir
        self.hash = content_hash(source)
        self._root = root

    def error_at(self, problem: str, loc: tuple[str | int, ...]) -> SpecError:
        """A `SpecError` naming this file, the line and the key path of `loc`, such as
        ``("providers", "lab", "options", "hostz")``: for checks made after loading."""
        line = _line_of(self._root, loc) if self._root is not None else None
        return SpecError(problem, file=self.path, line=line, key=_key_path(loc))

    @property
    def baseline(self) -> str:
        """The arm every other is compared with: ``baseline:``, else (online) the first
        arm of ``serve.split``, else the first arm."""
        x = self.experiment
        if x.baseline is None and x.serve is not None:
            return next(iter(x.serve.split))
        return x.baseline or x.arms[0].id

    def endpoint(self, arm: Arm) -> ProviderSpec:
        """The arm's endpoint: a spec `providers:` entry, else the built-in of that name.

        An entry named like a built-in of the same type overrides only what it sets; a
        plain ``type: openai`` or ``type: anthropic`` entry without ``base_url`` talks to
        the official API and authenticates and prices like the built-in.
        """
        assert arm.provider is not None, "a composite arm's parts have the endpoints"
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
        source = read_utf8(path, SpecError)
    except FileNotFoundError as exc:
        raise SpecError("spec file not found", file=path) from exc
    except OSError as exc:
        raise SpecError(f"cannot read spec: {exc.strerror}", file=path) from exc
    try:
        root = yaml.compose(source)
        check_unique_keys(root, path, SpecError)
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
        _check_arm(arm, i, x, fail)
    for arm in x.arms:
        for part in part_ids(arm):
            if part in seen:
                raise fail(
                    f"arm id {part!r} is the name of one of {arm.id}'s parts: rename it",
                    "arms",
                    seen[part],
                    "id",
                )
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
    if x.serve is not None:
        _check_serve(x, fail)
    if x.dataset is not None and x.cases is not None:
        raise fail(
            "give exactly one of dataset: (a JSONL or CSV file) or cases: (a list)", "dataset"
        )
    if x.dataset is None and x.cases is None and x.serve is None:
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
    return LoadedSpec(path, source, experiment, prompts_dir, root)


def part_ids(arm: Arm) -> list[str]:
    """The arm ids of a composite arm's parts (its rows in ``arms`` and ``calls``)."""
    if arm.panel is not None:
        members = [f"{arm.id}.member{j + 1}" for j in range(len(arm.panel.members))]
        return [*members, f"{arm.id}.synthesizer"]
    return [f"{arm.id}.route{j + 1}" for j in range(len(arm.route or []))]


def _check_arm(arm: Arm, i: int, x: Experiment, fail: Any) -> None:
    """One model (provider and model), or one composite (a panel or a route), whose
    providers all exist."""
    known = {*BUILTIN_ENDPOINTS, *x.providers}

    def known_provider(name: str | None, *loc: str | int) -> None:
        if name not in known:
            raise fail(
                f"unknown provider {name!r}; expected one of {', '.join(sorted(known))} "
                "or a name defined under providers:",
                "arms",
                i,
                *loc,
            )

    composites = [k for k in ("panel", "route") if getattr(arm, k) is not None]
    if len(composites) > 1:
        raise fail("an arm is a panel or a route, not both", "arms", i)
    if composites:
        for key in ("provider", "model"):
            if getattr(arm, key) is not None:
                raise fail(
                    f"a {composites[0]} arm names its models inside {composites[0]}:, "
                    f"not with {key}:",
                    "arms",
                    i,
                    key,
                )
    else:
        for key in ("provider", "model"):
            if getattr(arm, key) is None:
                raise fail(
                    "required key is missing (or make the arm a panel: or a route:)",
                    "arms",
                    i,
                    key,
                )
        known_provider(arm.provider, "provider")
    if arm.fallback_on is not None and arm.route is None:
        raise fail("fallback_on belongs to a route arm", "arms", i, "fallback_on")
    if arm.panel is not None:
        for j, member in enumerate(arm.panel.members):
            known_provider(member.provider, "panel", "members", j, "provider")
        known_provider(arm.panel.synthesizer.provider, "panel", "synthesizer", "provider")
        n = len(arm.panel.members)
        if arm.panel.min_members is not None and arm.panel.min_members > n:
            raise fail(
                f"min_members {arm.panel.min_members} is more than the panel's {n} members",
                "arms",
                i,
                "panel",
                "min_members",
            )
    for j, route in enumerate(arm.route or []):
        known_provider(route.provider, "route", j, "provider")
    if composites:
        parts: list[tuple[Part, tuple[str | int, ...]]]
        if arm.panel is not None:
            parts = [(m, ("panel", "members", j)) for j, m in enumerate(arm.panel.members)]
            parts.append((arm.panel.synthesizer, ("panel", "synthesizer")))
        else:
            parts = [(r, ("route", j)) for j, r in enumerate(arm.route or [])]
        batched: list[tuple[str | int, ...]] = [("mode",)] if arm.mode == "batch" else []
        batched += [(*loc, "mode") for part, loc in parts if part.mode == "batch"]
        if batched:
            raise fail(
                f"a {composites[0]} arm runs live: its calls depend on each other's answers "
                "(mode: batch is for single-model arms)",
                "arms",
                i,
                *batched[0],
            )
    if arm.prompt is None and x.prompt is None and x.serve is None:
        raise fail("no prompt: set prompt on the arm or at the top of the spec", "arms", i)


def _check_serve(x: Experiment, fail: Any) -> None:
    """`serve:` names arms that exist and can answer a live request: one model or a
    route (a panel's calls are not made online), an arm in one role only."""
    assert x.serve is not None
    arms = {a.id: a for a in x.arms}
    roles: dict[str, str] = {}
    lists: list[tuple[str, list[str]]] = [
        ("split", list(x.serve.split)),
        ("shadow", x.serve.shadow),
        ("fallback", x.serve.fallback),
    ]
    for key, ids in lists:
        for arm_id in ids:
            where = ("serve", key, arm_id) if key == "split" else ("serve", key)
            if arm_id not in arms:
                raise fail(
                    f"serve.{key} names {arm_id!r}, which is not an arm id; arms: "
                    f"{', '.join(arms)}",
                    *where,
                )
            if arms[arm_id].panel is not None:
                raise fail(
                    f"serve.{key}: {arm_id!r} is a panel; serve calls one model or a route per arm",
                    *where,
                )
            clash = roles.get(arm_id) == "shadow" or (key == "shadow" and arm_id in roles)
            if clash:
                raise fail(
                    f"serve.{key}: {arm_id!r} is already in serve.{roles[arm_id]}; "
                    "an arm is assigned or shadowed, not both",
                    *where,
                )
            roles.setdefault(arm_id, key)
    if x.baseline is not None and x.baseline not in x.serve.split:
        raise fail(
            f"baseline {x.baseline!r} must be in serve.split: online arms are compared with it",
            "baseline",
        )


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
    message = str(err["msg"]).removeprefix("Value error, ")
    return f"{message} (got {err.get('input')!r})"


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
