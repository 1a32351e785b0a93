"""The read side: every query the report, compare, resume and the CLI make.

`Results` opens a database read-only (an analyst may hold it; a run's staging file
too), so reading never blocks or breaks a run. A database written by an older
abharness, not yet migrated, is read as it is: columns added later read as null.

Analysts' SQL (``abharness sql``, and every front end that takes a query) goes through
`Results.query` on a connection opened with ``analyst=True``: DuckDB's own switches
turn off every file access (COPY, EXPORT, ATTACH, ``read_csv``, ``glob``), extension
installs and loads, and lock the configuration (no SET, no PRAGMA that sets); and the
text must be one statement that only reads (`check_read_only`). Read-only on the main
file is not enough on its own: ATTACH could open the response cache for writing.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb

from ..errors import DatabaseRefused, InvalidInput
from .health import classify, environment_failure, first_line
from .records import made_sql

if TYPE_CHECKING:  # pandas is imported by DuckDB's .df() when a frame is asked for
    import pandas as pd

ANALYST_CONFIG: dict[str, Any] = {
    "enable_external_access": False,  # no file but this database: COPY, ATTACH, read_*, glob
    "autoinstall_known_extensions": False,
    "autoload_known_extensions": False,
    "lock_configuration": True,  # last: no SET, RESET or setting PRAGMA after this
}
# Statement types that only read, and the PRAGMAs (or CALL pragma_...) that only report.
READ_STATEMENTS = ("SELECT", "EXPLAIN")
READ_PRAGMAS = frozenset(
    {
        "table_info",
        "show",
        "show_tables",
        "show_tables_expanded",
        "show_databases",
        "database_list",
        "database_size",
        "storage_info",
        "metadata_info",
        "version",
        "platform",
        "functions",
        "collations",
        "user_agent",
        "duckdb_tables",
        "duckdb_columns",
        "duckdb_views",
        "duckdb_settings",
        "duckdb_functions",
        "duckdb_constraints",
        "duckdb_indexes",
        "duckdb_types",
        "duckdb_schemas",
        "duckdb_databases",
    }
)
_PRAGMA_NAME = re.compile(r"^\s*(?:PRAGMA|CALL)\s+(?:pragma_)?([A-Za-z_]+)", re.IGNORECASE)


class QueryRefused(InvalidInput):
    """An analyst's query that would do more than read: refused before it runs."""


def check_read_only(sql: str) -> str:
    """The one statement in `sql` if it only reads, else `QueryRefused` saying why."""
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise QueryRefused(first_line(exc), key="query") from exc
    if not statements:
        raise QueryRefused("no statement in the query", key="query")
    if len(statements) > 1:
        raise QueryRefused(f"{len(statements)} statements: give one query at a time", key="query")
    statement = statements[0]
    kind = statement.type.name
    if kind in READ_STATEMENTS:
        return sql
    name = _PRAGMA_NAME.match(statement.query)
    if kind in ("PRAGMA", "CALL") and name and name[1].lower() in READ_PRAGMAS:
        return sql
    shown = " ".join(statement.query.split())[:40]
    raise QueryRefused(
        f"refused {kind} statement ({shown!r}): abharness sql only reads (SELECT, WITH, "
        "EXPLAIN, DESCRIBE, SHOW, SUMMARIZE, and PRAGMAs that report)",
        key="query",
    )


class DatabaseBusy(RuntimeError):
    """The database is locked by another process."""


class NoDatabase(FileNotFoundError):
    """There is no database at the path given."""


class RunNotFound(LookupError):
    pass


def busy_message(path: Path, exc: Exception) -> str:
    """One line for a database another process holds: who holds it, what to do."""
    holder = re.search(r"held in (\S+) \(PID (\d+)\)", str(exc))
    who = f" ({Path(holder[1]).name}, PID {holder[2]})" if holder else ""
    return (
        f"{path} is open for writing in another process{who}: close it there (or open it "
        "read-only) and try again"
    )


class Results:
    """A read-only connection to one results database (or a run's staging file).

    ``analyst=True`` opens it for analysts' SQL (`query`): no file access, no
    extensions, configuration locked."""

    def __init__(self, path: str | Path, *, analyst: bool = False) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise NoDatabase(f"no database at {self.path}: run an experiment first")
        try:
            self.con = duckdb.connect(
                str(self.path), read_only=True, config=ANALYST_CONFIG if analyst else {}
            )
        except (duckdb.Error, OSError) as exc:
            problem = classify(exc)
            if problem == "busy":  # another process holds it read-write
                raise DatabaseBusy(busy_message(self.path, exc)) from exc
            if problem == "corrupt":
                raise DatabaseRefused(
                    f"not a DuckDB database, or a corrupt one ({first_line(exc)})", file=self.path
                ) from exc
            raise environment_failure(
                exc, f"cannot open {self.path}", "nothing was changed"
            ) from exc
        self.analyst = analyst

    def __enter__(self) -> Results:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.con.close()

    def has_column(self, table: str, column: str) -> bool:
        row = self.con.execute(
            "SELECT count(*) FROM information_schema.columns "
            "WHERE table_name = ? AND column_name = ?",
            [table, column],
        ).fetchone()
        return bool(row and row[0])

    # -- runs ----------------------------------------------------------------------

    def run_id(self, ref: str | None) -> str:
        """`ref` itself if recorded; the latest run when `ref` is None or 'last';
        with 'previous', the run before the latest of the same experiment."""
        if ref == "previous":
            last = self.run_id("last")
            row = self.con.execute(
                "SELECT p.run_id FROM runs p JOIN runs l ON l.run_id = ? "
                "WHERE p.experiment = l.experiment AND p.run_id <> l.run_id "
                "AND (p.started_at, p.run_id) < (l.started_at, l.run_id) "
                "ORDER BY p.started_at DESC, p.run_id DESC LIMIT 1",
                [last],
            ).fetchone()
            if row is None:
                raise RunNotFound(f"the latest run {last} is its experiment's first: no 'previous'")
            return str(row[0])
        if ref in (None, "last", "--last"):
            row = self.con.execute(
                "SELECT run_id FROM runs ORDER BY started_at DESC, run_id DESC LIMIT 1"
            ).fetchone()
            if row is None:
                raise RunNotFound("the database has no runs yet")
            return str(row[0])
        row = self.con.execute("SELECT run_id FROM runs WHERE run_id = ?", [ref]).fetchone()
        if row is None:
            raise RunNotFound(f"no run {ref!r} in the database")
        return str(row[0])

    def previous_nightly(self, experiment: str, case_ids: list[str]) -> str | None:
        """The latest finished nightly run of `experiment` over exactly these cases."""
        if not self.has_column("runs", "kind"):
            return None
        row = self.con.execute(
            """
            SELECT r.run_id FROM runs r
            JOIN (SELECT run_id, list_sort(list(case_id)) AS ids FROM cases GROUP BY run_id) k
              ON k.run_id = r.run_id
            WHERE r.experiment = ? AND r.kind = 'nightly' AND r.status <> 'running'
              AND k.ids = list_sort(?::VARCHAR[])
            ORDER BY r.started_at DESC, r.run_id DESC LIMIT 1
            """,
            [experiment, case_ids],
        ).fetchone()
        return None if row is None else str(row[0])

    def trend(self, experiments: list[str], nights: int = 30) -> pd.DataFrame:
        """`nightly_trend` rows of the last `nights` nights of each experiment."""
        if not self.has_column("runs", "kind"):
            import pandas as pd

            return pd.DataFrame()
        return self.con.execute(
            """
            SELECT * FROM nightly_trend t
            WHERE experiment IN (SELECT unnest(?::VARCHAR[]))
              AND night >= (SELECT max(night) FROM nightly_trend u
                            WHERE u.experiment = t.experiment) - ?::INTEGER + 1
            ORDER BY experiment, started_at, run_id, arm_id
            """,
            [experiments, nights],
        ).df()

    def run_ids(self) -> set[str]:
        return {r[0] for r in self.con.execute("SELECT run_id FROM runs").fetchall()}

    def run(self, run_id: str) -> dict[str, Any]:
        frame = self.con.execute("SELECT * FROM runs WHERE run_id = ?", [run_id]).df()
        if frame.empty:
            raise RunNotFound(f"no run {run_id!r} in the database")
        return dict(frame.iloc[0].to_dict())

    def arms(self, run_id: str) -> pd.DataFrame:
        """The run's arms in spec order, judges left out."""
        role = "AND coalesce(role, 'arm') = 'arm' " if self.has_column("arms", "role") else ""
        return self.con.execute(
            f"SELECT * FROM arms WHERE run_id = ? {role}ORDER BY position, arm_id", [run_id]
        ).df()

    def batched_arms(self, run_id: str) -> list[str]:
        """The run's arms that ran in batch mode (SPEC §13: ``params_json.mode``)."""
        rows = self.con.execute(
            "SELECT arm_id FROM arms WHERE run_id = ? "
            "AND json_extract_string(params_json, '$.mode') = 'batch' ORDER BY position, arm_id",
            [run_id],
        ).fetchall()
        return [r[0] for r in rows]

    def totals(self, run_id: str) -> tuple[int, int, int]:
        """(calls made, errors among them, calls never made) of a run, judges' calls
        included; a call never made is not an error (`CallRecord.made`)."""
        made = made_sql(self.has_column("calls", "unfinished"))
        row = self.con.execute(
            f"SELECT count(*) FILTER (WHERE {made}), "
            f"count(*) FILTER (WHERE {made} AND status = 'error'), "
            f"count(*) FILTER (WHERE NOT {made}) FROM calls WHERE run_id = ?",
            [run_id],
        ).fetchone()
        assert row is not None
        return int(row[0]), int(row[1]), int(row[2])

    # -- calls ---------------------------------------------------------------------

    def call_table(self, run_id: str, roles: tuple[str, ...] = ("arm",)) -> pd.DataFrame:
        """One row per arm call with its pass/fail and score; `roles` ``("member",)``
        gives a panel's members' calls instead (each member its own arm id). A composite
        arm's parts are never among the arms' rows.

        ``made`` is false for calls never made (cost cap, endpoint stopped): they are
        missing data, not failures. A made call that failed, or whose scorer raised
        (``scorer_errors``), has passed false and score 0. Rows are ordered by (arm,
        case, repeat), so nothing computed from them depends on the order calls were
        written in."""
        judges = (
            "AND c.judged_call_id IS NULL" if self.has_column("calls", "judged_call_id") else ""
        )
        if self.has_column("calls", "role"):  # a panel's members and synthesizer are parts
            judges += f" AND coalesce(c.role, 'arm') IN ({', '.join(repr(r) for r in roles)})"
        unfinished = "c.unfinished" if self.has_column("calls", "unfinished") else "FALSE"
        result = self.con.execute(
            f"""
            WITH s AS (
                SELECT call_id, count(*) FILTER (WHERE passed IS NULL) AS scorer_errors,
                       coalesce(bool_and(coalesce(passed, FALSE)), FALSE) AS passed,
                       avg(value) AS score
                FROM scores WHERE run_id = ? AND scorer <> 'feedback' GROUP BY call_id
            )
            SELECT c.arm_id, c.case_id, c.repeat, c.status, c.error_type, c.cache_hit,
                   {made_sql(self.has_column("calls", "unfinished"))} AS made,
                   coalesce({unfinished}, FALSE) AS unfinished,
                   c.latency_ms, c.ttft_ms, c.input_tokens, c.output_tokens, c.cost_usd,
                   c.est_input_tokens - c.input_tokens AS est_error,
                   coalesce(s.scorer_errors, 0) AS scorer_errors,
                   c.status = 'ok' AND coalesce(s.passed, FALSE) AS passed,
                   CASE WHEN c.status = 'ok' AND coalesce(s.scorer_errors, 0) = 0
                        THEN coalesce(s.score, 0) ELSE 0 END AS score
            FROM calls c LEFT JOIN s ON s.call_id = c.call_id
            WHERE c.run_id = ? {judges}
            """,
            [run_id, run_id],
        )
        # Sorted here, not in SQL, and fetched in chunks: for 100k calls DuckDB's sort
        # and its whole result beside the frame held ~25 MB more (BENCHMARKS.md).
        return _frame_in_chunks(result).sort_values(
            ["arm_id", "case_id", "repeat"], ignore_index=True
        )

    def case_field(self, run_id: str, name: str) -> dict[str, str]:
        """Case id → the value of one of its fields (e.g. the spec's cluster field)."""
        rows = self.con.execute(
            "SELECT case_id, json_extract_string(vars_json, '$.' || ?) FROM cases WHERE run_id = ?",
            [json.dumps(name), run_id],
        ).fetchall()
        return {r[0]: r[1] for r in rows if r[1] is not None}

    def judge_costs(self, run_id: str) -> dict[str, float | None]:
        """Per graded arm: what judging its calls cost."""
        if not self.has_column("calls", "judged_call_id"):
            return {}
        return dict(
            self.con.execute(
                "SELECT j.arm_id, sum(c.cost_usd) FROM calls c "
                "JOIN calls j ON c.judged_call_id = j.call_id WHERE c.run_id = ? GROUP BY 1",
                [run_id],
            ).fetchall()
        )

    def usage_sources(self, run_id: str) -> dict[str, dict[str, int]]:
        """Per arm, its answered calls by where their token counts came from
        (``usage_source``: final_chunk, body, missing, proxy_estimate, cache, parts)."""
        if not self.has_column("calls", "usage_source"):
            return {}
        out: dict[str, dict[str, int]] = {}
        for arm, source, n in self.con.execute(
            "SELECT arm_id, usage_source, count(*) FROM calls "
            "WHERE run_id = ? AND status = 'ok' AND usage_source IS NOT NULL GROUP BY ALL",
            [run_id],
        ).fetchall():
            out.setdefault(str(arm), {})[str(source)] = int(n)
        return out

    def arm_parts(self, run_id: str) -> list[dict[str, Any]]:
        """A composite arm's parts (``arms.role`` member, synthesizer or route), in the
        order the spec lists them."""
        if not (self.has_column("arms", "parent_arm_id") and self.has_column("arms", "role")):
            return []
        cur = self.con.execute(
            "SELECT arm_id, role, parent_arm_id, provider, model FROM arms "
            "WHERE run_id = ? AND parent_arm_id IS NOT NULL ORDER BY position, arm_id",
            [run_id],
        )
        names = [d[0] for d in cur.description or []]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    def route_outcomes(self, run_id: str, arm_id: str) -> tuple[dict[str, int], list[tuple]]:
        """A route arm's calls made: how many each route served (``served_by``), and each
        failed route's errors as (route, error_type, count)."""
        served = dict(
            self.con.execute(
                "SELECT served_by, count(*) FROM calls WHERE run_id = ? AND arm_id = ? "
                "AND served_by IS NOT NULL GROUP BY 1",
                [run_id, arm_id],
            ).fetchall()
        )
        errors = self.con.execute(
            """
            SELECT e.route, e.error_type, count(*) FROM calls,
                   unnest(from_json(attempt_errors_json,
                                    '[{"route": "VARCHAR", "error_type": "VARCHAR"}]')) AS t(e)
            WHERE run_id = ? AND arm_id = ? AND attempt_errors_json IS NOT NULL
              AND e.route IS NOT NULL
            GROUP BY ALL ORDER BY 1, 2
            """,
            [run_id, arm_id],
        ).fetchall()
        return {str(k): int(v) for k, v in served.items()}, errors

    def example(
        self, run_id: str, case_id: str, repeat: int, arm_id: str, baseline: str
    ) -> tuple[dict[str, Any], str | None, str | None] | None:
        """One case's variables and the two arms' responses at one repeat (None if the
        run has no such case)."""
        row = self.con.execute(
            """
            SELECT k.vars_json,
                   (SELECT response_text FROM calls
                    WHERE run_id = $run AND arm_id = $arm AND case_id = $case AND repeat = $repeat),
                   (SELECT response_text FROM calls
                    WHERE run_id = $run AND arm_id = $base AND case_id = $case AND repeat = $repeat)
            FROM cases k WHERE k.run_id = $run AND k.case_id = $case
            """,
            {"run": run_id, "case": case_id, "repeat": repeat, "arm": arm_id, "base": baseline},
        ).fetchone()
        if row is None:
            return None
        return json.loads(row[0] or "{}"), row[1], row[2]

    # -- prompts and ad-hoc SQL ----------------------------------------------------

    def prompt_hashes(self) -> dict[tuple[str, int], set[str]]:
        """Content hashes recorded per (prompt_name, prompt_version)."""
        has_arms = self.con.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_name = 'arms'"
        ).fetchone()
        if not has_arms or not has_arms[0]:
            return {}
        out: dict[tuple[str, int], set[str]] = {}
        for name, version, digest in self.con.execute(
            "SELECT DISTINCT prompt_name, prompt_version, prompt_hash FROM arms "
            "WHERE prompt_name IS NOT NULL"
        ).fetchall():
            out.setdefault((name, int(version)), set()).add(digest)
        return out

    def query(self, sql: str, limit: int | None = None) -> tuple[list[str], list[tuple[Any, ...]]]:
        """An analyst's SQL: (column names, rows); at most `limit` + 1 rows are fetched.
        One statement that only reads (`check_read_only`); open the connection with
        ``analyst=True`` for a query that comes from outside abharness."""
        cur = self.con.execute(check_read_only(sql))
        rows = cur.fetchall() if limit is None else cur.fetchmany(limit + 1)
        return [d[0] for d in cur.description or []], rows


def recorded_prompt_hashes(main: Path) -> dict[tuple[str, int], set[str]]:
    """Content hashes recorded per ``name@N`` in `main`; a missing file records nothing."""
    if not main.exists():
        return {}
    with Results(main) as results:
        return results.prompt_hashes()


def _frame_in_chunks(result: duckdb.DuckDBPyConnection, vectors: int = 8) -> pd.DataFrame:
    """A query's result as one DataFrame, fetched `vectors` × 2,048 rows at a time."""
    import pandas as pd

    chunks = [result.fetch_df_chunk(vectors)]
    while len(chunks[-1]):
        chunks.append(result.fetch_df_chunk(vectors))
    if len(chunks) <= 2:  # one chunk and the empty one that ends it, or only that
        return chunks[0]
    return pd.concat(chunks[:-1], ignore_index=True)
