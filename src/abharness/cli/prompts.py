"""`abharness prompts list|show|diff`: the versioned templates."""

from __future__ import annotations

from pathlib import Path

import click

from ..shell import console, one_line_errors

dir_option = click.option(
    "--dir",
    "prompts_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default="prompts",
    show_default=True,
    help="The prompts directory.",
)


@click.group("prompts")
def command() -> None:
    """List, show and diff prompt templates."""


@command.command("list")
@dir_option
@one_line_errors
def list_(prompts_dir: Path) -> None:
    """Every template with its versions, content hash and description."""
    from rich.table import Table

    from ..prompts.templates import PromptLibrary

    lib = PromptLibrary(prompts_dir)
    table = Table()
    for col in ("prompt", "kind", "hash", "extends", "description"):
        table.add_column(col)
    for name in lib.names():
        for v in lib.versions(name):
            t = lib.resolve(f"{name}@{v}")
            parent = t.chain[1] if len(t.chain) > 1 else ""
            table.add_row(
                t.ref,
                "raw" if t.blocks == ["prompt"] else "chat",
                t.hash,
                parent,
                t.front.description,
            )
    console.print(table)


@command.command("show")
@click.argument("ref")
@dir_option
@one_line_errors
def show(ref: str, prompts_dir: Path) -> None:
    """Print NAME@N (or NAME: the latest) with its identity."""
    from ..prompts.templates import PromptLibrary

    t = PromptLibrary(prompts_dir).resolve(ref)
    console.print(f"[bold]{t.ref}[/]  hash {t.hash}  file {t.path}")
    if len(t.chain) > 1:
        console.print("extends: " + " → ".join(t.chain[1:]))
    click.echo(t.path.read_text(encoding="utf-8"), nl=False)


@command.command("diff")
@click.argument("ref_a")
@click.argument("ref_b")
@dir_option
@one_line_errors
def diff(ref_a: str, ref_b: str, prompts_dir: Path) -> None:
    """Unified diff of two template versions."""
    from ..prompts.templates import PromptLibrary

    text = PromptLibrary(prompts_dir).diff(ref_a, ref_b)
    click.echo(text if text else "identical", nl=not text)
