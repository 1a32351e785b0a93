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

The night itself (the lock, running each spec, the batch deadline, interruption) is
`run/nightly.py`'s; this front end reads the previous nights, compares, writes the
reports and the index (`report/`), and maps each run's `Status` to an exit code
(`EXIT_CODES`, `PRECEDENCE`).
"""

from __future__ import annotations

import os
import sys
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ..run.nightly import Status
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
    from ..run.nightly import SpecNight

DEFAULT_DIR = Path("experiments/nightly")
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
    from ..report.nightly import summary_lines
    from ..run.nightly import NightlyRunning, nightly_specs, start_night

    specs = nightly_specs(folder)
    judge = _Judge(db, reports_dir)
    try:
        with start_night(db, batch=batch, batch_deadline_s=batch_deadline) as night:
            nights = night.run(specs, judge)
            page = _write_index(night.started, judge.entries, db, reports_dir)
    except NightlyRunning as exc:
        err_console.print(
            f"[bold red]error:[/] another nightly is running ({exc.holder}); lock file "
            f"{exc.lock}. Nothing was run."
        )
        sys.exit(EXIT_INVALID)
    entries = judge.entries
    console.print(f"nightly index: {page}")
    for line in summary_lines(entries):
        (err_console if line.startswith(("FAIL", "NOT")) else console).print(line, markup=False)
    codes = {EXIT_CODES[status] for x in nights for status in x.statuses}
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


# What each status of a run (`run.nightly.Status`) makes the night's exit code.
EXIT_CODES = {
    Status.OK: EXIT_OK,
    Status.INVALID: EXIT_INVALID,
    Status.ENVIRONMENT: EXIT_ENVIRONMENT,
    Status.INTERRUPTED: EXIT_INTERRUPTED,
    Status.ERRORS: EXIT_ERRORS,
    Status.INCOMPLETE: EXIT_INCOMPLETE,
}

# When several hold, the night's exit code is the first of these (module docstring).
PRECEDENCE = (
    EXIT_INTERRUPTED,
    EXIT_REGRESSION,
    EXIT_ERRORS,
    EXIT_INCOMPLETE,
    EXIT_ENVIRONMENT,
    EXIT_INVALID,
)


class _Judge:
    """`run.nightly.Judge`: reads each run's previous night before it runs; after it,
    prints it, writes its report and compares it with that night. `entries` are the
    index page's rows, one per spec."""

    def __init__(self, db: Path, reports_dir: Path) -> None:
        self.db = db
        self.reports_dir = reports_dir
        self.entries: list[NightEntry] = []
        self._previous: tuple[RunData | None, str] = (None, "")

    def before(self, night: SpecNight) -> None:
        assert night.plan is not None and night.experiment is not None
        self._previous = _previous(night.experiment, [c.id for c in night.plan.cases()], self.db)
        console.print(f"[bold]{night.experiment}[/] ({night.spec})")

    def after(self, night: SpecNight) -> Status | None:
        from rich.markup import escape

        from ..errors import EnvironmentFailure
        from ..report.build import write_report
        from ..report.compare import RunData, compare, nightly_default_gates
        from ..report.nightly import NightEntry
        from ..store.queries import Results
        from .compare import print_comparison

        entry = NightEntry(
            spec=str(night.spec),
            experiment=night.experiment,
            batched=night.batched,
            problems=night.problems,
        )
        self.entries.append(entry)
        outcome = night.outcome
        if outcome is None:
            err_console.print(f"[bold red]error:[/] {escape(str(night.error))}")
            return None
        entry.run_id = outcome.run_id
        s = outcome.stats
        console.print(
            f"  run {outcome.run_id}: {outcome.status}, {s.calls} calls, {s.error_count} errors, "
            f"{s.cost_usd:.4f} USD, {s.wall_time_s:.1f} s"
        )
        try:
            with Results(outcome.results_path) as results:
                report = write_report(results, outcome.run_id, self.reports_dir, str(self.db))
                current = RunData.read(results, outcome.run_id)
        except EnvironmentFailure as exc:
            entry.problems.append(str(exc))
            return Status.ENVIRONMENT
        # the index lives in reports/nightly/<date>/: two levels below the reports folder
        entry.report_href = os.path.relpath(
            report.with_suffix(".html"), self.reports_dir / "nightly" / "d"
        )
        previous, why = self._previous
        if previous is None:
            if why.startswith("NOT EVALUATED"):
                entry.problems.append(why)
            else:
                entry.note = why
            console.print(f"  {why}")
            return None
        assert night.plan is not None
        entry.previous = previous.run_id
        gates = night.plan.spec.experiment.gates
        if gates == type(gates)():
            gates = nightly_default_gates(len(night.plan.arms))
            entry.note = "the spec sets no gates: the nightly defaults apply"
        entry.comparison = compare(previous, current, gates)
        print_comparison(
            entry.comparison, f"{entry.experiment}: {current.run_id} against {previous.run_id}"
        )
        return None


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
    from ..store.recorder import staging_path

    return [staging_path(db, entry.run_id)] if entry.run_id else []
