from __future__ import annotations

from pathlib import Path

import pytest

from abharness.errors import SpecError
from abharness.spec import load_spec

from .conftest import write

REPO = Path(__file__).resolve().parents[1]


def spec_with(tmp_path: Path, providers: str, arms: str) -> Path:
    (tmp_path / "prompts/p").mkdir(parents=True)
    write(tmp_path / "prompts/p/v1.j2", "{% block user %}hi{% endblock %}")
    return write(
        tmp_path / "s.yaml",
        f"name: s\nprompts_dir: prompts\nprompt: p\ncases: [{{a: 1}}]\n{providers}\narms:\n{arms}",
    )


def test_builtin_endpoints_carry_keys_urls_and_price_ids(tmp_path: Path) -> None:
    spec = load_spec(
        spec_with(
            tmp_path,
            "",
            "\n".join(
                f"  - {{id: {p}, provider: {p}, model: m}}"
                for p in ("openai", "anthropic", "deepseek", "xai", "openrouter")
            ),
        )
    )
    got = {
        a.id: (
            spec.endpoint(a).type,
            spec.endpoint(a).base_url,
            spec.endpoint(a).api_key_env,
            spec.endpoint(a).price_provider,
            spec.tier(a),
        )
        for a in spec.experiment.arms
    }
    assert got == {
        "openai": ("openai", None, "OPENAI_API_KEY", "openai", 2),
        "anthropic": ("anthropic", None, "ANTHROPIC_API_KEY", "anthropic", 2),
        "deepseek": ("openai", "https://api.deepseek.com", "DEEPSEEK_API_KEY", "deepseek", 2),
        "xai": ("openai", "https://api.x.ai/v1", "XAI_API_KEY", "x-ai", 2),
        "openrouter": (
            "openai",
            "https://openrouter.ai/api/v1",
            "OPENROUTER_API_KEY",
            "openrouter",
            2,
        ),
    }


def test_spec_providers_override_and_define_endpoints(tmp_path: Path) -> None:
    providers = (
        "providers:\n"
        "  lab-vllm: {type: openai, base_url: 'http://gpu-box:8000/v1', api_key_env: VLLM_KEY, concurrency: 32}\n"
        "  openai: {type: openai, rpm: 500}\n"
        "  my-claude: {type: anthropic}\n"
        "  box: {type: ollama, base_url: 'http://10.0.0.2:11434', tier: 2}\n"
    )
    arms = (
        "  - {id: v, provider: lab-vllm, model: m}\n  - {id: o, provider: openai, model: m}\n"
        "  - {id: c, provider: my-claude, model: m}\n  - {id: b, provider: box, model: m}\n"
    )
    spec = load_spec(spec_with(tmp_path, providers, arms))
    v, o, c, b = (spec.endpoint(a) for a in spec.experiment.arms)
    assert (v.base_url, v.api_key_env, v.price_provider, v.concurrency) == (
        "http://gpu-box:8000/v1",
        "VLLM_KEY",
        None,
        32,
    )
    assert (o.api_key_env, o.price_provider, o.rpm) == ("OPENAI_API_KEY", "openai", 500)
    assert (c.api_key_env, c.price_provider) == ("ANTHROPIC_API_KEY", "anthropic")
    assert [spec.tier(a) for a in spec.experiment.arms] == [
        2,
        2,
        2,
        2,
    ]  # explicit tier: wins for box
    assert b.base_url == "http://10.0.0.2:11434"


def test_unknown_provider_type_names_the_key(tmp_path: Path) -> None:
    path = spec_with(
        tmp_path, "providers:\n  x: {type: gemini}\n", "  - {id: a, provider: x, model: m}\n"
    )
    with pytest.raises(
        SpecError, match=r"s\.yaml:6: providers\.x\.type: unknown provider type 'gemini'"
    ):
        load_spec(path)


@pytest.mark.parametrize("spec", ["default.yaml", "tiers.yaml"])
def test_shipped_specs_load(spec: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    loaded = load_spec(REPO / "experiments" / spec)
    assert loaded.baseline in {a.id for a in loaded.experiment.arms}


def test_tiers_validates_without_any_key(monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from abharness.cli.main import cli

    monkeypatch.chdir(REPO)
    for var in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "DEEPSEEK_API_KEY", "XAI_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    result = CliRunner().invoke(
        cli, ["validate", "experiments/tiers.yaml", "--db", "/nonexistent/x.duckdb"]
    )
    assert result.exit_code == 0, result.output
    assert "valid" in result.output and "no price" not in result.output
