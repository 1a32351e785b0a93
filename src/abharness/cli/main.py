"""The CLI's command group; each command lives in its own module. `abharness.entry` adds
the other front ends' commands (`abharness mcp`, ...) and is the console script.

Commands import what they need when they run, so ``abharness --help`` stays fast.
Click's usage errors (an unknown option, a missing argument) exit 1, "invalid input",
not Click's 2, which SPEC §11 reserves for runs with too many errors.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import click

from .. import __version__
from ..shell import EXIT_INVALID, err_console
from . import batches, compare, export, merge, nightly, prompts, report, run, sql, validate


class _Group(click.Group):
    """Usage errors anywhere in the command line exit 1 (see the module docstring)."""

    def make_context(self, *args: Any, **kwargs: Any) -> click.Context:
        try:
            return super().make_context(*args, **kwargs)
        except click.UsageError as exc:
            exc.exit_code = EXIT_INVALID  # type: ignore[misc]
            raise

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            exc.exit_code = EXIT_INVALID  # type: ignore[misc]
            raise


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="abharness")
@click.option("-v", "--verbose", is_flag=True, help="Log debug output to stderr.")
def cli(verbose: bool) -> None:
    """A/B evaluation of LLM set-ups: run experiments, compare arms, query results."""
    _log_to(err_console, verbose)
    # pandas keeps strings in Arrow arrays; Arrow's own allocator (mimalloc) keeps the
    # pages it frees to itself, where DuckDB and numpy cannot reuse them. The C heap is
    # shared: a 100k-call run peaks 27 MB lower (BENCHMARKS.md). A user's choice stands.
    os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")


for module in (run, validate, report, compare, nightly, prompts, sql, export, merge, batches):
    cli.add_command(module.command)


def _log_to(console: Any, verbose: bool) -> None:
    """abharness's loggers (one per module: ``abharness.run.retry`` for circuits,
    ``abharness.run.executor`` for attempts and retries, ``abharness.run.limits`` for
    rate limits, ``abharness.store.db`` for merges) print warnings to stderr, above a
    progress bar rather than through it; ``-v`` shows everything they say. Other
    libraries stay at warnings."""
    from rich.logging import RichHandler

    handler = RichHandler(console=console, show_time=verbose, show_path=False, markup=False)
    handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    logging.basicConfig(level=logging.WARNING, handlers=[handler], force=True)
    logging.getLogger("abharness").setLevel(logging.DEBUG if verbose else logging.WARNING)
