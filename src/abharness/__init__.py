"""abharness: A/B evaluation of LLM set-ups with versioned prompts and paired statistics."""

from __future__ import annotations

__version__ = "0.1.0"

from .errors import AbharnessError, CallError, InvalidInput  # noqa: E402
from .experiment import Outcome, run_experiment  # noqa: E402
from .spec import Experiment, load_spec  # noqa: E402

__all__ = [
    "AbharnessError",
    "CallError",
    "Experiment",
    "InvalidInput",
    "Outcome",
    "__version__",
    "load_spec",
    "run_experiment",
]
