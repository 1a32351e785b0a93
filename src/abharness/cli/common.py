"""What every command shares: the database option, the console, error reporting."""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console

from ..errors import InvalidInput
from ..experiment import DEFAULT_DB, DEFAULT_REPORTS, EXIT_INVALID

console = Console(highlight=False, soft_wrap=True)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)

F = TypeVar("F", bound=Callable[..., Any])

db_option = click.option(
    "--db",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="ABHARNESS_DB",
    default=str(DEFAULT_DB),
    show_default=True,
    help="DuckDB file (env ABHARNESS_DB).",
)

reports_dir_option = click.option(
    "--reports-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=str(DEFAULT_REPORTS),
    show_default=True,
    help="Where reports are written.",
)


def invalid_input_exits(fn: F) -> F:
    """Turn `InvalidInput` into one clear line on stderr and exit 1."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except InvalidInput as exc:
            err_console.print(f"[bold red]error:[/] {exc}", markup=True, soft_wrap=True)
            err_console.print("nothing was run or written.")
            sys.exit(EXIT_INVALID)

    return wrapper  # type: ignore[return-value]
