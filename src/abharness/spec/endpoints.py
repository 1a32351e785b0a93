"""The provider types and built-in endpoints a spec may name.

Only names and addresses live here, so the spec can be validated without importing a
provider; `abharness.providers.provider_class` imports an implementation on first use.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Endpoint:
    """A named endpoint: a provider type plus where it lives and how it authenticates."""

    type: str
    tier: int
    base_url: str | None = None
    api_key_env: str | None = None
    price_provider: str | None = None  # genai-prices provider id


# type -> "module:Class", imported on first use.
PROVIDER_TYPES: dict[str, str] = {
    "llamacpp": "abharness.providers.llamacpp:LlamaCppProvider",
    "ollama": "abharness.providers.ollama:OllamaProvider",
    "openai": "abharness.providers.openai:OpenAIProvider",
    "anthropic": "abharness.providers.anthropic:AnthropicProvider",
}

LOCAL_TYPES = ("llamacpp", "ollama")

BUILTIN_ENDPOINTS: dict[str, Endpoint] = {
    "llamacpp": Endpoint("llamacpp", tier=1),
    "ollama": Endpoint("ollama", tier=1, base_url=None),  # OLLAMA_HOST or localhost
    "openai": Endpoint("openai", 2, None, "OPENAI_API_KEY", "openai"),
    "anthropic": Endpoint("anthropic", 2, None, "ANTHROPIC_API_KEY", "anthropic"),
    "deepseek": Endpoint("openai", 2, "https://api.deepseek.com", "DEEPSEEK_API_KEY", "deepseek"),
    "xai": Endpoint("openai", 2, "https://api.x.ai/v1", "XAI_API_KEY", "x-ai"),
    "openrouter": Endpoint(
        "openai", 2, "https://openrouter.ai/api/v1", "OPENROUTER_API_KEY", "openrouter"
    ),
}
