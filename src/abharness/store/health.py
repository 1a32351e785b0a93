"""What can be wrong with a database file, named once.

DuckDB says everything with a few exception classes and a sentence; `classify` turns
an exception (DuckDB's or the OS's) into one of `PROBLEMS`, so that each command can
say in one line what happened and what is safe, and never maps a full disk or a junk
file to "busy".

`check_main_db` runs before a run's first call: the main database must be absent (it is
made at the merge), or a DuckDB file abharness made whose schema this version knows,
in a folder it can write. Anything else is refused before a cent is spent.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import duckdb

from ..errors import DatabaseRefused, EnvironmentFailure
from .migrations import MIGRATIONS

PROBLEMS = ("busy", "corrupt", "full", "read_only", "permission", "memory", "other")

_MARKERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("full", ("no space left on device", "disk full", "disk quota exceeded")),
    ("read_only", ("read-only file system",)),
    ("permission", ("permission denied", "operation not permitted")),
    ("memory", ("out of memory", "could not allocate")),
    ("busy", ("could not set lock", "conflicting lock", "being used by another process")),
    (
        "corrupt",
        (
            "not a valid duckdb database",
            "could not read enough bytes",
            "corrupt",
            "checksum",
            "invalid metadata",
            "serialization error",
        ),
    ),
)
_ERRNO = {
    errno.ENOSPC: "full",
    errno.EDQUOT: "full",
    errno.EROFS: "read_only",
    errno.EACCES: "permission",
    errno.EPERM: "permission",
}


def classify(exc: BaseException) -> str:
    """One of `PROBLEMS` for an exception raised while opening or writing a database."""
    if isinstance(exc, OSError) and exc.errno in _ERRNO:
        return _ERRNO[exc.errno]
    if isinstance(exc, MemoryError | duckdb.OutOfMemoryException):
        return "memory"
    text = str(exc).lower()
    for problem, markers in _MARKERS:
        if any(m in text for m in markers):
            return problem
    return "other"


def first_line(exc: BaseException) -> str:
    """DuckDB's message on one line: its first line, with a "Did you mean" or
    "Candidate bindings" hint kept, the caret drawing under the query dropped."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    hints = [line for line in lines[1:] if line.lower().startswith(("did you mean", "candidate"))]
    return " ".join([lines[0], *hints])


def environment_failure(exc: BaseException, doing: str, state: str) -> EnvironmentFailure:
    """An `EnvironmentFailure` for `exc`, which happened while `doing` something; `state`
    says where the data is now and what to run next."""
    problem = classify(exc)
    what = {
        "full": "the disk is full",
        "read_only": "the file system is read-only",
        "permission": "permission denied",
        "memory": "out of memory",
    }.get(problem, first_line(exc))
    return EnvironmentFailure(f"{doing}: {what}", state)


def schema_version() -> int:
    """The newest migration this abharness knows."""
    return max(number for number, _, _ in MIGRATIONS)


def check_main_db(path: Path, *, writing: bool = True) -> None:
    """Refuse, before anything is paid or written, a main database abharness cannot use.

    Raises `DatabaseRefused` (exit 1) for a file that is not DuckDB or is corrupt, a DuckDB
    file with tables but no ``schema_migrations`` (someone else's database), or a schema
    newer than this version; `EnvironmentFailure` for a folder the run cannot write
    (its staging file and the merge need it) or a file it may not read. A database
    another process holds is not checked here: the run goes on and its merge waits.
    ``writing=False`` (``validate``, ``--dry-run``) leaves the folder's permissions alone."""
    folder = path.parent if str(path.parent) else Path(".")
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if writing and (not os.access(existing, os.W_OK | os.X_OK) or _read_only_fs(existing)):
        raise EnvironmentFailure(
            f"{folder} cannot be written (read-only folder or no permission): the run's "
            "staging file and the merge need it",
            "nothing was run or written; choose another --db",
        )
    if not path.exists():
        return
    try:
        con = duckdb.connect(str(path), read_only=True)
    except (duckdb.Error, OSError) as exc:
        problem = classify(exc)
        if problem == "busy":
            return
        if problem == "corrupt":
            raise DatabaseRefused(
                f"not a DuckDB database, or a corrupt one ({first_line(exc)}); choose another "
                "--db or move the file away",
                file=path,
            ) from exc
        raise environment_failure(exc, f"cannot open {path}", "nothing was run or written") from exc
    try:
        tables = [
            r[0]
            for r in con.execute(
                "SELECT table_name FROM duckdb_tables() WHERE database_name = current_database()"
            ).fetchall()
        ]
        if tables and "schema_migrations" not in tables:
            shown = ", ".join(sorted(tables)[:5]) + (" ..." if len(tables) > 5 else "")
            raise DatabaseRefused(
                f"this DuckDB file holds tables abharness did not make ({shown}): abharness "
                "never writes into another program's database; choose another --db",
                file=path,
            )
        if tables:
            row = con.execute("SELECT max(version) FROM schema_migrations").fetchone()
            newest = int(row[0]) if row and row[0] is not None else 0
            if newest > schema_version():
                raise DatabaseRefused(
                    f"written by a newer abharness (schema version {newest}; this one knows "
                    f"up to {schema_version()}): upgrade abharness or choose another --db",
                    file=path,
                )
    except duckdb.Error as exc:
        raise DatabaseRefused(
            f"cannot read this database ({first_line(exc)}): choose another --db", file=path
        ) from exc
    finally:
        con.close()


def _read_only_fs(folder: Path) -> bool:
    """Whether `folder` sits on a file system mounted read-only (root ignores modes)."""
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except OSError:
        return False
