"""The experiment spec as pydantic models (SPEC §4).

Every model forbids unknown keys, so a typo is an error rather than a silently
ignored setting; every field says what it is for.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any, Literal
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, Field, field_validator

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
    mode: Literal["live", "batch"] | None = Field(
        None, description="batch: through the provider's batch API, at its batch price (SPEC §13)"
    )

    def merged(self, override: GenerationParams) -> GenerationParams:
        """These params with every field `override` sets replacing ours."""
        data = self.model_dump(exclude_none=True)
        data.update(
            override.model_dump(exclude_none=True, include=set(GenerationParams.model_fields))
        )
        return GenerationParams(**data)


DEFAULT_PARAMS = GenerationParams(temperature=0, max_tokens=256, timeout_s=60)


class BatchSettings(_Model):
    """How a provider's batches are polled: from `poll_s`, growing ×1.5 to `max_poll_s`."""

    poll_s: float = Field(30, gt=0)
    max_poll_s: float = Field(600, gt=0)


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
    batch: BatchSettings = Field(default_factory=BatchSettings)
    batch_api: bool | None = Field(
        None,
        description="a custom base_url that offers the provider's batch API (default: only "
        "the provider's own URL does)",
    )

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        """An address the SDKs can call: http(s)://host[:port][/path]."""
        if value is None:
            return value
        parts = urlparse(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(
                "base_url must be an http:// or https:// URL with a host, such as "
                "http://gpu-box:8000/v1"
            )
        return value


ErrorType = Literal[
    "rate_limit",
    "timeout",
    "connection",
    "server",
    "auth",
    "bad_request",
    "context_length",
    "content_filter",
    "other",
]


class Part(GenerationParams):
    """One model inside a composite arm: a panel's member or synthesizer, or a route.
    Its parameters override the arm's."""

    provider: str
    model: str
    price: Price | None = None


class Synthesizer(Part):
    prompt: str = Field(description="template (name@N) that sees the case and `members`")


class Panel(_Model):
    """Ask every member at once, then have the synthesizer answer from what they said."""

    members: list[Part] = Field(min_length=1)
    synthesizer: Synthesizer
    min_members: int | None = Field(
        None,
        ge=1,
        description="members that must answer, else the call fails (default: a majority)",
    )

    @property
    def required(self) -> int:
        return self.min_members or len(self.members) // 2 + 1


DEFAULT_FALLBACK_ON: tuple[str, ...] = ("rate_limit", "server", "timeout", "connection")


class Arm(GenerationParams):
    """An arm: one model (`provider` and `model`), or a composite: a `panel` of models
    and a synthesizer, or a `route` of models tried in order (`fallback_on`)."""

    id: Annotated[str, Field(pattern=_ARM_ID)]
    provider: str | None = None
    model: str | None = None
    prompt: str | None = None
    tier: Literal[1, 2] | None = None
    price: Price | None = None
    panel: Panel | None = None
    route: list[Part] | None = Field(None, min_length=1)
    fallback_on: list[ErrorType] | None = Field(
        None,
        description="error types that move a route on (default: rate_limit, server, timeout, connection)",
    )

    @property
    def kind(self) -> Literal["model", "panel", "route"]:
        return "panel" if self.panel is not None else "route" if self.route is not None else "model"


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
    it returns a bool, a number in [0, 1], or ``(value, detail)``.

    It runs project code with the user's rights. The function must be *defined* in a
    file of the project (the spec's folder, then the working directory), or, with
    ``trusted: true``, in an installed third-party package; never in Python's standard
    library, even re-exported (``cProfile:run`` would execute the model's output)."""

    type: Literal["python"]
    name: str | None = None
    function: Annotated[str, Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")]
    threshold: float = Field(0.5, ge=0, le=1)
    trusted: bool = False


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
    """Regression gates for `compare` and `nightly` (README "Nightly runs")."""

    score_drop: Literal["significant"] | float | None = None
    latency_p50_increase_pct: float | None = Field(
        None,
        description="each arm's latency ratio to the spec's baseline arm, this run against "
        "the reference (a ratio of ratios: a slower machine or provider that night slows "
        "every arm alike and cancels); needs a baseline and a second arm",
    )
    cost_increase_pct: float | None = Field(
        None, description="likewise for the cost per call, relative to the baseline arm"
    )
    latency_p50_abs_increase_pct: float | None = Field(
        None,
        description="absolute: each arm's own latency against the reference run, drift "
        "included; the latency gate for single-arm specs",
    )
    cost_abs_increase_pct: float | None = Field(
        None, description="absolute: each arm's own cost per call against the reference run"
    )


class ClientRateLimit(_Model):
    """Requests a client key may make per minute; beyond it, 429 with Retry-After."""

    rpm: int = Field(ge=1)


class Serve(_Model):
    """How `abharness serve` assigns live requests to arms (SPEC §16, docs/serve.md)."""

    split: dict[str, Annotated[float, Field(gt=0)]] = Field(
        min_length=1, description="weights over arm ids: each request's arm is drawn by them"
    )
    sticky: Literal["user", "none"] = Field(
        "user",
        description="user: a subject (the request's `user`, else the x-abharness-subject "
        "header) always gets the same arm; none: every request is drawn afresh",
    )
    shadow: list[str] = Field(
        default_factory=list, description="arms also called with every request, never returned"
    )
    fallback: list[str] = Field(
        default_factory=list, description="arms that answer, in order, when the assigned arm fails"
    )
    keys_env: str | None = Field(
        None, description="environment variable holding the comma-separated client bearer keys"
    )
    rate_limit: ClientRateLimit | None = Field(None, description="per client key")
    max_body_bytes: int = Field(1_000_000, ge=1024, description="larger request bodies get 413")
    merge_every_s: float = Field(
        30, gt=0, description="how often the session's rows are merged into the main database"
    )


class Experiment(_Model):
    name: Annotated[str, Field(pattern=_NAME)]
    description: str = ""
    dataset: str | None = None
    cases: list[dict[str, Any]] | None = None
    prompt: str | None = None
    prompts_dir: str | None = None
    repeats: int = Field(1, ge=1)
    cluster: str | None = Field(
        None, description="case field naming the group a case belongs to: the statistics' unit"
    )
    baseline: str | None = None
    defaults: GenerationParams = Field(default_factory=GenerationParams)
    budget: Budget = Field(default_factory=Budget)
    providers: dict[str, ProviderSpec] = Field(default_factory=dict)
    arms: list[Arm] = Field(min_length=1)
    scorers: list[ScorerSpec] = Field(default_factory=list)
    gates: Gates = Field(default_factory=Gates)
    max_cost_usd: float | None = Field(None, ge=0)
    max_error_rate: float = Field(0.0, ge=0, le=1, description="above it `run` exits 2")
    serve: Serve | None = Field(
        None, description="`abharness serve`: live traffic split between the arms (SPEC §16)"
    )
