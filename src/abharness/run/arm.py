"""An arm's recipe: what one of its calls is made of, and what it costs.

`ArmPlan` holds what the plan resolved for one arm (its spec entry, endpoint, template,
merged parameters, provider, tier) and turns a case's variables into a call: the prompt
fitted to the arm's budget with the arm's own tokenizer (`fit_vars`), the provider
request (`request`), its worst-case cost for the cost cap (`worst_case_cost`) and the
cost of what the provider reported (`cost`). Judges are arms too, and so are the parts
of a composite arm (`role` member, synthesizer or route; `parent` its id).

`CompositePlan` is a panel (members asked at once, then a synthesizer) or a route
(models tried in order): an arm whose calls its parts make (`run.composite`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from math import ceil
from typing import Any

from ..prompts.budget import FittedPrompt, fit_to_budget, input_budget
from ..prompts.templates import PromptTemplate
from ..prompts.tokenizers import Tokenizer
from ..providers import Provider
from ..providers.base import ProviderRequest, Usage
from ..providers.pricing import call_cost
from ..spec.dataset import Case
from ..spec.models import Arm, GenerationParams, Price, ProviderSpec


@dataclass(eq=False)  # identity: one arm's plan is one object
class ArmPlan:
    arm: Arm
    endpoint_name: str
    endpoint: ProviderSpec
    template: PromptTemplate
    params: GenerationParams
    tier: int
    provider: Provider
    is_baseline: bool
    max_input_tokens: int | None
    role: str = "arm"  # arm | judge | member | synthesizer | route
    parent: str | None = None  # the composite arm a part belongs to
    batch: bool = False  # its calls go through the provider's batch API (SPEC §13)
    _budget: int | None = field(default=None, repr=False)
    _budget_known: bool = field(default=False, repr=False)
    _tokenizer: Tokenizer | None = field(default=None, repr=False)
    _hashed_params: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def id(self) -> str:
        return self.arm.id

    @property
    def model(self) -> str:
        assert self.arm.model is not None, "a plan's arm has a model (composites: their parts)"
        return self.arm.model

    @property
    def price(self) -> Price | None:
        return self.arm.price or self.endpoint.price

    def budget(self) -> int | None:
        if not self._budget_known:
            self._budget = input_budget(
                self.max_input_tokens,
                self.provider.context_window(self.model),
                self.params.max_tokens,
            )
            self._budget_known = True
        return self._budget

    def tokenizer(self) -> Tokenizer:
        """The arm's tokenizer, made once (not per call)."""
        if self._tokenizer is None:
            self._tokenizer = self.provider.tokenizer(self.model)
        return self._tokenizer

    def hashed_params(self) -> dict[str, Any]:
        """The parameters that make a request what it is (a call's ``request_hash``),
        worked out once: the arm's parameters do not change."""
        if self._hashed_params is None:
            exclude = {"timeout_s", "stream", "mode"}
            self._hashed_params = self.params.model_dump(exclude_none=True, exclude=exclude)
        return self._hashed_params

    def fit_vars(self, variables: dict[str, Any]) -> FittedPrompt:
        return fit_to_budget(self.template, variables, self.tokenizer(), self.budget())

    def fit(self, case: Case) -> FittedPrompt:
        return self.fit_vars(case.template_vars())

    def api(self) -> str:
        """Which API the arm's requests go to (``validate`` shows it)."""
        raw = self.template.blocks == ["prompt"]
        probe = ProviderRequest(model=self.model, prompt="" if raw else None)
        return self.provider.api_for(probe) or ("raw" if raw else "chat")

    def is_priced(self) -> bool:
        """Whether a cost can be computed for this arm's calls."""
        return self.price is not None or self.tier == 1 or self._genai_price_known()

    def _genai_price_known(self) -> bool:
        from ..providers.pricing import genai_price

        e = self.endpoint
        if not (e.price_provider or e.base_url):
            return False
        one = Usage(input_tokens=1, output_tokens=1)
        return (
            genai_price(one, self.model, provider_id=e.price_provider, api_url=e.base_url)
            is not None
        )

    def worst_case_cost(self, est_input_tokens: int) -> Decimal:
        """The most one call can cost: its estimated input plus `max_tokens` of output."""
        usage = Usage(input_tokens=est_input_tokens, output_tokens=self.params.max_tokens or 0)
        cost, _ = self.cost(usage)
        return cost if cost is not None else Decimal(0)

    def cost(self, usage: Usage, when: datetime | None = None) -> tuple[Decimal | None, str | None]:
        """(cost, price_source) of `usage` on this arm: its price, else genai-prices; the
        batch price for a batch arm."""
        return call_cost(
            usage,
            self.price,
            local=self.tier == 1,
            model=self.model,
            provider_id=self.endpoint.price_provider,
            api_url=self.endpoint.base_url,
            when=when,
            batch=self.batch,
        )

    def request(self, fitted: FittedPrompt) -> ProviderRequest:
        p = self.params
        r = fitted.rendered
        return ProviderRequest(
            model=self.model,
            messages=tuple({"role": m.role, "content": m.content} for m in r.messages),
            prompt=r.prompt,
            temperature=p.temperature,
            top_p=p.top_p,
            top_k=p.top_k,
            max_tokens=p.max_tokens,
            seed=p.seed,
            stop=tuple(p.stop or ()),
            stream=p.stream if p.stream is not None else True,
        )


@dataclass(eq=False)
class CompositePlan:
    """A panel or a route: an arm whose calls are made by its `parts` (ArmPlans): a
    panel's members then its synthesizer, or a route's models in order."""

    arm: Arm
    parts: list[ArmPlan]
    is_baseline: bool
    required: int = 0  # a panel's members that must answer
    fallback_on: frozenset[str] = frozenset()  # a route's error types that move it on

    @property
    def id(self) -> str:
        return self.arm.id

    @property
    def kind(self) -> str:
        return self.arm.kind

    @property
    def members(self) -> list[ArmPlan]:
        return self.parts[:-1] if self.kind == "panel" else []

    @property
    def synthesizer(self) -> ArmPlan:
        assert self.kind == "panel"
        return self.parts[-1]

    @property
    def template(self) -> PromptTemplate:
        """What the members, or the routes, are asked."""
        return self.parts[0].template

    def describe(self) -> str:
        """The parts in a line, for the arms table and `validate`."""
        if self.kind == "route":
            return " → ".join(f"{p.endpoint_name}:{p.model}" for p in self.parts)
        members = ", ".join(f"{p.endpoint_name}:{p.model}" for p in self.members)
        s = self.synthesizer
        return (
            f"panel of {members} (at least {self.required} must answer), synthesized by "
            f"{s.endpoint_name}:{s.model} with {s.template.ref}"
        )

    def worst_case_cost(self, est_tokens: int) -> Decimal:
        """What one call can cost at most: every member's worst case and the
        synthesizer's, its input taken as the members' longest possible answers; for a
        route, its dearest route's."""
        if self.kind == "route":
            return max(p.worst_case_cost(est_tokens) for p in self.parts)
        members = sum((m.worst_case_cost(est_tokens) for m in self.members), Decimal(0))
        answers = sum(m.params.max_tokens or 0 for m in self.members)
        synth_input = est_tokens + answers + ceil(answers * 0.1)  # a little for its template
        return members + self.synthesizer.worst_case_cost(synth_input)


def parts_of(arm: ArmPlan | CompositePlan) -> list[ArmPlan]:
    """What an arm calls with: itself, or a composite's parts."""
    return arm.parts if isinstance(arm, CompositePlan) else [arm]
