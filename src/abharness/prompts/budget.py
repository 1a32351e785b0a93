"""Fit each rendered prompt to its arm's token budget (SPEC §6).

The budget is ``min(budget.max_input_tokens, context window - max_tokens)``. Over
budget, the template's declared ``truncate`` variables are cut, lowest priority first,
each to the largest token count that still lets the whole prompt fit (binary search
over re-rendered prompts, so the cut is exact for the arm's own tokenizer). A prompt
that still does not fit raises `ContextLengthError`: never a silent cut.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import ContextLengthError
from .templates import PromptTemplate, RenderedPrompt
from .tokenizers import Tokenizer


@dataclass
class FittedPrompt:
    rendered: RenderedPrompt
    est_input_tokens: int
    method: str
    budget: int | None
    truncated: list[dict[str, Any]] = field(default_factory=list)


def input_budget(
    max_input_tokens: int | None, context_window: int | None, max_tokens: int | None
) -> int | None:
    """The tokens a prompt may use, or None when nothing limits it."""
    limits = [max_input_tokens] if max_input_tokens is not None else []
    if context_window is not None:
        limits.append(context_window - (max_tokens or 0))
    return min(limits) if limits else None


def count_tokens(rendered: RenderedPrompt, tokenizer: Tokenizer) -> int:
    if rendered.prompt is not None:
        return tokenizer.count_prompt(rendered.prompt)
    return tokenizer.count_messages(
        [{"role": m.role, "content": m.content} for m in rendered.messages]
    )


def fit_to_budget(
    template: PromptTemplate,
    variables: dict[str, Any],
    tokenizer: Tokenizer,
    budget: int | None,
) -> FittedPrompt:
    """Render `template` with `variables`, truncating declared variables if needed."""
    rendered = template.render(variables)
    used = count_tokens(rendered, tokenizer)
    if budget is None or used <= budget:
        return FittedPrompt(rendered, used, tokenizer.method, budget)

    original = used
    current = dict(variables)
    truncated: list[dict[str, Any]] = []
    for rule in template.front.truncate:
        value = current.get(rule.var)
        if not isinstance(value, str) or not value:
            continue
        head = rule.keep == "head"
        total = len(tokenizer.encode(value))

        def attempt(
            keep: int, var: str = rule.var, value: str = value, head: bool = head
        ) -> tuple[RenderedPrompt, int]:
            cut = tokenizer.truncate(value, keep, head)
            trial = {**current, var: cut}
            if isinstance(trial.get("case"), dict):
                trial["case"] = {**trial["case"], var: cut}
            r = template.render(trial)
            return r, count_tokens(r, tokenizer)

        rendered, used = attempt(0)
        keep = 0
        if used <= budget:
            lo, hi = 0, total  # lo fits, hi does not
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if attempt(mid)[1] <= budget:
                    lo = mid
                else:
                    hi = mid
            keep = lo
            rendered, used = attempt(keep)
        truncated.append(
            {"var": rule.var, "keep": rule.keep, "tokens_before": total, "tokens_after": keep}
        )
        current[rule.var] = tokenizer.truncate(value, keep, head)
        if isinstance(current.get("case"), dict):
            current["case"] = {**current["case"], rule.var: current[rule.var]}
        if used <= budget:
            return FittedPrompt(rendered, used, tokenizer.method, budget, truncated)

    cut = ", ".join(t["var"] for t in truncated) or "nothing (no truncate: variables declared)"
    raise ContextLengthError(
        f"prompt needs {original} tokens ({tokenizer.method}) but the budget is {budget}; "
        f"after truncating {cut} it still needs {used}"
    )
