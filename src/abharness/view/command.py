"""`abharness view`: browse runs, compare two arms case by case, read one case's calls.
`abharness.entry` adds it to the `abharness` group; nothing heavy is imported until it runs."""

from __future__ import annotations

import threading
import webbrowser
from pathlib import Path

import click

from ..shell import db_option, err_console, fail, one_line_errors

LOOPBACK = ("127.0.0.1", "localhost", "::1")


@click.command("view")
@db_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8765, show_default=True, type=int)
@click.option("--open/--no-open", "open_", default=True, help="Open it in a browser.")
@one_line_errors
def command(db: Path, host: str, port: int, open_: bool) -> None:
    """Serve the results database read-only as a local web app: runs, each run's report
    and cases, two arms side by side (/compare), one case's calls; JSON under /api/."""
    import uvicorn

    from .app import create_app

    if not db.exists():
        fail(f"no database at {db}: run an experiment first")
    if host not in LOOPBACK:
        err_console.print(
            f"warning: listening on {host}: anyone who can reach this machine can read every "
            "prompt and answer in the database (there is no login); 127.0.0.1 keeps it local"
        )
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}/"
    click.echo(f"abharness view: {url} (database {db}, read-only); Ctrl-C stops it")
    if open_:
        threading.Timer(1.0, webbrowser.open, [url]).start()
    uvicorn.run(create_app(db), host=host, port=port, log_level="warning")
