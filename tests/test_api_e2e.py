"""A spec with OpenAI, Anthropic and Ollama arms, streamed and not, run end to end
against the loopback fake server: the database must hold exactly what the server sent."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import duckdb
import pytest
from click.testing import CliRunner

from abharness.cli.main import cli
from abharness.providers.base import Usage
from abharness.providers.pricing import genai_price
from abharness.run.experiment import run_experiment

from .conftest import write
from .fake_server import FakeServer

# arm id -> (server path, streamed)
ARMS = {
    "gpt-stream": ("/v1/chat/completions", True),
    "gpt-plain": ("/v1/chat/completions", False),
    "claude-stream": ("/v1/messages", True),
    "claude-plain": ("/v1/messages", False),
    "ollama-chat": ("/api/chat", True),
    "ollama-raw": ("/api/generate", False),
}


def planted_key() -> str:
    return "sk-planted-" + uuid.uuid4().hex  # shaped like a key, generated so none is committed


@pytest.fixture
def server() -> Iterator[FakeServer]:
    with FakeServer(cached_tokens=2, chunk_delay_s=0.003) as s:
        yield s


@pytest.fixture
def api_spec(tmp_path: Path, server: FakeServer, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    write(
        tmp_path / "prompts/cap-chat/v1.j2",
        """
        {% block system %}Answer with the city only.{% endblock %}
        {% block user %}What is the capital of {{ country }}?{% endblock %}
        """,
    )
    write(
        tmp_path / "prompts/cap-raw/v1.j2",
        """
        {% block prompt %}Q: What is the capital of {{ country }}?
        A:{% endblock %}
        """,
    )
    return write(
        tmp_path / "api.yaml",
        f"""
        name: api-e2e
        prompts_dir: prompts
        prompt: cap-chat@1
        baseline: gpt-stream
        defaults: {{max_tokens: 16, seed: 7}}
        cases:
          - {{id: fr, country: France, answer: Paris}}
          - {{id: jp, country: Japan, answer: Tokyo}}
          - {{id: pe, country: Peru, answer: Lima}}
        providers:
          fake-openai: {{type: openai, base_url: "{server.url}/v1", api_key_env: FAKE_OPENAI_KEY, price_provider: openai}}
          fake-anthropic: {{type: anthropic, base_url: "{server.url}", api_key_env: FAKE_ANTHROPIC_KEY, price_provider: anthropic}}
          fake-ollama: {{type: ollama, base_url: "{server.url}"}}
        arms:
          - {{id: gpt-stream, provider: fake-openai, model: gpt-4.1-mini, temperature: 0}}
          - {{id: gpt-plain, provider: fake-openai, model: gpt-4.1-mini, temperature: 0, stream: false}}
          - {{id: claude-stream, provider: fake-anthropic, model: claude-haiku-4-5}}
          - {{id: claude-plain, provider: fake-anthropic, model: claude-haiku-4-5, stream: false}}
          - {{id: ollama-chat, provider: fake-ollama, model: llama3.2, temperature: 0}}
          - {{id: ollama-raw, provider: fake-ollama, model: llama3.2, prompt: cap-raw@1, stream: false}}
        scorers:
          - {{type: contains, expected: "{{{{ case.answer }}}}"}}
        """,
    )


def rows(db: Path) -> list[dict]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        cur = con.execute("SELECT * FROM calls")
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
    finally:
        con.close()


@pytest.mark.slow
def test_tokens_cost_and_ttft_are_exactly_the_servers(
    api_spec: Path, server: FakeServer, monkeypatch
) -> None:
    monkeypatch.setenv("FAKE_OPENAI_KEY", "k1")
    monkeypatch.setenv("FAKE_ANTHROPIC_KEY", "k2")
    out = run_experiment(api_spec, db=api_spec.parent / "r.duckdb")
    assert not out.error_rate_exceeded and out.stats.ok == 18, out.stats
    sent = {}
    for entry in server.log:
        country = entry.text  # the fake answers with the capital
        streamed = bool(entry.body.get("stream"))
        sent[(entry.path, streamed, country)] = entry.usage
    assert len(sent) == 18  # every call reached the server exactly once, distinguishable
    estimate_error: dict[str, list[int]] = {}
    for r in rows(out.db):
        path, streamed = ARMS[r["arm_id"]]
        u = sent[(path, streamed, r["response_text"])]
        assert (r["input_tokens"], r["output_tokens"]) == (u["prompt"], u["completion"]), r[
            "arm_id"
        ]
        if path.startswith("/api/"):
            assert r["cache_read_tokens"] is None  # Ollama reports none: null, never 0
            assert (r["cost_usd"], r["price_source"]) == (0.0, "local:free")
            assert json.loads(r["provider_metrics_json"])["load_duration_ms"] == 120.0
        else:
            assert r["cache_read_tokens"] == u["cached"] == 2
            model = "gpt-4.1-mini" if "gpt" in r["arm_id"] else "claude-haiku-4-5"
            provider = "openai" if "gpt" in r["arm_id"] else "anthropic"
            priced = genai_price(
                Usage(u["prompt"], u["completion"], cache_read_tokens=u["cached"]),
                model,
                provider_id=provider,
                api_url=None,
            )
            assert priced is not None and not priced[1]  # the live price
            assert Decimal(str(r["cost_usd"])) == pytest.approx(priced[0])
            assert r["price_source"].startswith("genai-prices ")
        if streamed:
            assert 0 < r["ttft_ms"] < r["latency_ms"], r["arm_id"]
        else:
            assert r["ttft_ms"] is None  # not measured without streaming
        estimate_error.setdefault(r["arm_id"], []).append(r["est_input_tokens"] - r["input_tokens"])
    claude = [r for r in rows(out.db) if r["arm_id"].startswith("claude")]
    assert all(
        json.loads(r["provider_metrics_json"])["ignored_params"] == ["temperature", "seed"]
        for r in claude
    )
    methods = {r["arm_id"]: r["est_method"] for r in rows(out.db)}
    assert (
        methods["gpt-stream"].startswith("tiktoken:")
        and methods["claude-plain"] == "estimate:chars/4"
    )
    _r = CliRunner().invoke(cli, ["report", out.run_id, "--format", "json", "--db", str(out.db)])
    assert _r.exit_code == 0, (_r.output, _r.exception)
    report = json.loads(_r.output)
    per_arm = {a["arm_id"]: a["est_error_mean_tokens"] for a in report["arms"]}
    for arm_id, errs in estimate_error.items():
        assert per_arm[arm_id] == pytest.approx(sum(errs) / len(errs))


def test_unset_keys_are_found_before_anything_runs(
    api_spec: Path, server: FakeServer, monkeypatch
) -> None:
    monkeypatch.delenv("FAKE_OPENAI_KEY", raising=False)
    monkeypatch.delenv("FAKE_ANTHROPIC_KEY", raising=False)
    validate = CliRunner().invoke(cli, ["validate", str(api_spec), "--db", "r.duckdb"])
    assert validate.exit_code == 0, validate.output
    assert "gpt-stream: FAKE_OPENAI_KEY is not set" in validate.output
    assert "claude-plain: FAKE_ANTHROPIC_KEY is not set" in validate.output
    assert "cannot run here" in validate.output and "valid spec" in validate.output
    dry = CliRunner().invoke(cli, ["run", str(api_spec), "--dry-run", "--db", "r.duckdb"])
    assert dry.exit_code == 0 and "not run: gpt-plain: FAKE_OPENAI_KEY is not set" in dry.output

    refused = CliRunner().invoke(cli, ["run", str(api_spec), "--db", "r.duckdb"])
    assert refused.exit_code == 1, refused.output
    assert "FAKE_OPENAI_KEY is not set" in refused.output and "--skip-unavailable" in refused.output
    assert not server.log and not Path("r.duckdb").exists()  # nothing called, nothing written


@pytest.mark.slow
def test_skip_unavailable_runs_the_rest_and_reports_them_not_run(
    api_spec: Path, server: FakeServer, monkeypatch
) -> None:
    monkeypatch.delenv("FAKE_OPENAI_KEY", raising=False)
    monkeypatch.delenv("FAKE_ANTHROPIC_KEY", raising=False)
    spec = api_spec.read_text().replace("baseline: gpt-stream", "baseline: ollama-chat")
    api_spec.write_text(spec)
    result = CliRunner().invoke(
        cli, ["run", str(api_spec), "--db", "r.duckdb", "--skip-unavailable"]
    )
    assert result.exit_code == 0, result.output
    assert {e.path for e in server.log} == {"/api/chat", "/api/generate"}
    assert {r["arm_id"] for r in rows(Path("r.duckdb"))} == {"ollama-chat", "ollama-raw"}
    con = duckdb.connect("r.duckdb", read_only=True)
    reasons = dict(con.execute("SELECT arm_id, not_run_reason FROM arms").fetchall())
    con.close()
    assert reasons["gpt-plain"] == "FAKE_OPENAI_KEY is not set" and reasons["ollama-raw"] is None
    report = json.loads(
        CliRunner().invoke(cli, ["report", "--last", "--format", "json", "--db", "r.duckdb"]).output
    )
    assert {a["arm_id"] for a in report["arms"]} == {"ollama-chat", "ollama-raw"}
    assert {c["arm_id"] for c in report["comparisons"]} == {"ollama-raw"}  # no verdict for others
    assert {n["arm_id"] for n in report["not_run"]} == {
        "gpt-stream",
        "gpt-plain",
        "claude-stream",
        "claude-plain",
    }
    md = next(Path("reports").rglob("*.md")).read_text()
    assert "Not run" in md and "FAKE_ANTHROPIC_KEY is not set" in md


@pytest.mark.slow
def test_no_api_key_reaches_db_logs_reports_or_cassettes(
    api_spec: Path, server: FakeServer, monkeypatch, caplog, capfd
) -> None:
    key = planted_key()
    monkeypatch.setenv("FAKE_OPENAI_KEY", key)
    monkeypatch.setenv("FAKE_ANTHROPIC_KEY", key)
    caplog.set_level(logging.DEBUG)
    result = CliRunner().invoke(cli, ["-v", "run", str(api_spec), "--db", "r.duckdb"])
    assert result.exit_code == 0, result.output
    for path in ("/v1/chat/completions", "/v1/messages"):  # the key was really sent to both APIs
        sent = [
            e.headers.get("x-api-key") or e.headers.get("authorization")
            for e in server.log
            if e.path == path
        ]
        assert sent and all(h in (key, f"Bearer {key}") for h in sent)
    places = [Path("r.duckdb"), *Path("reports").rglob("*")]
    for path in places:
        if path.is_file():
            assert key.encode() not in path.read_bytes(), path
    captured = capfd.readouterr()
    assert (
        key not in result.output
        and key not in caplog.text
        and key not in captured.out + captured.err
    )
    cassettes = Path(__file__).parent / "cassettes"
    for path in cassettes.rglob("*.yaml"):
        text = path.read_text()
        assert "sk-" not in text and "test-key" not in text, path


def test_one_provider_and_client_per_endpoint(api_spec: Path) -> None:
    from abharness.run.plan import build_plan
    from abharness.spec import load_spec

    plan = build_plan(load_spec(api_spec))
    assert sorted(p.endpoint for p in plan.providers) == [
        "fake-anthropic",
        "fake-ollama",
        "fake-openai",
    ]
    by_arm = {a.id: a.provider for a in plan.arms}
    assert (
        by_arm["gpt-stream"] is by_arm["gpt-plain"]
        and by_arm["claude-stream"] is by_arm["claude-plain"]
    )
