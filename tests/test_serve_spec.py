"""The spec's `serve:` section (SPEC §16) and the client's messages as a prompt."""

from __future__ import annotations

from pathlib import Path

import pytest

from abharness.errors import InvalidInput, SpecError
from abharness.prompts.client import ClientMessages, client_variables
from abharness.prompts.templates import PromptLibrary
from abharness.run.experiment import prepare
from abharness.run.plan import build_plan
from abharness.spec.load import load_spec

from .conftest import write

ARMS = """\
arms:
  - {id: control, provider: openai, model: a}
  - {id: treatment, provider: openai, model: b}
  - {id: candidate, provider: openai, model: c}
"""


def serve_spec(tmp_path: Path, serve: str, extra: str = "") -> Path:
    (tmp_path / "prompts").mkdir(exist_ok=True)
    return write(
        tmp_path / "s.yaml",
        f"name: live\nprompts_dir: prompts\n{extra}{ARMS}serve:\n{serve}",
    )


def test_the_spec_example_loads_without_dataset_or_prompt(tmp_path: Path) -> None:
    spec = load_spec(
        serve_spec(
            tmp_path,
            "  split: {control: 50, treatment: 50}\n  sticky: user\n  shadow: [candidate]\n"
            "  fallback: [control]\n  keys_env: ABHARNESS_SERVE_KEYS\n  rate_limit: {rpm: 600}\n",
        )
    )
    serve = spec.experiment.serve
    assert serve is not None and serve.split == {"control": 50, "treatment": 50}
    assert serve.shadow == ["candidate"] and serve.rate_limit and serve.rate_limit.rpm == 600
    assert spec.baseline == "control"  # the first arm of the split


@pytest.mark.parametrize(
    ("serve", "message"),
    [
        (
            "  split: {control: 50, nope: 50}\n",
            r"s\.yaml:8: serve\.split\.nope: serve\.split names 'nope'",
        ),
        ("  split: {control: 0, treatment: 1}\n", r"serve\.split\.control: .*greater than 0"),
        ("  split: {control: -2}\n", r"serve\.split\.control: .*greater than 0"),
        ("  split: {}\n", r"serve\.split: .*at least 1"),
        (
            "  split: {control: 1}\n  shadow: [ghost]\n",
            r"serve\.shadow: serve\.shadow names 'ghost'",
        ),
        ("  split: {control: 1}\n  shadow: [control]\n", r"'control' is already in serve\.split"),
        ("  split: {control: 1}\n  sticky: cookie\n", r"serve\.sticky: .*'user' or 'none'"),
        ("  split: {control: 1}\n  rate_limit: {rpm: 0}\n", r"serve\.rate_limit\.rpm"),
        ("  split: {control: 1}\n  keyz_env: X\n", r"unknown key 'keyz_env'"),
    ],
)
def test_a_bad_serve_section_names_its_key(tmp_path: Path, serve: str, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        load_spec(serve_spec(tmp_path, serve))


def test_the_baseline_must_be_assigned(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"baseline 'candidate' must be in serve\.split"):
        load_spec(serve_spec(tmp_path, "  split: {control: 1}\n", "baseline: candidate\n"))


def test_a_serve_only_spec_cannot_be_run(tmp_path: Path) -> None:
    path = serve_spec(tmp_path, "  split: {control: 1}\n")
    with pytest.raises(InvalidInput, match="no dataset: or cases: to run"):
        prepare(path, tmp_path / "r.duckdb")


def test_without_a_template_the_client_messages_pass_through(tmp_path: Path) -> None:
    plan = build_plan(load_spec(serve_spec(tmp_path, "  split: {control: 1}\n")), online=True)
    arm = plan.arms[0]
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "capital of Peru?"},
    ]
    fitted = arm.fit_vars(client_variables(messages))  # type: ignore[union-attr]
    assert [(m.role, m.content) for m in fitted.rendered.messages] == [
        ("system", "be brief"),
        ("user", "capital of Peru?"),
    ]
    raw = arm.fit_vars(client_variables(None, "Once upon"))  # type: ignore[union-attr]
    assert raw.rendered.prompt == "Once upon"


def test_a_template_wraps_the_conversation(tmp_path: Path) -> None:
    write(
        tmp_path / "prompts/wrap/v1.j2",
        "{% block system %}Answer in one word.{% endblock %}\n"
        "{% block user %}Question: {{ prompt }}{% endblock %}\n",
    )
    write(tmp_path / "prompts/sys/v1.j2", "{% block system %}Be kind.{% endblock %}\n")
    library = PromptLibrary(tmp_path / "prompts")
    conversation = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "capital of Peru?"},
    ]
    wrapped = ClientMessages.around(library.resolve("wrap@1")).render(
        client_variables(conversation)
    )
    assert [(m.role, m.content) for m in wrapped.messages] == [
        ("system", "Answer in one word."),
        ("user", "hi"),
        ("assistant", "hello"),
        ("user", "Question: capital of Peru?"),
    ]
    system_only = ClientMessages.around(library.resolve("sys@1")).render(
        client_variables(conversation)
    )
    assert [m.role for m in system_only.messages] == ["system", "user", "assistant", "user"]
    # a completion request through a chat template: its prompt is the user's message
    completion = ClientMessages.around(library.resolve("sys@1")).render(
        client_variables(None, "Once upon")
    )
    assert [(m.role, m.content) for m in completion.messages][-1] == ("user", "Once upon")
