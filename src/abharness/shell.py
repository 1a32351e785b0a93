"""What every front end's commands share (`cli/`, `mcp/`, and the others beside them):
exit codes, the database option, the consoles, one-line errors.

Exit codes (SPEC §11) are the commands': the library raises and returns, commands exit.
"""

from __future__ import annotations

import errno
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
from rich.console import Console

EXIT_OK = 0
EXIT_INVALID = 1  # invalid input, usage errors included; nothing written
EXIT_ERRORS = 2  # the run's errors exceed the spec's max_error_rate
EXIT_REGRESSION = 3  # a regression gate failed
EXIT_INCOMPLETE = 4  # the run ended with calls never made (an endpoint died); resumable
EXIT_ENVIRONMENT = 5  # the machine refused: disk full, read-only folder, permission denied
EXIT_INTERRUPTED = 130  # stopped by Ctrl-C or SIGTERM; resumable

DEFAULT_DB = Path("results/abharness.duckdb")
DEFAULT_REPORTS = Path("reports")

# Piped output is not cropped to 80 columns: tables get the width they need.
PIPED_WIDTH = 250
console = Console(
    highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else PIPED_WIDTH
)
err_console = Console(
    stderr=True, highlight=False, soft_wrap=True, width=None if sys.stderr.isatty() else PIPED_WIDTH
)

F = TypeVar("F", bound=Callable[..., Any])
ENVIRONMENT_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)

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
    envvar="ABHARNESS_REPORTS",
    default=str(DEFAULT_REPORTS),
    show_default=True,
    help="Where reports are written (env ABHARNESS_REPORTS).",
)


def fail(message: str, code: int = EXIT_INVALID) -> NoReturn:
    """Print `message` (plain text, never markup) as one error line and exit `code`."""
    from rich.markup import escape

    err_console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    sys.exit(code)


def one_line_errors(fn: F) -> F:
    """Turn bad input, a missing or locked database into one clear line and exit 1; a
    refusal of the machine (disk full, read-only, permission) into one line that says
    where the data is, exit 5."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from rich.markup import escape

        from .errors import EnvironmentFailure, InvalidInput
        from .store.queries import DatabaseBusy, NoDatabase, RunNotFound

        try:
            return fn(*args, **kwargs)
        except InvalidInput as exc:
            err_console.print(f"[bold red]error:[/] {escape(str(exc))}", soft_wrap=True)
            err_console.print("nothing was run or written.")
            sys.exit(EXIT_INVALID)
        except EnvironmentFailure as exc:
            fail(str(exc), EXIT_ENVIRONMENT)
        except OSError as exc:  # the machine refused something no layer above expected
            if exc.errno not in ENVIRONMENT_ERRNOS:
                raise
            fail(f"{exc.strerror}: {exc.filename or ''}".rstrip(": "), EXIT_ENVIRONMENT)
        except (DatabaseBusy, NoDatabase, RunNotFound) as exc:
            fail(str(exc))

    return wrapper  # type: ignore[return-value]
