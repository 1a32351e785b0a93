"""One night: every spec of a folder run as a ``nightly`` run, one after another, one
night at a time (SPEC §10).

`start_night` takes the lock (a file beside the database: a second nightly is refused at
once, `NightlyRunning`) and starts the night's clock; `Night.run` runs each spec
through `run_experiment`, the path `abharness run` takes, with the cache off and every
batch waited for until the night's deadline, and stops after the run in progress when
the night is interrupted. What each run came to is typed (`SpecNight.statuses`, a
`Status` each): turning them into an exit code is the front end's (`cli/nightly.py`,
a table).

Comparing a run with its previous night, writing its report and the night's index are
`report/`'s, which `run/` may not import. The front end passes them in as a `Judge`,
called around each run, rather than being handed every outcome at the end: the
previous night must be read before tonight's run is merged into the database (and
while the database is quiet), each comparison is printed as its run ends, and the
index is written before the lock is released, as it always was.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from ..errors import EnvironmentFailure, InvalidInput, StoreWriteError

if TYPE_CHECKING:  # imported when a night runs: `abharness --help` stays fast
    from .experiment import Outcome
    from .plan import Plan

MERGE_ATTEMPTS = 10  # a second apart: a busy database leaves the run in staging


class Status(Enum):
    """What one spec's night came to; several may hold at once."""

    OK = "ok"
    INVALID = "invalid"  # the spec, or an arm that cannot run here: not run
    ENVIRONMENT = "environment"  # the machine refused (disk, permissions): the data is safe
    INTERRUPTED = "interrupted"  # Ctrl-C or SIGTERM: the run saved, the night stops
    ERRORS = "errors"  # the run's errors exceed its max_error_rate
    INCOMPLETE = "incomplete"  # calls never made, or batches running at the deadline


@dataclass
class SpecNight:
    """One spec's night: its plan and run (when they came to be), what held
    (`statuses`, ``{Status.OK}`` when nothing went wrong) and the problems to show."""

    spec: Path
    experiment: str | None = None
    batched: list[str] = field(default_factory=list)  # arms run in batch mode (SPEC §13)
    plan: Plan | None = None  # None: the spec is invalid
    outcome: Outcome | None = None  # None: the run did not start, or stopped on an error
    statuses: set[Status] = field(default_factory=lambda: {Status.OK})
    problems: list[str] = field(default_factory=list)  # one line each, for the page
    error: str | None = None  # why it did not run or stopped (outcome is None)

    def hold(self, status: Status, problem: str | None = None) -> None:
        self.statuses = (self.statuses - {Status.OK}) | {status}
        if problem is not None:
            self.problems.append(problem)


class Judge(Protocol):
    """What the front end does around each run (module docstring)."""

    def before(self, night: SpecNight) -> None:
        """The spec is checked (`night.plan` is set) and is about to run."""

    def after(self, night: SpecNight) -> Status | None:
        """The run is over, or the spec could not run (`night.error`). A status when
        judging it failed (its report could not be written): that status then stands
        for the spec alone."""


class NightlyRunning(Exception):
    """Another nightly holds the lock: nothing was run."""

    def __init__(self, holder: str, lock: Path) -> None:
        super().__init__(f"another nightly is running ({holder}); lock file {lock}")
        self.holder = holder
        self.lock = lock


def nightly_specs(folder: Path) -> list[Path]:
    """The specs a night runs, in name order; `InvalidInput` when there are none."""
    specs = sorted(p for p in folder.glob("*.y*ml") if p.suffix in (".yaml", ".yml"))
    if not specs:
        raise InvalidInput(f"no *.yaml specs in {folder}", file=folder)
    return specs


@dataclass
class Night:
    db: Path
    batch: bool  # --batch: every arm that can runs through its provider's batch API
    started: datetime  # UTC: the night's date and the index page's name
    deadline: float  # `time.monotonic()` when waiting for batches stops

    def run(self, specs: list[Path], judge: Judge) -> list[SpecNight]:
        """Each spec's night, in order; after an interrupted run the night stops."""
        nights = []
        for spec in specs:
            night = self.run_one(spec, judge)
            nights.append(night)
            if Status.INTERRUPTED in night.statuses:
                break  # the run in progress saved; the night stops here
        return nights

    def run_one(self, spec: Path, judge: Judge) -> SpecNight:
        """Run one spec as tonight's nightly, judged by `judge`."""
        from .experiment import RunOptions, prepare, run_experiment

        night = SpecNight(spec)
        remaining_s = self.deadline - time.monotonic()
        try:
            plan, warnings = prepare(spec, self.db, batch=self.batch)
            night.plan = plan
            night.experiment = plan.spec.experiment.name
            night.batched = [a.id for a in plan.batched]
            judge.before(night)
            options = RunOptions(
                db=self.db,
                use_cache=False,
                kind="nightly",
                merge_attempts=MERGE_ATTEMPTS,
                prepared=(plan, warnings),  # checked once, above
                batch_deadline_s=max(remaining_s, 0.0),
            )
            night.outcome = run_experiment(spec, options)
        except InvalidInput as exc:  # the spec, or an arm that cannot run here
            night.error = str(exc)
            night.hold(Status.INVALID, f"invalid spec, not run: {exc}")
        except StoreWriteError as exc:
            night.error = str(exc)
            night.hold(Status.ENVIRONMENT, f"the run stopped: {exc}; resume with `{exc.resume}`")
        except EnvironmentFailure as exc:
            night.error = str(exc)
            night.hold(Status.ENVIRONMENT, str(exc))
        else:
            _assess(night, night.outcome, self.db)
        failed = judge.after(night)
        if failed is not None:
            night.statuses = {failed}
        return night


def _assess(night: SpecNight, outcome: Outcome, db: Path) -> None:
    """What the finished run's outcome says: its merge, then how it ended."""
    from .experiment import resume_command

    if outcome.merge.failed:
        night.hold(Status.ENVIRONMENT, outcome.merge.message)
    elif not outcome.merge.merged:
        night.problems.append(
            f"not merged into {db} yet ({outcome.merge.message}); `abharness merge` finishes it"
        )
    if outcome.status == "interrupted":
        night.hold(
            Status.INTERRUPTED,
            f"interrupted: resume with `{resume_command(outcome.run_id, db)}`",
        )
    elif outcome.error_rate_exceeded:
        night.hold(
            Status.ERRORS,
            f"error rate {outcome.errors}/{outcome.calls} is above max_error_rate "
            f"{outcome.max_error_rate:g}",
        )
    elif outcome.status == "incomplete":
        missing = []
        if outcome.not_made:
            missing.append(f"{outcome.not_made} calls never made ({'; '.join(outcome.failures)})")
        if outcome.batches_running:
            missing.append(
                f"{len(outcome.batches_running)} batches still running at the provider at the "
                f"deadline, and billed ({'; '.join(outcome.batches_running)})"
            )
        night.hold(
            Status.INCOMPLETE,
            f"incomplete: {', and '.join(missing)}; resume with "
            f"`{resume_command(outcome.run_id, db)}`",
        )


@contextmanager
def start_night(db: Path, *, batch: bool, batch_deadline_s: float) -> Iterator[Night]:
    """Hold the nightly lock (beside `db`) for the night; its batches are waited for
    `batch_deadline_s` from now at most. `NightlyRunning` if another night holds it."""
    db.parent.mkdir(parents=True, exist_ok=True)
    with _nightly_lock(db.parent / "nightly.lock"):
        started = datetime.now(UTC)
        yield Night(db, batch, started, time.monotonic() + batch_deadline_s)


@contextmanager
def _nightly_lock(path: Path) -> Iterator[None]:
    handle = path.open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise NightlyRunning(holder, path) from None
    try:
        handle.truncate(0)
        handle.write(f"pid {os.getpid()}, started {datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC")
        handle.flush()
        yield
    finally:
        handle.truncate(0)
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()
