from __future__ import annotations

import pytest

from abharness.errors import SpecError
from abharness.run.scorers import build_scorers
from abharness.spec import Experiment

CASE = {"country": "France", "answer": "Paris"}


def scorer(base_dir=None, **spec):
    x = Experiment.model_validate(
        {
            "name": "t",
            "cases": [CASE],
            "prompt": "p",
            "arms": [{"id": "a", "provider": "llamacpp", "model": "m"}],
            "scorers": [spec],
        }
    )
    return build_scorers(x.scorers, base_dir)[0]


@pytest.mark.parametrize(
    ("spec", "response", "passed"),
    [
        ({"type": "exact", "expected": "{{ case.answer }}"}, " Paris\n", True),
        ({"type": "exact", "expected": "{{ answer }}"}, "paris", False),
        ({"type": "exact", "expected": "{{ answer }}", "ignore_case": True}, "paris", True),
        ({"type": "contains", "expected": "{{ case.answer }}"}, "It is Paris.", True),
        ({"type": "contains", "expected": "{{ case.answer }}"}, "It is PARIS.", False),
        (
            {"type": "contains", "expected": "{{ case.answer }}", "ignore_case": True},
            "It is PARIS.",
            True,
        ),
        ({"type": "regex", "pattern": r"^\s*Par"}, " Paris", True),
        ({"type": "regex", "pattern": r"^Lyon"}, "Paris", False),
        (
            {"type": "contains", "expected": ["Paris", "France"], "match": "all"},
            "Paris, France",
            True,
        ),
        ({"type": "contains", "expected": ["Paris", "France"], "match": "all"}, "Paris", False),
        ({"type": "contains", "expected": ["Lyon", "{{ answer }}"]}, "Paris", True),
        ({"type": "json_valid"}, '{"city": "Paris"}', True),
        ({"type": "json_valid"}, 'Sure! ```json\n{"city": "Paris"}\n```', False),
        ({"type": "json_valid", "extract": True}, 'Sure! ```json\n{"city": "Paris"}\n```', True),
        (
            {"type": "json_schema", "schema": {"type": "object", "required": ["city"]}},
            '{"city": "Paris"}',
            True,
        ),
        (
            {"type": "json_schema", "schema": {"type": "object", "required": ["city"]}},
            '{"town": "Paris"}',
            False,
        ),
        ({"type": "numeric", "expected": "42"}, "The answer is 42.", True),
        ({"type": "numeric", "expected": "1200"}, "about 1,200 people", True),
        ({"type": "numeric", "expected": "3.14", "abs_tol": 0.01}, "pi is 3.1416", True),
        ({"type": "numeric", "expected": "100", "rel_tol": 0.05}, "-104", False),
        ({"type": "numeric", "expected": "7"}, "seven", False),
        ({"type": "similarity", "expected": "{{ answer }}"}, "paris.", True),
        ({"type": "similarity", "expected": "{{ answer }}", "threshold": 0.95}, "Parisss", False),
    ],
)
def test_scorers(spec: dict, response: str, passed: bool) -> None:
    s = scorer(**spec).score(response, CASE)
    assert s.passed is passed and 0 <= s.value <= 1 and s.detail
    if spec["type"] not in ("similarity", "contains"):
        assert s.value == float(passed)


def test_expected_with_an_unknown_variable_is_a_spec_error() -> None:
    with pytest.raises(SpecError, match="'case' object has no attribute 'capital'|capital"):
        scorer(type="contains", expected="{{ case.capital }}").check(CASE)


def test_duplicate_scorer_types_get_distinct_names() -> None:
    x = Experiment.model_validate(
        {
            "name": "t",
            "cases": [CASE],
            "prompt": "p",
            "arms": [{"id": "a", "provider": "llamacpp", "model": "m"}],
            "scorers": [{"type": "contains"}, {"type": "contains"}],
        }
    )
    assert [s.name for s in build_scorers(x.scorers)] == ["contains", "contains_2"]


def test_similarity_value_is_the_ratio() -> None:
    s = scorer(type="similarity", expected="{{ answer }}").score("Pari", CASE)
    assert 0.8 < s.value < 1 and s.passed


def test_python_scorer_from_the_project(tmp_path, monkeypatch) -> None:
    (tmp_path / "my_scoring.py").write_text(
        "def length_ok(response, case):\n    return (1.0 if len(response) < 10 else 0.25, f'{len(response)} chars')\n"
        "def broken(response, case):\n    return 2\n"
    )
    monkeypatch.chdir(tmp_path)
    ok = scorer(tmp_path, type="python", function="my_scoring:length_ok").score("Paris", CASE)
    assert (ok.value, ok.passed, ok.detail) == (1.0, True, "5 chars")
    assert (
        scorer(tmp_path, type="python", function="my_scoring:length_ok")
        .score("x" * 20, CASE)
        .passed
        is False
    )
    with pytest.raises(ValueError, match="expected a value in"):
        scorer(tmp_path, type="python", function="my_scoring:broken").score("Paris", CASE)
    with pytest.raises(SpecError, match="nope is not a file in .* trusted: true"):
        scorer(tmp_path, type="python", function="nope:f")


def test_a_project_file_named_like_a_library_does_not_shadow_it(tmp_path, monkeypatch) -> None:
    import sys

    import rapidfuzz

    (tmp_path / "rapidfuzz.py").write_text("def score(response, case):\n    return 1.0\n")
    monkeypatch.chdir(tmp_path)
    before = list(sys.path)
    s = scorer(tmp_path, type="python", function="rapidfuzz:score").score("x", CASE)
    assert s.value == 1.0
    assert sys.path == before and sys.modules["rapidfuzz"] is rapidfuzz
    assert scorer(tmp_path, type="similarity", expected="{{ answer }}").score("Paris", CASE).passed


@pytest.mark.parametrize(
    "target",
    ["builtins:eval", "os:system", "subprocess:run", "cProfile:run", "pdb:run", "json:loads"],
)
def test_the_standard_library_is_never_a_scorer_even_trusted(tmp_path, target: str) -> None:
    """A deny-list could not keep its promise (cProfile:run executes its argument); the
    rule is where the function is defined."""
    with pytest.raises(SpecError, match="in Python's standard library"):
        scorer(tmp_path, type="python", function=target, trusted=True)


def test_a_project_file_must_define_its_scorer(tmp_path) -> None:
    (tmp_path / "mine.py").write_text(
        "import os\nfrom cProfile import run\n\ndef score(response, case):\n    return 1.0\n"
    )
    assert scorer(tmp_path, type="python", function="mine:score").score("x", CASE).value == 1.0
    for name in ("run", "os"):
        with pytest.raises(SpecError, match=f"mine:{name} is not a function defined in mine"):
            scorer(tmp_path, type="python", function=f"mine:{name}")


def test_an_installed_third_party_package_needs_trusted(tmp_path) -> None:
    with pytest.raises(SpecError, match="trusted: true"):
        scorer(tmp_path, type="python", function="jsonschema.validators:validate")
    assert scorer(tmp_path, type="python", function="jsonschema.validators:validate", trusted=True)


def test_schema_problems_are_spec_errors(tmp_path) -> None:
    with pytest.raises(SpecError, match="invalid JSON schema"):
        scorer(type="json_schema", schema={"type": "objekt"})
    with pytest.raises(SpecError, match="schema file not found"):
        scorer(tmp_path, type="json_schema", schema="missing.json")
    (tmp_path / "s.json").write_text('{"type": "array"}')
    assert scorer(tmp_path, type="json_schema", schema="s.json").score("[1, 2]", CASE).passed


def test_a_raising_scorer_is_recorded_and_fails_its_call(project, fake_provider) -> None:
    import duckdb

    from abharness.run.experiment import run_experiment

    (project / "bad_scorer.py").write_text(
        "def boom(response, case):\n    raise RuntimeError('scorer bug')\n"
    )
    spec = project / "experiments/spec.yaml"
    spec.write_text(spec.read_text() + "  - {type: python, function: 'bad_scorer:boom'}\n")
    fake_provider.script = lambda r: "Paris"
    out = run_experiment(spec, db=project / "r.duckdb")
    con = duckdb.connect(str(out.db), read_only=True)
    details = con.execute(
        "SELECT DISTINCT passed, detail FROM scores WHERE scorer = 'python'"
    ).fetchall()
    passes = con.execute("SELECT max(pass_rate) FROM arm_summary").fetchone()
    con.close()
    assert details == [(None, "scorer error: scorer bug")]
    assert passes == (0.0,)  # France answered right, but a scorer error is not a pass


@pytest.mark.parametrize(
    ("answer", "scale", "value"),
    [
        ("Score: 8", (0, 10), 0.8),
        ("**Rating:** 4", (1, 5), 0.75),
        ("I'd give it 7/10.", (0, 10), 0.7),
        ("7 out of 10", (0, 10), 0.7),
        ("The answer names Paris (2 of 2 facts). Score 9", (0, 10), 0.9),
        ("3", (1, 5), 0.5),
        ("great answer", (0, 10), None),
        ("Score: 12", (0, 10), None),
    ],
)
def test_judge_score_parsing(answer: str, scale: tuple[float, float], value: float | None) -> None:
    from abharness.run.scorers import parse_judge_score

    got = parse_judge_score(answer, *scale)
    assert got == (pytest.approx(value) if value is not None else None)


def test_llm_judge_calls_go_through_the_runner_and_are_logged(project, fake_provider) -> None:
    import json

    import duckdb
    from click.testing import CliRunner

    from abharness.cli.main import cli
    from abharness.run.experiment import run_experiment

    from .conftest import capital_answers, write

    write(
        project / "prompts/judge/v1.j2",
        """
        {% block prompt %}Rate this answer from 0 to 10.
        Question: capital of {{ country }}? Expected: {{ expected }}. Answer: {{ response }}
        Score:{% endblock %}
        """,
    )
    spec = project / "experiments/spec.yaml"
    spec.write_text(
        spec.read_text()
        + (
            "  - {type: llm_judge, name: judge, provider: mock, model: judge-model, rubric: judge@1,\n"
            "     expected: '{{ case.answer }}', price: {input_per_mtok: 1000, output_per_mtok: 1000}}\n"
        )
    )
    answers = capital_answers({"France", "Japan", "Italy"})

    def script(request):
        if request.prompt.startswith("Rate this answer"):
            return (
                "Score: 9" if "Expected: Paris. Answer: Paris" in request.prompt else "I'd say 2/10"
            )
        return answers(request)

    fake_provider.script = script
    out = run_experiment(spec, db=project / "r.duckdb")
    assert not out.error_rate_exceeded, out.failures
    con = duckdb.connect(str(out.db), read_only=True)
    judge_calls = con.execute(
        "SELECT count(*), count(DISTINCT judged_call_id), sum(cost_usd) > 0 FROM calls "
        "WHERE arm_id = 'judge-judge'"
    ).fetchone()
    judged = con.execute(
        "SELECT c.case_id, s.value, s.passed FROM scores s JOIN calls c USING (call_id) "
        "WHERE s.scorer = 'judge' ORDER BY 1"
    ).fetchall()
    role = con.execute("SELECT role FROM arms WHERE arm_id = 'judge-judge'").fetchone()
    con.close()
    assert judge_calls == (12, 12, True) and role == ("judge",)
    assert ("fr", 0.9, True) in judged and ("jp", 0.2, False) in judged and len(judged) == 12
    report = json.loads(
        CliRunner()
        .invoke(cli, ["report", out.run_id, "--format", "json", "--db", str(out.db)])
        .output
    )
    assert [a["arm_id"] for a in report["arms"]] == ["zero-shot", "few-shot"]
    assert all(a["judge_cost_usd"] > 0 for a in report["arms"])
    assert all(a["n"] == 6 for a in report["arms"])  # judge calls are not the arms' calls
