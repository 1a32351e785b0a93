"""Provider registry: built-in endpoints by name, implementations imported lazily.

`import abharness` never pays for an SDK: a provider module is imported only when an
arm uses its type (Inspect AI's `@modelapi` registry does the same).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from .base import Provider, ProviderRequest, ProviderResponse, Usage

__all__ = [
    "BUILTIN_ENDPOINTS",
    "PROVIDER_TYPES",
    "Endpoint",
    "Provider",
    "ProviderRequest",
    "ProviderResponse",
    "Usage",
    "provider_class",
]


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


def provider_class(type_name: str) -> type[Provider]:
    """The implementation of a provider type, imported now."""
    target = PROVIDER_TYPES.get(type_name)
    if target is None:
        raise KeyError(type_name)
    module_name, _, class_name = target.partition(":")
    module = importlib.import_module(module_name)
    cls: type[Provider] = getattr(module, class_name)
    return cls
