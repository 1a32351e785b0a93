"""What to run: the experiment spec, its endpoints and its dataset."""

from __future__ import annotations

from .load import LoadedSpec, load_spec
from .models import Arm, Experiment, GenerationParams, Price, ProviderSpec

__all__ = [
    "Arm",
    "Experiment",
    "GenerationParams",
    "LoadedSpec",
    "Price",
    "ProviderSpec",
    "load_spec",
]
