"""What `abharness run` does before its first request (BENCHMARKS.md, time to first
call): the SDK import and tokenizers are made in a warm-up thread, and a failure there
is left for the call that needs it to report."""

from __future__ import annotations

from pathlib import Path

import pytest

from abharness.run.experiment import prepare

from .conftest import write


def spec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("FAKE_KEY", "k")
    write(tmp_path / "prompts/q/v1.j2", "{% block user %}Capital of {{ country }}?{% endblock %}\n")
    return write(
        tmp_path / "spec.yaml",
        """
name: warm
prompts_dir: prompts
prompt: q@1
cases: [{id: c1, country: France}]
providers:
  gateway: {type: openai, base_url: "http://127.0.0.1:9/v1", api_key_env: FAKE_KEY}
arms:
  - {id: a, provider: gateway, model: gpt-4.1-mini}
  - {id: b, provider: gateway, model: gpt-4.1-nano}
""",
    )


def test_warm_up_makes_each_arms_tokenizer_once(tmp_path: Path, monkeypatch) -> None:
    plan, _ = prepare(spec(tmp_path, monkeypatch), tmp_path / "r.duckdb")
    assert all(a._tokenizer is None for a in plan.all_arms())
    plan.warm_up()
    made = [a._tokenizer for a in plan.all_arms()]
    assert all(t is not None for t in made)
    assert [a.tokenizer() for a in plan.all_arms()] == made  # kept, not made again
    plan.release_tokenizers()  # after the calls: given back, made again if asked
    assert all(a._tokenizer is None for a in plan.all_arms())
    assert plan.arms[0].tokenizer().encode("Paris") == made[0].encode("Paris")


def test_a_failing_warm_up_is_left_to_the_call(tmp_path: Path, monkeypatch) -> None:
    plan, _ = prepare(spec(tmp_path, monkeypatch), tmp_path / "r.duckdb")
    provider = plan.providers[0]
    monkeypatch.setattr(type(provider), "sdk", "abharness_no_such_sdk")

    def broken(model: str) -> object:
        raise OSError("tokenizer files unreadable")

    monkeypatch.setattr(provider, "tokenizer", broken)
    plan.warm_up()  # raises nothing
    with pytest.raises(OSError, match="unreadable"):
        plan.arms[0].tokenizer()


def test_released_encodings_load_again_and_count_the_same() -> None:
    """After a run, `release_encodings` drops the tokenizers; the next run reloads them."""
    from abharness.prompts.tokenizers import TiktokenTokenizer, release_encodings

    text = "What is the capital of France?"
    before = len(TiktokenTokenizer("gpt-4.1-mini").encode(text))
    release_encodings()
    import tiktoken.registry

    assert not tiktoken.registry.ENCODINGS
    assert len(TiktokenTokenizer("gpt-4.1-mini").encode(text)) == before
