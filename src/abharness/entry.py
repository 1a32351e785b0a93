"""The `abharness` command (the console script, and `python -m abharness`): the CLI's
group with every front end's command added (`abharness mcp`, ...), so that no front end
imports another.

SIGTERM stops abharness as Ctrl-C does (a run drains its calls in flight and saves; see
`run.runner`); an interruption anywhere else is one line, exit 130, never a traceback.
"""

from __future__ import annotations

import signal
import sys

from .cli.main import cli
from .mcp.command import command as mcp_command
from .serve.command import command as serve_command
from .shell import EXIT_INTERRUPTED, err_console
from .view.command import command as view_command

cli.add_command(mcp_command)
cli.add_command(view_command)
cli.add_command(serve_command)


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM is Ctrl-C: cron, systemd, `docker stop`, `timeout`


def main() -> None:
    signal.signal(signal.SIGTERM, _terminate)
    try:
        cli(prog_name="abharness")
    except KeyboardInterrupt:
        err_console.print("interrupted (nothing half-written: DuckDB rolls back)")
        sys.exit(EXIT_INTERRUPTED)
