"""Providers: one small module per API, each implementing `Provider.generate`.

`import abharness` never pays for an SDK: a provider module is imported only when an
arm uses its type (Inspect AI's `@modelapi` registry does the same). The names a spec
may use live in `abharness.spec.endpoints`.
"""

from __future__ import annotations

import importlib

from ..spec.endpoints import BUILTIN_ENDPOINTS, PROVIDER_TYPES
from .base import Provider, ProviderRequest, ProviderResponse, Usage

__all__ = [
    "BUILTIN_ENDPOINTS",
    "PROVIDER_TYPES",
    "Provider",
    "ProviderRequest",
    "ProviderResponse",
    "Usage",
    "provider_class",
]


def provider_class(type_name: str) -> type[Provider]:
    """The implementation of a provider type, imported now."""
    target = PROVIDER_TYPES.get(type_name)
    if target is None:
        raise KeyError(type_name)
    module_name, _, class_name = target.partition(":")
    module = importlib.import_module(module_name)
    cls: type[Provider] = getattr(module, class_name)
    return cls
