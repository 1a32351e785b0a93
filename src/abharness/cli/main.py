"""`abharness`: one command group; each command lives in its own module."""

from __future__ import annotations

import logging

import click

from .. import __version__
from . import compare, merge, prompts, report, run, sql, validate


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="abharness")
@click.option("-v", "--verbose", is_flag=True, help="Log debug output to stderr.")
def cli(verbose: bool) -> None:
    """A/B evaluation of LLM set-ups: run experiments, compare arms, query results."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )


for module in (run, validate, report, compare, prompts, sql, merge):
    cli.add_command(module.command)


def main() -> None:
    cli()
