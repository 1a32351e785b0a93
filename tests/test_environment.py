"""What the machine and the files around a run can do to it: a database that is not
abharness's (junk, corrupt, someone else's tables, a newer schema) is refused before
any call; a read-only folder too; a full disk during the merge or the report is one
line, exit 5, saying where the run is; a case as large as the limits allow is stored
and resumed like any other."""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest
from click.testing import CliRunner

from abharness.cli.main import cli
from abharness.spec.dataset import MAX_CASE_BYTES, MAX_FIELD_BYTES
from abharness.store import db as store_db
from abharness.store.health import classify, schema_version

from .conftest import capital_answers, file_digest, write

SPEC = "experiments/spec.yaml"


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.output


def _junk(path: Path) -> None:
    path.write_bytes(b"these are somebody's notes, not a database\n" * 200)


def _foreign(path: Path) -> None:
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE invoices (id INTEGER, amount DOUBLE)")
    con.execute("INSERT INTO invoices VALUES (1, 9.5)")
    con.close()


def _newer(path: Path) -> None:
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name VARCHAR)")
    con.execute(
        "INSERT INTO schema_migrations VALUES (?, 'from the future')", [schema_version() + 1]
    )
    con.close()


def _truncated(path: Path) -> None:
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE t AS SELECT range AS x, repeat('a', 100) AS y FROM range(50000)")
    con.close()
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


DATABASES = {
    "not DuckDB": (_junk, r"not a DuckDB database, or a corrupt one"),
    "someone else's DuckDB": (_foreign, r"holds tables abharness did not make \(invoices\)"),
    "a newer schema": (
        _newer,
        r"written by a newer abharness \(schema version \d+; this one knows",
    ),
    "a truncated DuckDB": (_truncated, r"not a DuckDB database, or a corrupt one"),
}


@pytest.mark.parametrize("name", list(DATABASES))
@pytest.mark.parametrize("command", [["run", SPEC], ["validate", SPEC], ["run", SPEC, "--dry-run"]])
def test_a_database_abharness_cannot_use_is_refused_before_any_call(
    project: Path, fake_provider, name: str, command: list[str]
) -> None:
    """Before: found only after every call was paid, then a traceback; a foreign DuckDB
    got abharness's tables written into it; a newer schema was accepted."""
    fake_provider.script = capital_answers()
    make, expected = DATABASES[name]
    db = project / "results/abharness.duckdb"
    db.parent.mkdir()
    make(db)
    before = file_digest(db)
    code, output = run(*command, "--db", str(db))
    assert code == 1, output
    import re

    assert re.search(expected, " ".join(output.split())), output
    assert str(db) in " ".join(output.split())
    assert "Traceback" not in output
    assert fake_provider.requests == []
    assert file_digest(db) == before
    assert not (db.parent / "staging").exists()


def test_merge_and_sql_refuse_a_foreign_or_junk_database_too(tmp_path: Path) -> None:
    foreign = tmp_path / "theirs.duckdb"
    _foreign(foreign)
    before = file_digest(foreign)
    staged = store_db.Store(tmp_path / "staging/20261201-000000-abcdef.duckdb")
    staged.insert(
        "runs", [{"run_id": "20261201-000000-abcdef", "experiment": "x", "status": "completed"}]
    )
    staged.close()
    code, output = run("merge", "--db", str(foreign))
    assert code == 1 and "holds tables abharness did not make" in output, output
    assert file_digest(foreign) == before and "Traceback" not in output
    junk = tmp_path / "junk.duckdb"
    _junk(junk)
    code, output = run("sql", "SELECT 1", "--db", str(junk))
    assert code == 1 and "not a DuckDB database" in output and "Traceback" not in output


@pytest.fixture
def read_only_folder(tmp_path: Path) -> Iterator[Path]:
    """A folder on a file system mounted read-only (root ignores file modes)."""
    folder = tmp_path / "ro"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m,ro", "tmpfs", str(folder)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=False)


def test_a_read_only_database_folder_is_refused_before_any_call(
    project: Path, fake_provider, read_only_folder: Path
) -> None:
    fake_provider.script = capital_answers()
    code, output = run("run", SPEC, "--db", str(read_only_folder / "results/abharness.duckdb"))
    assert code == 5, output
    assert "cannot be written (read-only folder or no permission)" in output
    assert "nothing was run or written" in " ".join(output.split())
    assert "Traceback" not in output and fake_provider.requests == []


@pytest.mark.slow
def test_a_full_disk_during_the_merge_keeps_the_run_whole_and_says_what_to_run(
    project: Path, fake_provider, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: a traceback and exit 1 ("invalid input") although the data was safe."""
    fake_provider.script = capital_answers()
    db = project / "results/abharness.duckdb"
    assert run("run", SPEC, "--db", str(db))[0] == 0
    before = file_digest(db)
    real = store_db.transaction

    def full(con: duckdb.DuckDBPyConnection) -> object:
        if con.execute("SELECT current_database()").fetchone() == ("results",):  # the merge
            raise duckdb.IOException(
                'Could not write "abharness.duckdb.wal": No space left on device'
            )
        return real(con)

    monkeypatch.setattr(store_db, "transaction", full)
    code, output = run("run", SPEC, "--db", str(db), "--no-cache")
    text = " ".join(output.split())
    assert code == 5, output
    assert f"could not merge into {db}: the disk is full" in text
    (staging,) = (db.parent / "staging").glob("*.duckdb")
    assert f"nothing was lost: the run is whole in {staging}" in text
    assert f"abharness merge --db {db}` when there is space" in text
    assert "Traceback" not in output and file_digest(db) == before
    monkeypatch.setattr(store_db, "transaction", real)
    code, output = run("merge", "--db", str(db))
    assert code == 0 and "merged" in output and not staging.exists()


def test_a_full_disk_while_writing_the_report_is_one_line(
    project: Path, fake_provider, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_provider.script = capital_answers()
    db = project / "results/abharness.duckdb"
    real = Path.write_text

    def full(self: Path, *args: object, **kwargs: object) -> int:
        if self.suffix in (".md", ".html"):
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return real(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "write_text", full)
    code, output = run("run", SPEC, "--db", str(db), "--reports-dir", str(project / "reports"))
    text = " ".join(output.split())
    assert code == 5, output
    assert "could not write the report" in text and "the disk is full" in text
    assert f"the run is safe in {db}" in text and "abharness report" in text
    assert "Traceback" not in output
    monkeypatch.setattr(Path, "write_text", real)
    code, output = run(
        "report", "--last", "--db", str(db), "--reports-dir", str(project / "reports")
    )
    assert code == 0, output


@pytest.mark.parametrize(
    ("exc", "problem"),
    [
        (duckdb.IOException("Could not write file: No space left on device"), "full"),
        (OSError(errno.ENOSPC, "No space left on device"), "full"),
        (duckdb.IOException('Cannot open file "x": Read-only file system'), "read_only"),
        (OSError(errno.EACCES, "Permission denied"), "permission"),
        (duckdb.IOException('Could not set lock on file "x": Conflicting lock is held'), "busy"),
        (
            duckdb.IOException('The file "x" exists, but it is not a valid DuckDB database file!'),
            "corrupt",
        ),
        (duckdb.OutOfMemoryException("could not allocate block of size 256KB"), "memory"),
        (duckdb.IOException("something else"), "other"),
    ],
)
def test_every_database_error_is_classified_never_all_busy(exc: Exception, problem: str) -> None:
    assert classify(exc) == problem


@pytest.mark.slow
def test_a_case_at_the_size_limits_is_stored_like_any_other(project: Path, fake_provider) -> None:
    """Before: a 30 MB field passed validation, then ran the staging store out of memory,
    and --resume failed the same way every time. Now a case at the limits runs."""
    fake_provider.script = lambda r: "Paris"
    data = project / "experiments/data/capitals.jsonl"
    field = "y" * (MAX_FIELD_BYTES - 100)
    rest = "z" * (MAX_CASE_BYTES - MAX_FIELD_BYTES - 1000)
    lines = data.read_text().splitlines()
    lines[0] = lines[0].replace('"answer"', f'"context": "{field}", "notes": "{rest}", "answer"')
    data.write_text("\n".join(lines) + "\n")
    write(
        project / "prompts/capitals/v3.j2",
        "{% block prompt %}{% if context is defined %}{{ context }} {{ notes }} {% endif %}"
        "Q: What is the capital of {{ country }}?\nA:{% endblock %}\n",
    )
    spec = project / SPEC
    spec.write_text(
        spec.read_text().replace("prompt: capitals@2", "prompt: capitals@3") + "repeats: 3\n"
    )
    db = project / "results/abharness.duckdb"
    code, output = run("run", SPEC, "--db", str(db), "--no-cache")
    assert code == 0, output
    con = duckdb.connect(str(db), read_only=True)
    sizes = con.execute(
        "SELECT max(length(prompt_text)), count(*) FROM calls WHERE case_id = 'fr'"
    ).fetchone()
    con.close()
    assert sizes is not None and sizes[0] > MAX_CASE_BYTES - 2000 and sizes[1] == 6
