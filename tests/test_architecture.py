"""The house: layers that import only downwards, and a light import path for the CLI."""

from __future__ import annotations

import os
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
        "import sys, abharness, abharness.entry; "
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


def test_the_cli_gives_arrow_the_shared_c_heap() -> None:
    """pandas' Arrow strings are allocated from the C heap DuckDB and numpy reuse, not
    from Arrow's own mimalloc pool (BENCHMARKS.md, memory); a pool the user names stays."""
    code = (
        "import sys; from abharness.entry import main; sys.argv = ['abharness', 'validate']; "
        "exec('try: main()\\nexcept SystemExit: pass'); "
        "import pyarrow; print(pyarrow.default_memory_pool().backend_name)"
    )
    for given, expected in ((None, "system"), ("mimalloc", "mimalloc")):
        env = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
        env |= {"ARROW_DEFAULT_MEMORY_POOL": given} if given else {}
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env
        )
        assert out.stdout.split()[-1:] == [expected], out.stdout + out.stderr


def test_lazy_exports_resolve() -> None:
    import abharness

    assert abharness.load_spec.__name__ == "load_spec"
    assert set(abharness.__all__) >= {"run_experiment", "Experiment", "InvalidInput"}
