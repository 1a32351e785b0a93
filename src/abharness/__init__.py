"""abharness: A/B evaluation of LLM set-ups with versioned prompts and paired statistics.

The package is laid out in the order data flows, each layer importing only those
before it (checked by ``tests/test_architecture.py``):

    spec ─▶ prompts ─▶ providers ─▶ run ─▶ store ─▶ report      (cli/ drives them)

Names below are imported on first use, so ``import abharness`` (and ``abharness
--help``) pays for no SDK, pandas or scipy.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "AbharnessError": "abharness.errors",
    "CallError": "abharness.errors",
    "InvalidInput": "abharness.errors",
    "Experiment": "abharness.spec.models",
    "load_spec": "abharness.spec.load",
    "Outcome": "abharness.run.experiment",
    "run_experiment": "abharness.run.experiment",
}

__all__ = [*sorted(_EXPORTS), "__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'abharness' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
