"""End to end on the real embedded model (Gemma 3 270M via llama.cpp), a handful of cases.

Token counts in DuckDB are checked against an independent llama.cpp instance that
runs the same prompts with the same parameters.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest
from llama_cpp import Llama

from abharness.providers.llamacpp import resolve_model_path
from abharness.run.experiment import run_experiment

from .conftest import written_report

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.e2e

SPEC = f"""
name: e2e-capitals
prompts_dir: {REPO / "prompts"}
baseline: zero-shot
defaults: {{temperature: 0, max_tokens: 12, seed: 7, stop: ["\\n"]}}
cases:
  - {{id: fr, country: France, answer: Paris}}
  - {{id: jp, country: Japan, answer: Tokyo}}
  - {{id: pe, country: Peru, answer: Lima}}
  - {{id: ng, country: Nigeria, answer: Abuja}}
arms:
  - {{id: zero-shot, provider: llamacpp, model: gemma3-270m, prompt: capitals@1}}
  - {{id: few-shot, provider: llamacpp, model: gemma3-270m, prompt: capitals@2}}
scorers:
  - {{type: contains, expected: "{{{{ case.answer }}}}", ignore_case: true}}
"""


@pytest.fixture(scope="module")
def reference_llm() -> Llama:
    return Llama(model_path=str(resolve_model_path("gemma3-270m")), n_ctx=2048, verbose=False)


def test_real_model_run_records_llama_cpp_exact_counts(
    tmp_path: Path, reference_llm: Llama
) -> None:
    spec = tmp_path / "e2e.yaml"
    spec.write_text(SPEC)
    out = run_experiment(spec, db=tmp_path / "e2e.duckdb")
    assert not out.error_rate_exceeded and out.stats.ok == 8
    con = duckdb.connect(str(out.db), read_only=True)
    rows = con.execute(
        "SELECT arm_id, prompt_text, response_text, input_tokens, output_tokens, est_input_tokens, "
        "est_method, latency_ms, ttft_ms, cost_usd, price_source FROM calls ORDER BY arm_id, case_id"
    ).fetchall()
    for arm_id, prompt, response, n_in, n_out, est, method, latency, ttft, cost, source in rows:
        ref = reference_llm.create_completion(
            prompt, max_tokens=12, temperature=0, seed=7, stop=["\n"]
        )
        reference_llm.reset()
        assert (n_in, n_out) == (
            ref["usage"]["prompt_tokens"],
            ref["usage"]["completion_tokens"],
        ), arm_id
        assert response == ref["choices"][0]["text"]
        assert est == n_in and method == "llamacpp:exact"
        assert 0 < ttft < latency
        assert (cost, source) == (0.0, "local:free")
    passed = dict(con.execute("SELECT arm_id, pass_rate FROM arm_summary").fetchall())
    assert passed["few-shot"] >= passed["zero-shot"]
    assert "few-shot" in written_report(out).read_text()


def test_chat_prompt_counts_match_llama_cpp(tmp_path: Path) -> None:
    (tmp_path / "prompts/chat").mkdir(parents=True)
    (tmp_path / "prompts/chat/v1.j2").write_text(
        "{% block user %}Name the capital of {{ country }}.{% endblock %}"
    )
    spec = tmp_path / "chat.yaml"
    spec.write_text(
        "name: chat\nprompts_dir: prompts\ncases: [{country: France}]\n"
        "defaults: {temperature: 0, max_tokens: 4}\n"
        "providers: {gemma-chat: {type: llamacpp, options: {chat_format: gemma}}}\n"
        "arms: [{id: chat, provider: gemma-chat, model: gemma3-270m, prompt: chat@1},\n"
        "       {id: no-template, provider: llamacpp, model: gemma3-270m, prompt: chat@1}]\n"
    )
    out = run_experiment(spec, db=tmp_path / "c.duckdb")
    con = duckdb.connect(str(out.db), read_only=True)
    rows = {
        r[0]: r[1:]
        for r in con.execute(
            "SELECT arm_id, status, input_tokens, est_input_tokens, output_tokens, error_type, prompt_text "
            "FROM calls"
        ).fetchall()
    }
    status, n_in, est, n_out, _, prompt = rows["chat"]
    assert (
        status == "ok"
        and n_in == est
        and 0 < n_out <= 4
        and prompt == "[user]\nName the capital of France."
    )
    # the base GGUF has no chat template: a clear bad_request, not a silent llama-2 format
    assert rows["no-template"][0] == "error" and rows["no-template"][4] == "bad_request"


def test_a_a_copy_on_the_real_model_is_inconclusive_on_four_cases(tmp_path: Path) -> None:
    """Identical arms agree on every case, but 4 cases cannot show that two arms are
    equivalent: the verdict says so, and that fewer than 6 cases can never be told apart
    at 5%."""
    spec = tmp_path / "aa.yaml"
    spec.write_text(
        SPEC.replace("name: e2e-capitals", "name: e2e-aa").replace(
            "prompt: capitals@1}", "prompt: capitals@2}"
        )
    )
    out = run_experiment(spec, db=tmp_path / "aa.duckdb", use_cache=False)
    from abharness.report.build import build_report
    from abharness.store.queries import Results

    with Results(out.db) as results:
        report = build_report(results, out.run_id).to_json()
    pass_rate = next(c for c in report["comparisons"] if c["metric"] == "pass_rate")
    assert (pass_rate["diff"], pass_rate["wins"], pass_rate["losses"]) == (0.0, 0, 0)
    assert pass_rate["verdict"] == "inconclusive" and pass_rate["min_units"] == 6
    assert pass_rate["mde"] is None and pass_rate["n_needed"] is None
    assert pass_rate["ci_low"] < -0.3 and pass_rate["ci_high"] > 0.3
