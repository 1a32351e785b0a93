from __future__ import annotations

import pytest

from abharness.errors import SpecError
from abharness.scorers import build_scorers
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
    with pytest.raises(SpecError, match="cannot import nope:f"):
        scorer(tmp_path, type="python", function="nope:f")


def test_schema_problems_are_spec_errors(tmp_path) -> None:
    with pytest.raises(SpecError, match="invalid JSON schema"):
        scorer(type="json_schema", schema={"type": "objekt"})
    with pytest.raises(SpecError, match="schema file not found"):
        scorer(tmp_path, type="json_schema", schema="missing.json")
    (tmp_path / "s.json").write_text('{"type": "array"}')
    assert scorer(tmp_path, type="json_schema", schema="s.json").score("[1, 2]", CASE).passed


def test_a_raising_scorer_is_recorded_and_fails_its_call(project, fake_provider) -> None:
    import duckdb

    from abharness.experiment import run_experiment

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
