"""`abharness serve SPEC`: the live A/B gateway (SPEC §16). `abharness.entry` adds it
to the `abharness` group; nothing heavy is imported until it runs."""

from __future__ import annotations

import math
import signal
from pathlib import Path

import click

from ..shell import db_option, err_console, one_line_errors

LOOPBACK = ("127.0.0.1", "localhost", "::1")


@click.command("serve")
@click.argument("spec", type=click.Path(path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8080, show_default=True, type=int)
@db_option
@one_line_errors
def command(spec: Path, host: str, port: int, db: Path) -> None:
    """Serve an OpenAI-compatible API that splits live requests between SPEC's arms
    (its serve: section) and records each as a call of an online run. SIGTERM or Ctrl-C
    lets the requests in flight finish, then writes and merges the run."""
    import uvicorn

    from ..run.online import OnlineSession
    from ..spec.load import load_spec
    from .app import Gateway, create_app
    from .keys import ClientKeys

    loaded = load_spec(spec)
    serve = loaded.experiment.serve
    if serve is None:
        from ..errors import SpecError

        raise SpecError(
            "no serve: section: add one saying how to split traffic (SPEC §16)", file=spec
        )
    keys = ClientKeys.from_env(serve.keys_env)
    session = OnlineSession(loaded, db)
    gateway = Gateway(session, keys)
    if host not in LOOPBACK:
        err_console.print(
            f"warning: listening on {host}: anyone who can reach this machine can send "
            "requests that you pay for" + ("" if keys else " (no keys_env: no key is asked for)")
        )
    elif keys is None:
        err_console.print("note: no serve.keys_env in the spec: requests need no key")
    shown = f"[{host}]" if ":" in host else host
    click.echo(
        f"abharness serve: http://{shown}:{port}/v1 (experiment {loaded.experiment.name}, "
        f"online run {session.run_id}, database {db}); SIGTERM or Ctrl-C stops it"
    )
    config = uvicorn.Config(
        create_app(gateway, tune_gc=True),
        host=host,
        port=port,
        log_level="warning",
        proxy_headers=False,  # nothing here reads the client's address or scheme
        timeout_graceful_shutdown=max(math.ceil(session.grace_s), 1),
    )
    # uvicorn handles SIGINT and SIGTERM itself (drain, then the app's shutdown: written
    # and merged) and raises the signal again once done; a clean stop is not an error
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        uvicorn.Server(config).run()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    merged = getattr(gateway, "merge_result", None)
    stats = session.stats
    click.echo(
        f"stopped: {stats.requests} requests, {stats.calls} calls in run {session.run_id}"
        + (f"; {merged}" if merged else "")
    )
