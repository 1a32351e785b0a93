"""From a validated spec to what the runner needs, with every pre-call check.

`build_plan` resolves each arm's template, parameters and provider (not yet loaded).
`check_cases` renders every arm's prompt for every case and evaluates every scorer's
``expected``, so a missing variable is found before anything runs.
`check_prompt_versions` refuses a ``name@N`` whose content changed since the
database recorded it. `check_budgets` (for ``validate``) counts tokens with each
arm's own tokenizer and fits every prompt to its budget.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ..errors import (
    CallError,
    InvalidInput,
    PromptChangedError,
    SetupError,
    SpecError,
    TemplateError,
)
from ..prompts.client import ClientMessages
from ..prompts.templates import PromptLibrary, PromptTemplate
from ..prompts.tokenizers import release_encodings
from ..providers import Provider, provider_class
from ..spec.dataset import Case, check_dataset, iter_cases
from ..spec.load import LoadedSpec, part_ids
from ..spec.models import (
    DEFAULT_FALLBACK_ON,
    Arm,
    GenerationParams,
    LlmJudgeScorer,
    Part,
    ProviderSpec,
)
from ..store.queries import DatabaseBusy, recorded_prompt_hashes
from .arm import ArmPlan, CompositePlan, parts_of
from .scorers import Scorer, build_scorers


@dataclass
class Plan:
    spec: LoadedSpec
    arms: list[ArmPlan | CompositePlan]  # the compared arms, in spec order
    scorers: list[Scorer]
    providers: list[Provider]
    n_cases: int = 0
    judges: dict[str, ArmPlan] = field(default_factory=dict)  # llm_judge scorer name -> its arm
    # --batch: the arms that run live all the same, with why
    live_notes: list[str] = field(default_factory=list)

    @property
    def batched(self) -> list[ArmPlan]:
        """The arms whose calls go through their provider's batch API (SPEC §13)."""
        return [a for a in self.arms if isinstance(a, ArmPlan) and a.batch]

    @property
    def n_calls(self) -> int:
        return self.n_cases * len(self.arms) * self.spec.experiment.repeats

    def unavailable(self) -> list[tuple[ArmPlan, str]]:
        """Arms and judges that cannot be called here, with why (an API key unset)."""
        return [(a, why) for a in self.all_arms() if (why := a.provider.unavailable())]

    def drop_unavailable(self, skip: bool) -> list[tuple[ArmPlan | CompositePlan, str]]:
        """Leave out the arms that cannot run when `skip`, else refuse them; return them.
        A composite cannot run when one of its parts cannot.

        A judge or the baseline that cannot run is refused either way: without it no
        arm could be scored or compared."""
        part_missing = dict(self.unavailable())
        if not part_missing:
            return []
        missing: list[tuple[ArmPlan | CompositePlan, str]] = []
        for arm in self.arms:
            whys = [part_missing[p] for p in parts_of(arm) if p in part_missing]
            if whys:
                missing.append((arm, whys[0]))
        missing += [(j, part_missing[j]) for j in self.judges.values() if j in part_missing]
        lines = "; ".join(f"{a.id}: {why}" for a, why in missing)
        essential = [a.id for a, _ in missing if a.is_baseline or a in self.judges.values()]
        if essential:
            raise SetupError(
                f"cannot run {', '.join(essential)} ({lines}); set what is missing "
                "(--skip-unavailable cannot leave out the baseline or a judge: nothing could be "
                "compared or scored without it)",
                file=self.spec.path,
            )
        if not skip:
            raise SetupError(
                f"these arms cannot run here: {lines}. Set what is missing, or pass "
                "--skip-unavailable to run the other arms and report these as not run",
                file=self.spec.path,
            )
        gone = {id(a) for a, _ in missing}
        self.arms = [a for a in self.arms if id(a) not in gone]
        self.providers = [
            p for p in self.providers if any(a.provider is p for a in self.all_arms())
        ]
        return missing

    def warm_up(self) -> None:
        """Import the providers' SDKs, make the arms' tokenizers and load genai-prices'
        data, the work the first calls would do (~0.5 s), so that it runs in a thread
        while the run's store is set up. Anything that fails here fails again in the
        call that needs it, and is recorded there."""
        for module in {p.sdk for p in self.providers if p.sdk}:
            with contextlib.suppress(Exception):
                importlib.import_module(module)
        for arm in self.all_arms():
            with contextlib.suppress(Exception):
                arm.tokenizer()  # made once, kept on the arm
            with contextlib.suppress(Exception):
                arm.is_priced()  # an API arm without a price: genai-prices' data

    def release_tokenizers(self) -> None:
        """Drop the arms' tokenizers and the loaded encodings once the calls are made;
        `ArmPlan.tokenizer` makes them again if asked."""
        for arm in self.all_arms():
            arm._tokenizer = None
        release_encodings()

    def callers(self) -> list[ArmPlan]:
        """What the arms call with: the arms, a composite's parts in its place."""
        return [part for arm in self.arms for part in parts_of(arm)]

    def all_arms(self) -> list[ArmPlan]:
        """Everything that makes calls: `callers`, then the judges."""
        return [*self.callers(), *self.judges.values()]

    def cases(self) -> Iterator[Case]:
        x = self.spec.experiment
        return iter_cases(self.spec.dataset_path(), x.cases, self.spec.path)


def build_plan(spec: LoadedSpec, *, batch: bool = False, online: bool = False) -> Plan:
    """Resolve templates, parameters, providers and scorers; raises `InvalidInput`.
    `batch` (``--batch``): every single-model arm whose provider has a batch API runs
    in batch mode; the others run live, with a note saying why (`Plan.live_notes`).
    `online` (`abharness serve`): the arms' prompts are the clients' messages, wrapped by
    the arm's template if it has one (`prompts.client`)."""
    x = spec.experiment
    library = PromptLibrary(spec.prompts_dir)
    providers: dict[tuple[str, str], Provider] = {}
    live_notes: list[str] = []

    def batch_mode(arm: Arm, provider: Provider, model_key: tuple[str | int, ...]) -> bool:
        """Whether `arm` runs in batch mode; an arm that asks for it on a provider
        without a batch API is an error naming the arm and the line."""
        mode = spec.params(arm).mode
        if mode == "live" or (mode is None and not batch):
            return False
        why = provider.batch_unsupported()
        if why is None:
            return True
        if mode is None:  # --batch asked for every arm that can
            live_notes.append(f"{arm.id} runs live: {why}")
            return False
        where: tuple[str | int, ...] = (
            (*model_key[:-1], "mode") if arm.mode == "batch" else ("defaults", "mode")
        )
        raise spec.error_at(f"arm {arm.id}: mode: batch, but {why}", where)

    def arm_plan(
        arm: Arm,
        where: str,
        model_key: tuple[str | int, ...],
        role: str = "arm",
        parent: str | None = None,
    ) -> ArmPlan:
        assert arm.provider is not None and arm.model is not None
        ref = arm.prompt or x.prompt
        if ref is None and not online:  # a serve spec's arm may leave it to the client
            raise SpecError(
                f"arm {arm.id} has no prompt: it can be served (abharness serve), not run; "
                "set prompt on the arm or at the top of the spec",
                file=spec.path,
                key=where,
            )
        try:
            template: PromptTemplate | None = library.resolve(ref) if ref else None
        except TemplateError as exc:
            raise TemplateError(f"{exc}", file=spec.path, key=where) from exc
        if online and role in ("arm", "route"):
            template = ClientMessages.around(template)
        assert template is not None
        endpoint = spec.endpoint(arm)
        cls = provider_class(endpoint.type)
        key = (arm.provider, arm.model if cls.per_model else "")
        if key not in providers:
            _check_options(spec, arm.provider, endpoint, cls)
            provider = cls(arm.provider, endpoint, arm.model if cls.per_model else None)
            try:
                provider.check_setup()
            except SetupError as exc:
                loc = model_key if cls.per_model else ("providers", arm.provider)
                raise spec.error_at(exc.problem, loc) from exc
            providers[key] = provider
        return ArmPlan(
            arm=arm,
            endpoint_name=arm.provider,
            endpoint=endpoint,
            template=template,
            params=spec.params(arm),
            tier=spec.tier(arm),
            provider=providers[key],
            is_baseline=arm.id == spec.baseline and role == "arm",
            max_input_tokens=x.budget.max_input_tokens,
            role=role,
            parent=parent,
            # judges and a composite's parts run live
            batch=role == "arm" and batch_mode(arm, providers[key], model_key),
        )

    arms: list[ArmPlan | CompositePlan] = []
    for i, arm in enumerate(x.arms):
        where = f"arms[{i}].prompt" if arm.prompt else "prompt"
        if arm.kind == "model":
            arms.append(arm_plan(arm, where, ("arms", i, "model")))
            continue
        ids = part_ids(arm)
        inherited = arm.model_dump(exclude_none=True, include=set(GenerationParams.model_fields))
        specs: list[tuple[Part, str, str | None, tuple[str | int, ...]]] = []
        if arm.panel is not None:
            specs += [
                (m, "member", arm.prompt, ("arms", i, "panel", "members", j, "model"))
                for j, m in enumerate(arm.panel.members)
            ]
            synth = arm.panel.synthesizer
            specs.append(
                (synth, "synthesizer", synth.prompt, ("arms", i, "panel", "synthesizer", "model"))
            )
        else:
            specs += [
                (r, "route", arm.prompt, ("arms", i, "route", j, "model"))
                for j, r in enumerate(arm.route or [])
            ]
        parts = []
        for part_id, (part, role, prompt, loc) in zip(ids, specs, strict=True):
            own = part.model_dump(exclude_none=True, exclude={"prompt"})
            part_arm = Arm(id=part_id, **{**inherited, **own}, prompt=prompt, tier=arm.tier)
            parts.append(arm_plan(part_arm, where, loc, role, arm.id))
        arms.append(
            CompositePlan(
                arm,
                parts,
                is_baseline=arm.id == spec.baseline,
                required=arm.panel.required if arm.panel is not None else 0,
                fallback_on=frozenset(arm.fallback_on or DEFAULT_FALLBACK_ON),
            )
        )
    try:
        scorers = build_scorers(x.scorers, spec.path.parent)
    except SpecError as exc:
        raise SpecError(exc.problem, file=spec.path, key="scorers") from exc
    judges = {}
    for i, (scorer, sc) in enumerate(zip(scorers, x.scorers, strict=True)):
        if isinstance(sc, LlmJudgeScorer):
            judge = Arm(
                id=f"judge-{scorer.name}",
                provider=sc.provider,
                model=sc.model,
                prompt=sc.rubric,
                temperature=sc.temperature,
                max_tokens=sc.max_tokens,
                price=sc.price,
            )
            judges[scorer.name] = arm_plan(
                judge, f"scorers[{i}].rubric", ("scorers", i, "model"), role="judge"
            )
    if batch:
        live_notes += [
            f"{a.id} runs live: a {a.kind} arm's calls depend on each other's answers"
            for a in arms
            if isinstance(a, CompositePlan)
        ]
    return Plan(spec, arms, scorers, list(providers.values()), judges=judges, live_notes=live_notes)


def _check_options(
    spec: LoadedSpec, name: str, endpoint: ProviderSpec, cls: type[Provider]
) -> None:
    """The endpoint's ``options`` checked against the provider's typed model: a typo such
    as ``hostz`` is an error naming its line."""
    try:
        cls.Options.model_validate(endpoint.options)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc: tuple[str | int, ...] = ("providers", name, "options", *err["loc"])
        if err["type"] == "extra_forbidden":
            allowed = ", ".join(cls.Options.model_fields) or "none"
            problem = (
                f"unknown {cls.type_name} option {err['loc'][-1]!r}; expected one of: {allowed}"
            )
        else:
            problem = f"{err['msg']} (got {err.get('input')!r})"
        raise spec.error_at(problem, loc) from exc


def check_cases(plan: Plan) -> int:
    """Render every prompt and scorer for every case; return the number of cases."""
    spec = plan.spec
    source = spec.dataset_path() or spec.path
    n = check_dataset(
        spec.dataset_path(), spec.experiment.cases, spec.path, spec.experiment.cluster
    )
    for case in plan.cases():
        variables = case.template_vars()
        for arm in plan.callers():
            extra: dict[str, Any] = {"members": []} if arm.role == "synthesizer" else {}
            try:
                arm.template.render({**variables, **extra})
            except TemplateError as exc:
                raise TemplateError(
                    f"arm {arm.id} ({arm.template.ref}, {arm.template.path}): {exc.problem}",
                    file=source,
                    line=case.line,
                    key=f"case {case.id!r}",
                ) from exc
        for name, judge in plan.judges.items():
            try:
                judge.template.render({**variables, "response": "", "expected": None})
            except TemplateError as exc:
                raise TemplateError(
                    f"judge {name} ({judge.template.ref}): {exc.problem}",
                    file=source,
                    line=case.line,
                    key=f"case {case.id!r}",
                ) from exc
        for scorer in plan.scorers:
            try:
                scorer.check(case.data)
            except SpecError as exc:
                raise SpecError(
                    exc.problem, file=source, line=case.line, key=f"case {case.id!r}"
                ) from exc
    plan.n_cases = n
    return n


def check_prompt_versions(plan: Plan, db: Path, *, allow_changed: bool = False) -> list[str]:
    """Refuse a template whose content changed under the same ``name@N``.

    Returns warnings (when `allow_changed` lets a change through)."""
    warnings = []
    try:
        recorded = recorded_prompt_hashes(db)
    except DatabaseBusy as exc:
        return [
            f"prompt versions not checked against the database: {exc}; "
            "the merge at the end will wait for it"
        ]
    for arm in plan.callers():
        t = arm.template
        hashes = recorded.get((t.name, t.version), set())
        if hashes and t.hash not in hashes:
            msg = (
                f"{t.ref} changed since it was recorded in {db} (hash {t.hash}, recorded "
                f"{', '.join(sorted(hashes))}): bump the version (save it as "
                f"v{max(arm.template._library.versions(t.name)) + 1}.j2) or pass --allow-changed-prompts"
            )
            if not allow_changed:
                raise PromptChangedError(msg, file=t.path)
            warnings.append(msg)
    return warnings


def check_budgets(plan: Plan) -> list[InvalidInput]:
    """Fit every prompt to its arm's budget with the arm's tokenizer (loads local models,
    needs no API key)."""
    problems: list[InvalidInput] = []
    source = plan.spec.dataset_path() or plan.spec.path
    for case in plan.cases():
        for arm in plan.callers():
            if arm.role == "synthesizer":
                continue  # its prompt holds the members' answers: fitted when they come
            try:
                arm.fit(case)
            except (
                CallError
            ) as exc:  # context_length, or e.g. a chat prompt for a model without a chat template
                problems.append(
                    InvalidInput(
                        f"arm {arm.id}: {exc}", file=source, line=case.line, key=f"case {case.id!r}"
                    )
                )
    return problems


def check_warnings(plan: Plan) -> list[str]:
    """What will run but deserves a look: unpriced API models, parameters an API ignores.

    With ``max_cost_usd`` set, an unpriced arm is an error instead: the cap could not
    be enforced for it."""
    warnings = []
    for arm in plan.callers():
        if not arm.is_priced():
            if plan.spec.experiment.max_cost_usd is not None:
                raise SpecError(
                    f"arm {arm.id}: no price is known for {arm.model!r} on {arm.endpoint_name}, "
                    "so max_cost_usd cannot be enforced; set price: {input_per_mtok, "
                    "output_per_mtok} on the arm or its provider",
                    file=plan.spec.path,
                    key="max_cost_usd",
                )
            warnings.append(
                f"arm {arm.id}: genai-prices has no price for {arm.model!r} on "
                f"{arm.endpoint_name}; its cost will be null (set price: on the arm)"
            )
        ignored = [n for n in arm.provider.unsupported_params if getattr(arm.params, n) is not None]
        if ignored:
            warnings.append(
                f"arm {arm.id}: {arm.endpoint.type} does not accept {', '.join(ignored)}; "
                "calls run without them (recorded as ignored_params)"
            )
    return warnings
