"""`abharness mcp`: the MCP server over stdio (SPEC §15); add it to an MCP client as the
README shows. Everything it prints goes to stderr: stdout is the protocol's."""

from __future__ import annotations

from pathlib import Path

import click

from ..shell import db_option, one_line_errors


@click.command("mcp")
@click.option(
    "--config",
    type=click.Path(dir_okay=False, path_type=Path),
    help="A spec whose providers: the tools may name (PROVIDER:MODEL).",
)
@db_option
@one_line_errors
def command(config: Path | None, db: Path) -> None:
    """Serve abharness's tools to an MCP client over stdio: compare_models, list_experiments,
    run_experiment, list_runs, get_report, query."""
    from .server import build_server

    build_server(config, db).run("stdio")
