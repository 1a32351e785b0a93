"""Every kind of bad input exits 1 with a message naming the file and the problem,
and leaves the database byte-for-byte unchanged (SPEC §4, §11)."""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from abharness import providers as registry
from abharness.cli.main import cli

from .conftest import FakeProvider, capital_answers, file_digest, make_project, write


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project with one run in its database, made once and copied for each test."""
    root = tmp_path_factory.mktemp("seeded")
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(registry.PROVIDER_TYPES, "fake", "tests.conftest:FakeProvider")
        mp.setattr(FakeProvider, "script", capital_answers())
        make_project(root, mp)
        result = CliRunner().invoke(
            cli, ["run", "experiments/spec.yaml", "--db", "results/abharness.duckdb"]
        )
    assert result.exit_code == 0, result.output
    return root


@pytest.fixture
def db_with_a_run(seeded: Path, project: Path, fake_provider) -> Path:
    fake_provider.script = capital_answers()
    shutil.copytree(seeded, project, dirs_exist_ok=True)
    db = project / "results/abharness.duckdb"
    assert db.exists()
    return db


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


SPEC = "experiments/spec.yaml"


def _yaml_syntax(p: Path) -> None:
    edit(p / SPEC, "baseline: zero-shot", "baseline: [zero-shot")


def _endpoint(url: str) -> Callable[[Path], None]:
    def apply(p: Path) -> None:
        edit(
            p / SPEC,
            "  mock: {type: fake}",
            f'  mock: {{type: fake}}\n  lab: {{type: openai, base_url: "{url}"}}',
        )
        edit(p / SPEC, "arms:", "arms:\n  - {id: lab, provider: lab, model: m, prompt: capitals@1}")

    return apply


def _latin1(path: Path, old: str, new: str) -> Callable[[Path], None]:
    """Write `new` (with a character outside ASCII) in Latin-1: not UTF-8."""

    def apply(p: Path) -> None:
        text = (p / path).read_text(encoding="utf-8")
        assert old in text
        (p / path).write_bytes(text.replace(old, new, 1).encode("latin-1"))

    return apply


def _big_field(p: Path, megabytes: float) -> None:
    data = p / "experiments/data/capitals.jsonl"
    lines = data.read_text().splitlines()
    lines[1] = lines[1].replace(
        '"answer"', f'"context": "{"x" * int(megabytes * 1024 * 1024)}", "answer"'
    )
    data.write_text("\n".join(lines) + "\n")


def _scorer(function: str, trusted: bool = False, project_file: str = "") -> Callable[[Path], None]:
    def apply(p: Path) -> None:
        if project_file:
            write(p / "experiments/myscorers.py", project_file)
        extra = ", trusted: true" if trusted else ""
        edit(
            p / SPEC,
            "scorers:",
            f'scorers:\n  - {{type: python, function: "{function}"{extra}}}',
        )

    return apply


CASES: dict[str, tuple[Callable[[Path], None], list[str], str]] = {
    # name: (break the project, command, what the message must contain (regex))
    "yaml syntax error": (_yaml_syntax, ["run", SPEC], r"spec\.yaml:\d+: YAML syntax error"),
    "unknown key": (
        lambda p: edit(p / SPEC, "defaults: {temperature: 0", "defaults: {tempreature: 0"),
        ["run", SPEC],
        r"spec\.yaml:5: defaults\.tempreature: unknown key 'tempreature'; expected one of: .*temperature",
    ),
    "unknown provider": (
        lambda p: edit(
            p / SPEC,
            "provider: mock, model: m1, prompt: capitals@2",
            "provider: mystery, model: m1, prompt: capitals@2",
        ),
        ["run", SPEC],
        r"spec\.yaml:10: arms\[1\]\.provider: unknown provider 'mystery'",
    ),
    "duplicate arm id": (
        lambda p: edit(p / SPEC, "id: few-shot", "id: zero-shot"),
        ["run", SPEC],
        r"spec\.yaml:10: arms\[1\]\.id: arm id 'zero-shot' is already used by arms\[0\]",
    ),
    "baseline not an arm": (
        lambda p: edit(p / SPEC, "baseline: zero-shot", "baseline: zeroshot"),
        ["run", SPEC],
        r"spec\.yaml:4: baseline: baseline 'zeroshot' is not an arm id",
    ),
    "missing dataset file": (
        lambda p: (p / "experiments/data/capitals.jsonl").unlink(),
        ["run", SPEC],
        r"spec\.yaml:2: dataset: dataset file not found: .*capitals\.jsonl",
    ),
    "malformed JSONL line": (
        lambda p: edit(p / "experiments/data/capitals.jsonl", '{"id": "it"', '{"id": "it",,'),
        ["run", SPEC],
        r"capitals\.jsonl:3: malformed JSON",
    ),
    "template file missing": (
        lambda p: (p / "prompts/capitals/v2.j2").unlink(),
        ["run", SPEC],
        r"spec\.yaml: arms\[1\]\.prompt: .*v2\.j2: template file missing for capitals@2",
    ),
    "template syntax error": (
        lambda p: edit(p / "prompts/capitals/v1.j2", "{{ country }}", "{{ country }"),
        ["run", SPEC],
        r"v1\.j2:5: template syntax error",
    ),
    "variable missing for a case": (
        lambda p: edit(
            p / "experiments/data/capitals.jsonl", '"country": "Japan"', '"nation": "Japan"'
        ),
        ["run", SPEC],
        r"capitals\.jsonl:5: case 'jp': arm zero-shot .*'country' is undefined",
    ),
    "template changed without a version bump": (
        lambda p: edit(p / "prompts/capitals/v1.j2", "What is", "What's"),
        ["run", SPEC],
        r"v1\.j2: capitals@1 changed since it was recorded .*bump the version",
    ),
    "provider option typo": (
        lambda p: (
            edit(
                p / SPEC,
                "  mock: {type: fake}",
                "  mock: {type: fake}\n  lab:\n    type: ollama\n    options: {hostz: [a]}",
            )
            or edit(
                p / SPEC, "arms:", "arms:\n  - {id: o, provider: lab, model: m, prompt: capitals@1}"
            )
        ),
        ["validate", SPEC],
        r"spec\.yaml:10: providers\.lab\.options\.hostz: unknown ollama option 'hostz'; expected one of: hosts",
    ),
    "llamacpp option typo": (
        lambda p: (
            edit(
                p / SPEC,
                "  mock: {type: fake}",
                "  mock: {type: fake}\n  llamacpp: {type: llamacpp, options: {n_ctxx: 512}}",
            )
            or edit(
                p / SPEC,
                "arms:",
                "arms:\n  - {id: g, provider: llamacpp, model: gemma3-270m, prompt: capitals@1}",
            )
        ),
        ["run", SPEC],
        r"providers\.llamacpp\.options\.n_ctxx: unknown llamacpp option 'n_ctxx'; expected one of: n_ctx, n_threads",
    ),
    "misspelt llamacpp model": (
        lambda p: edit(
            p / SPEC,
            "arms:",
            "arms:\n  - {id: g, provider: llamacpp, model: gemma3-270n, prompt: capitals@1}",
        ),
        ["validate", SPEC],
        r"spec\.yaml:\d+: arms\[0\]\.model: llamacpp model 'gemma3-270n' is neither a known alias .* \(did you mean 'gemma3-270m'\?\)",
    ),
    "usage error": (
        lambda p: None,
        ["run", SPEC, "--concurency", "2"],
        r"No such option .--concurency.\. Did you mean .--concurrency",
    ),
    "base_url with another scheme": (
        _endpoint("ftp://gpu-box/v1"),
        ["run", SPEC],
        r"spec\.yaml:\d+: providers\.lab\.base_url: base_url must be an http:// or https:// URL",
    ),
    "base_url without a scheme": (
        _endpoint("gpu-box:8000/v1"),
        ["validate", SPEC],
        r"providers\.lab\.base_url: base_url must be an http:// or https:// URL .*got 'gpu-box:8000/v1'",
    ),
    "duplicate key in the spec": (
        lambda p: edit(p / SPEC, "baseline: zero-shot", "baseline: zero-shot\nbaseline: few-shot"),
        ["run", SPEC],
        r"spec\.yaml:5: baseline: duplicate key 'baseline' \(first at line 4\)",
    ),
    "duplicate key in a mapping of the spec": (
        lambda p: edit(p / SPEC, "max_tokens: 8}", "max_tokens: 8, temperature: 0.7}"),
        ["validate", SPEC],
        r"spec\.yaml:5: temperature: duplicate key 'temperature' \(first at line 5\)",
    ),
    "duplicate key in a template's front matter": (
        lambda p: edit(
            p / "prompts/capitals/v1.j2",
            "variables: [country]",
            "variables: [country]\nvariables: [x]",
        ),
        ["run", SPEC],
        r"v1\.j2:4: variables: duplicate key 'variables' \(first at line 3\)",
    ),
    "duplicate key in a JSONL case": (
        lambda p: edit(
            p / "experiments/data/capitals.jsonl",
            '"country": "Italy"',
            '"country": "Italy", "country": "Rome"',
        ),
        ["run", SPEC],
        r"capitals\.jsonl:3: country: key 'country' appears twice",
    ),
    "spec not UTF-8": (
        _latin1(Path(SPEC), "arms:", "description: caf\u00e9\narms:"),
        ["run", SPEC],
        r"spec\.yaml:8: not UTF-8: byte 0xe9 at byte 17 of the line",
    ),
    "JSONL dataset not UTF-8": (
        _latin1(Path("experiments/data/capitals.jsonl"), "Peru", "P\u00e9ru"),
        ["validate", SPEC],
        r"capitals\.jsonl:6: not UTF-8: byte 0xe9 at byte 27 of the line",
    ),
    "template not UTF-8": (
        _latin1(Path("prompts/capitals/v1.j2"), "What is", "Qu\u00e9 is"),
        ["run", SPEC],
        r"v1\.j2:5: not UTF-8: byte 0xe9",
    ),
    "a case field too large for the store": (
        lambda p: _big_field(p, 5),
        ["validate", SPEC],
        r"capitals\.jsonl:2: context: case de: field 'context' is 5\.0 MB; a field may hold at most 4\.0 MB",
    ),
    "python scorer from the standard library": (
        _scorer("cProfile:run", trusted=True),
        ["run", SPEC],
        r"scorers: scorer python: cProfile:run is in Python's standard library",
    ),
    "python scorer that only re-exports the standard library": (
        _scorer("myscorers:run", project_file="from cProfile import run\n"),
        ["validate", SPEC],
        r"myscorers:run is not a function defined in myscorers .*defined in cProfile",
    ),
    "python scorer that is a builtin": (
        _scorer("myscorers:check", project_file="check = eval\n"),
        ["run", SPEC],
        r"myscorers:check is not a function defined in myscorers .*defined in builtins",
    ),
    "prompt cannot fit the budget": (
        lambda p: edit(p / SPEC, "defaults:", "budget: {max_input_tokens: 3}\ndefaults:"),
        ["validate", SPEC],
        r"capitals\.jsonl:1: case 'fr': arm zero-shot: prompt needs \d+ tokens .* budget is 3",
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_exits_1_names_the_problem_and_writes_nothing(
    name: str, project: Path, db_with_a_run: Path
) -> None:
    breaker, command, expected = CASES[name]
    breaker(project)
    before = file_digest(db_with_a_run)
    staging_before = sorted((db_with_a_run.parent / "staging").glob("*"))
    result = CliRunner().invoke(cli, [*command, "--db", str(db_with_a_run)])
    assert result.exit_code == 1, result.output
    message = " ".join(result.output.split())
    assert re.search(expected, message), message
    assert "Traceback" not in result.output
    assert file_digest(db_with_a_run) == before
    assert sorted((db_with_a_run.parent / "staging").glob("*")) == staging_before


def test_allow_changed_prompts_lets_the_run_go_on(project: Path, db_with_a_run: Path) -> None:
    edit(project / "prompts/capitals/v1.j2", "What is", "What's")
    result = CliRunner().invoke(
        cli, ["run", SPEC, "--db", str(db_with_a_run), "--allow-changed-prompts"]
    )
    assert result.exit_code == 0, result.output
    assert "bump the version" in result.output


def test_csv_dataset_with_extra_field_names_the_line(project: Path, fake_provider) -> None:
    write(
        project / "experiments/data/c.csv",
        "id,country,answer\nfr,France,Paris\nde,Germany,Berlin,extra\n",
    )
    edit(project / SPEC, "data/capitals.jsonl", "data/c.csv")
    result = CliRunner().invoke(cli, ["run", SPEC, "--db", "results/x.duckdb"])
    assert result.exit_code == 1
    assert "c.csv:3: more fields than the 3 header columns" in result.output
    assert not (project / "results/x.duckdb").exists()
