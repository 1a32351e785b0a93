from __future__ import annotations

import pytest

from abharness.errors import SpecError
from abharness.scorers import build_scorers
from abharness.spec import Experiment

CASE = {"country": "France", "answer": "Paris"}


def scorer(**spec):
    x = Experiment.model_validate(
        {
            "name": "t",
            "cases": [CASE],
            "prompt": "p",
            "arms": [{"id": "a", "provider": "llamacpp", "model": "m"}],
            "scorers": [spec],
        }
    )
    return build_scorers(x.scorers)[0]


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
    ],
)
def test_scorers(spec: dict, response: str, passed: bool) -> None:
    s = scorer(**spec).score(response, CASE)
    assert (s.passed, s.value) == (passed, float(passed)) and s.detail


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
