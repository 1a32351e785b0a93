"""The house: layers that import only downwards, and a light import path for the CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("pandas", "scipy", "numpy", "duckdb", "openai", "anthropic", "ollama", "llama_cpp")


def test_import_contracts_are_kept() -> None:
    """pyproject.toml's [tool.importlinter] contracts: no import runs upward."""
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "0 broken" in result.stdout


def test_the_cli_and_the_package_import_nothing_heavy() -> None:
    code = (
        "import sys, abharness, abharness.cli.main; "
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == ""


def test_a_run_sends_its_first_request_before_pandas_and_scipy_load() -> None:
    """`abharness run` imports pandas with the first batch of calls it stores and scipy
    with the report, both after its first request (BENCHMARKS.md: time to first call)."""
    code = (
        "import sys, abharness.cli.run, abharness.run.experiment; "
        "print(','.join(m for m in ('pandas', 'scipy') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == ""


def test_lazy_exports_resolve() -> None:
    import abharness

    assert abharness.load_spec.__name__ == "load_spec"
    assert set(abharness.__all__) >= {"run_experiment", "Experiment", "InvalidInput"}
