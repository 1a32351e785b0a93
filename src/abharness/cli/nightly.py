"""`abharness nightly [DIR]`: run every spec in DIR with the cache off, compare each
with its previous nightly run of the same experiment and cases, write
``reports/nightly/<date>/index.html`` and exit 3 when a gate fails.

Exit, the first that holds: 3 a gate failed; 2 a run's errors exceed its
max_error_rate; 4 a run is incomplete (calls never made: an endpoint died; `run
--resume` finishes it); 5 the machine refused (disk, permissions; where the data is, in
the message); 1 a spec was invalid (the others still ran); else 0. The last lines
printed name each failing gate with its figures, and each problem. One nightly at a
time: a second one exits at once (the lock file sits beside the database). Ctrl-C or
SIGTERM stops the night after the run in progress has saved: exit 130.

``--batch`` runs every arm that can through its provider's batch API at half price
(SPEC §13; ``mode: batch`` in a spec does so for that spec). The night waits for its
batches until ``--batch-deadline`` (default 6 h from the start of the night: a run
started at 01:00 has its page by 07:00); a batch still running then is left to the
provider, the run is incomplete (exit 4) and its page says so, and ``abharness run
--resume RUN_ID`` collects the batch later without sending a call twice.
"""

from __future__ import annotations

import fcntl
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ..shell import (
    EXIT_ENVIRONMENT,
    EXIT_ERRORS,
    EXIT_INCOMPLETE,
    EXIT_INTERRUPTED,
    EXIT_INVALID,
    EXIT_OK,
    EXIT_REGRESSION,
    console,
    db_option,
    err_console,
    one_line_errors,
    reports_dir_option,
)

if TYPE_CHECKING:
    from ..report.compare import RunData
    from ..report.nightly import NightEntry

DEFAULT_DIR = Path("experiments/nightly")
MERGE_ATTEMPTS = 10  # a second apart: a busy database leaves the run in staging
DEFAULT_BATCH_DEADLINE = "6h"


class Duration(click.ParamType):
    """``90s``, ``45m``, ``6h`` or plain seconds."""

    name = "duration"
    UNITS = {"s": 1, "m": 60, "h": 3600}

    def convert(self, value: Any, param: Any, ctx: Any) -> float:
        if isinstance(value, int | float):
            return float(value)
        text = str(value).strip().lower()
        unit = self.UNITS.get(text[-1:], None)
        try:
            seconds = float(text[:-1] if unit else text) * (unit or 1)
        except ValueError:
            self.fail(f"{value!r} is not a duration such as 90s, 45m or 6h", param, ctx)
        if seconds <= 0:
            self.fail(f"{value!r}: a deadline must be more than 0", param, ctx)
        return seconds


@click.command("nightly")
@click.argument(
    "folder", type=click.Path(file_okay=False, path_type=Path), default=str(DEFAULT_DIR)
)
@db_option
@reports_dir_option
@click.option(
    "--batch",
    is_flag=True,
    help="Every arm whose provider has a batch API runs through it, at half price.",
)
@click.option(
    "--batch-deadline",
    type=Duration(),
    default=DEFAULT_BATCH_DEADLINE,
    show_default=True,
    help="Stop waiting for batches this long after the night started; resume collects them.",
)
@one_line_errors
def command(folder: Path, db: Path, reports_dir: Path, batch: bool, batch_deadline: float) -> None:
    """Run every spec in FOLDER (default experiments/nightly) against its previous night."""
    from ..errors import InvalidInput
    from ..report.nightly import summary_lines

    specs = sorted(p for p in folder.glob("*.y*ml") if p.suffix in (".yaml", ".yml"))
    if not specs:
        raise InvalidInput(f"no *.yaml specs in {folder}", file=folder)
    db.parent.mkdir(parents=True, exist_ok=True)
    codes: set[int] = set()
    with _nightly_lock(db.parent / "nightly.lock"):
        started = datetime.now(UTC)
        deadline = time.monotonic() + batch_deadline
        entries = []
        for spec in specs:
            entry, code = _one(spec, db, reports_dir, batch, deadline - time.monotonic())
            entries.append(entry)
            codes.add(code)
            if code == EXIT_INTERRUPTED:
                break  # the run in progress saved; the night stops here
        page = _write_index(started, entries, db, reports_dir)
    console.print(f"nightly index: {page}")
    for line in summary_lines(entries):
        (err_console if line.startswith(("FAIL", "NOT")) else console).print(line, markup=False)
    if any(x.comparison and x.comparison.failed for x in entries):
        codes.add(EXIT_REGRESSION)
    code = next((c for c in PRECEDENCE if c in codes), EXIT_OK)
    console.print(
        {
            EXIT_INTERRUPTED: "[red]interrupted: the runs so far are saved[/]",
            EXIT_REGRESSION: "[bold red]regression:[/] a gate failed (above)",
            EXIT_ERRORS: "[red]a run's errors exceed its max_error_rate[/]",
            EXIT_INCOMPLETE: "[red]a run is incomplete: calls were never made (above)[/]",
            EXIT_ENVIRONMENT: "[red]the machine refused (above): the data is safe[/]",
            EXIT_INVALID: "[red]a spec could not run (above)[/]",
            EXIT_OK: "[green]no regression[/]",
        }[code]
    )
    sys.exit(code)


# When several hold, the night's exit code is the first of these (module docstring).
PRECEDENCE = (
    EXIT_INTERRUPTED,
    EXIT_REGRESSION,
    EXIT_ERRORS,
    EXIT_INCOMPLETE,
    EXIT_ENVIRONMENT,
    EXIT_INVALID,
)


@contextmanager
def _nightly_lock(path: Path) -> Iterator[None]:
    handle = path.open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        err_console.print(
            f"[bold red]error:[/] another nightly is running ({holder}); lock file {path}. "
            "Nothing was run."
        )
        sys.exit(EXIT_INVALID)
    try:
        handle.truncate(0)
        handle.write(f"pid {os.getpid()}, started {datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC")
        handle.flush()
        yield
    finally:
        handle.truncate(0)
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def _one(
    spec: Path, db: Path, reports_dir: Path, batch: bool, deadline_s: float
) -> tuple[NightEntry, int]:
    """Run one spec as tonight's nightly and compare it with its previous night; the
    entry for the page, and the exit code the run alone calls for. Its batches are
    waited for `deadline_s` at most."""
    from rich.markup import escape

    from ..errors import EnvironmentFailure, InvalidInput, StoreWriteError
    from ..report.build import write_report
    from ..report.compare import RunData, compare, nightly_default_gates
    from ..report.nightly import NightEntry
    from ..run.experiment import RunOptions, prepare, resume_command, run_experiment
    from ..store.queries import Results
    from .compare import print_comparison

    entry = NightEntry(spec=str(spec))
    try:
        plan, warnings = prepare(spec, db, batch=batch)
        entry.experiment = plan.spec.experiment.name
        entry.batched = [a.id for a in plan.batched]
        previous, why = _previous(entry.experiment, [c.id for c in plan.cases()], db)
        console.print(f"[bold]{entry.experiment}[/] ({spec})")
        options = RunOptions(
            db=db,
            use_cache=False,
            kind="nightly",
            merge_attempts=MERGE_ATTEMPTS,
            prepared=(plan, warnings),  # checked once, above
            batch_deadline_s=max(deadline_s, 0.0),
        )
        outcome = run_experiment(spec, options)
    except InvalidInput as exc:  # the spec, or an arm that cannot run here
        entry.problems.append(f"invalid spec, not run: {exc}")
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}")
        return entry, EXIT_INVALID
    except StoreWriteError as exc:
        entry.problems.append(f"the run stopped: {exc}; resume with `{exc.resume}`")
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}")
        return entry, EXIT_ENVIRONMENT
    except EnvironmentFailure as exc:
        entry.problems.append(str(exc))
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}")
        return entry, EXIT_ENVIRONMENT
    entry.run_id = outcome.run_id
    s = outcome.stats
    console.print(
        f"  run {outcome.run_id}: {outcome.status}, {s.calls} calls, {s.error_count} errors, "
        f"{s.cost_usd:.4f} USD, {s.wall_time_s:.1f} s"
    )
    codes = {EXIT_OK}
    if outcome.merge.failed:
        entry.problems.append(outcome.merge.message)
        codes.add(EXIT_ENVIRONMENT)
    elif not outcome.merge.merged:
        entry.problems.append(
            f"not merged into {db} yet ({outcome.merge.message}); `abharness merge` finishes it"
        )
    if outcome.status == "interrupted":
        entry.problems.append(f"interrupted: resume with `{resume_command(outcome.run_id, db)}`")
        codes.add(EXIT_INTERRUPTED)
    elif outcome.error_rate_exceeded:
        entry.problems.append(
            f"error rate {outcome.errors}/{outcome.calls} is above max_error_rate "
            f"{outcome.max_error_rate:g}"
        )
        codes.add(EXIT_ERRORS)
    elif outcome.status == "incomplete":
        missing = []
        if outcome.not_made:
            missing.append(f"{outcome.not_made} calls never made ({'; '.join(outcome.failures)})")
        if outcome.batches_running:
            missing.append(
                f"{len(outcome.batches_running)} batches still running at the provider at the "
                f"deadline, and billed ({'; '.join(outcome.batches_running)})"
            )
        entry.problems.append(
            f"incomplete: {', and '.join(missing)}; resume with "
            f"`{resume_command(outcome.run_id, db)}`"
        )
        codes.add(EXIT_INCOMPLETE)
    code = next((c for c in PRECEDENCE if c in codes), EXIT_OK)
    try:
        with Results(outcome.results_path) as results:
            report = write_report(results, outcome.run_id, reports_dir, str(db))
            current = RunData.read(results, outcome.run_id)
    except EnvironmentFailure as exc:
        entry.problems.append(str(exc))
        return entry, EXIT_ENVIRONMENT
    # the index lives in reports/nightly/<date>/: two levels below the reports folder
    entry.report_href = os.path.relpath(report.with_suffix(".html"), reports_dir / "nightly" / "d")
    if previous is None:
        if why.startswith("NOT EVALUATED"):
            entry.problems.append(why)
        else:
            entry.note = why
        console.print(f"  {why}")
        return entry, code
    entry.previous = previous.run_id
    gates = plan.spec.experiment.gates
    if gates == type(gates)():
        gates = nightly_default_gates(len(plan.arms))
        entry.note = "the spec sets no gates: the nightly defaults apply"
    entry.comparison = compare(previous, current, gates)
    print_comparison(
        entry.comparison, f"{entry.experiment}: {current.run_id} against {previous.run_id}"
    )
    return entry, code


def _previous(experiment: str, case_ids: list[str], db: Path) -> tuple[RunData | None, str]:
    """The previous nightly run, read now (the database may be busy later), or why not."""
    from ..report.compare import RunData
    from ..store.queries import DatabaseBusy, NoDatabase, Results

    try:
        with Results(db) as results:
            run_id = results.previous_nightly(experiment, case_ids)
            if run_id is None:
                return None, "first night for these cases: nothing to compare with (pass)"
            return RunData.read(results, run_id), ""
    except NoDatabase:
        return None, "first night: no database yet, nothing to compare with (pass)"
    except DatabaseBusy as exc:
        return None, f"NOT EVALUATED: the previous night could not be read ({exc})"


def _write_index(started: datetime, entries: list[NightEntry], db: Path, reports_dir: Path) -> Path:
    import pandas as pd

    from ..report.nightly import render_index
    from ..store.queries import Results

    night = f"{started:%Y-%m-%d}"
    experiments = [x.experiment for x in entries if x.experiment]
    frames = []
    sources = [db] + [
        p for x in entries for p in _staging_of(x, db) if p.exists()
    ]  # tonight's unmerged runs too
    for source in dict.fromkeys(sources):
        try:
            with Results(source) as results:
                frames.append(results.trend(experiments))
        except Exception as exc:  # a trend chart is not worth failing a nightly over
            err_console.print(f"[yellow]warning:[/] trend from {source} not read: {exc}")
    trend = (
        pd.concat([f for f in frames if len(f)], ignore_index=True)
        if any(len(f) for f in frames)
        else pd.DataFrame()
    )
    if len(trend):
        trend = trend.drop_duplicates(["experiment", "arm_id", "run_id"]).sort_values(
            ["experiment", "night", "run_id"]
        )
        keep = trend.groupby("experiment")["run_id"].transform(
            lambda r: r.isin(list(dict.fromkeys(r))[-30:])
        )
        trend = trend[keep]
    folder = reports_dir / "nightly" / night
    folder.mkdir(parents=True, exist_ok=True)
    html = render_index(night, entries, trend)
    page = folder / f"{started:%H%M%S}.html"
    page.write_text(html, encoding="utf-8")
    (folder / "index.html").write_text(html, encoding="utf-8")
    return folder / "index.html"


def _staging_of(entry: NightEntry, db: Path) -> list[Path]:
    from ..store.db import staging_dir

    return [staging_dir(db) / f"{entry.run_id}.duckdb"] if entry.run_id else []
