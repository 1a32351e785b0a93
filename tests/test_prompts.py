from __future__ import annotations

from pathlib import Path

import pytest

from abharness.errors import TemplateError
from abharness.prompts.templates import PromptLibrary

from .conftest import write


def test_raw_prompt_and_extends_override_a_nested_block(project: Path) -> None:
    lib = PromptLibrary(project / "prompts")
    v1 = lib.resolve("capitals@1").render({"country": "Chile"})
    v2 = lib.resolve("capitals@2").render({"country": "Chile"})
    assert v1.is_raw and v1.prompt == "Q: What is the capital of Chile?\nA:"
    assert (
        v2.prompt
        == "Q: What is the capital of Portugal?\nA: Lisbon\nQ: What is the capital of Chile?\nA:"
    )


def test_bare_name_resolves_to_the_highest_version(project: Path) -> None:
    write(project / "prompts/capitals/v10.j2", '{% extends "capitals/v1.j2" %}')
    t = PromptLibrary(project / "prompts").resolve("capitals")
    assert (t.version, t.ref) == (10, "capitals@10")


def test_chat_blocks_become_messages_in_document_order(tmp_path: Path) -> None:
    write(
        tmp_path / "qa/v1.j2",
        """
        {% block system %}You answer with one word.{% endblock %}
        {% block user_1 %}Capital of France?{% endblock %}
        {% block assistant_1 %}Paris{% endblock %}
        {% block user %}Capital of {{ country }}?{% endblock %}
        """,
    )
    rendered = PromptLibrary(tmp_path).resolve("qa@1").render({"country": "Peru"})
    assert [(m.role, m.content) for m in rendered.messages] == [
        ("system", "You answer with one word."),
        ("user", "Capital of France?"),
        ("assistant", "Paris"),
        ("user", "Capital of Peru?"),
    ]


def test_hash_covers_parents_and_includes(project: Path) -> None:
    write(project / "prompts/shared/v1.j2", "{% block prompt %}x{% endblock %}")
    write(
        project / "prompts/capitals/v3.j2",
        """
        {% extends "capitals/v1.j2" %}
        {% block examples %}{% include "shared/v1.j2" %}{% endblock %}
        """,
    )
    before = {
        r: PromptLibrary(project / "prompts").resolve(r).hash for r in ("capitals@2", "capitals@3")
    }
    path = project / "prompts/capitals/v1.j2"
    path.write_text(path.read_text().replace("What is", "What's"))
    after_parent = {
        r: PromptLibrary(project / "prompts").resolve(r).hash for r in ("capitals@2", "capitals@3")
    }
    assert before["capitals@2"] != after_parent["capitals@2"]
    (project / "prompts/shared/v1.j2").write_text("{% block prompt %}y{% endblock %}")
    assert (
        PromptLibrary(project / "prompts").resolve("capitals@3").hash != after_parent["capitals@3"]
    )


def test_strict_undefined_and_sandbox(tmp_path: Path) -> None:
    write(tmp_path / "p/v1.j2", "{% block prompt %}{{ a }}{% endblock %}")
    write(tmp_path / "p/v2.j2", "{% block prompt %}{{ a.__class__.__mro__ }}{% endblock %}")
    lib = PromptLibrary(tmp_path)
    with pytest.raises(TemplateError, match="'a' is undefined"):
        lib.resolve("p@1").render({})
    with pytest.raises(TemplateError):
        lib.resolve("p@2").render({"a": "x"})


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("{% block prompt %}a{% endblock %}{% block user %}b{% endblock %}", "cannot be combined"),
        ("{% block question %}a{% endblock %}", "question are not messages"),
        ("no blocks at all", "no message blocks"),
        (
            "---\ndescription: [unclosed\n---\n{% block prompt %}{% endblock %}",
            "front matter is not valid YAML",
        ),
        ("---\nvariabels: [a]\n---\n{% block prompt %}{% endblock %}", "front matter"),
        ('{% extends "p/v9.j2" %}', "'p/v9.j2' does not exist"),
    ],
)
def test_template_structure_errors(tmp_path: Path, source: str, message: str) -> None:
    write(tmp_path / "p/v1.j2", source)
    with pytest.raises(TemplateError, match=message):
        PromptLibrary(tmp_path).resolve("p@1")


def test_bad_reference_and_missing_version(project: Path) -> None:
    lib = PromptLibrary(project / "prompts")
    with pytest.raises(TemplateError, match="not of the form"):
        lib.resolve("Capitals@x")
    with pytest.raises(TemplateError, match="versions present: v1, v2"):
        lib.resolve("capitals@7")


def test_prompts_cli_list_show_diff(project: Path) -> None:
    from click.testing import CliRunner

    from abharness.cli.main import cli

    runner = CliRunner()
    listing = runner.invoke(cli, ["prompts", "list", "--dir", "prompts"])
    lib = PromptLibrary(project / "prompts")
    assert listing.exit_code == 0
    for ref in ("capitals@1", "capitals@2"):
        assert ref in listing.output and lib.resolve(ref).hash in listing.output
    show = runner.invoke(cli, ["prompts", "show", "capitals", "--dir", "prompts"])
    assert "capitals@2" in show.output and "extends: capitals/v1.j2" in show.output
    assert (project / "prompts/capitals/v2.j2").read_text() in show.output
    diff = runner.invoke(cli, ["prompts", "diff", "capitals@1", "capitals@2", "--dir", "prompts"])
    assert '+{% extends "capitals/v1.j2" %}' in diff.output and diff.output.startswith("--- ")
    missing = runner.invoke(cli, ["prompts", "show", "capitals@9", "--dir", "prompts"])
    assert missing.exit_code == 1 and "versions present: v1, v2" in missing.output
