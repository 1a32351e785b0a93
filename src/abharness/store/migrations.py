"""The schema, as numbered migrations recorded in ``schema_migrations`` and applied
when a store opens (simonw/llm's pattern). A migration is never edited once shipped:
a change is a new one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import duckdb

from .records import MADE_SQL

# Each table's primary key (migration 1); a merge replaces staged rows by it.
KEYS = {
    "runs": ("run_id",),
    "arms": ("run_id", "arm_id"),
    "cases": ("run_id", "case_id"),
    "calls": ("call_id",),
    "scores": ("call_id", "scorer"),
    "batches": ("run_id", "batch_key"),  # migration 9
    "batch_calls": ("batch_key", "call_id"),
}
TABLES = tuple(KEYS)

Migration = Callable[[duckdb.DuckDBPyConnection], None]
MIGRATIONS: list[tuple[int, str, Migration]] = []


def migration(number: int, name: str) -> Callable[[Migration], Migration]:
    def register(fn: Migration) -> Migration:
        MIGRATIONS.append((number, name, fn))
        return fn

    return register


@migration(1, "initial")
def m001_initial(con: duckdb.DuckDBPyConnection) -> None:
    con.execute("""
        CREATE TABLE runs (
            run_id VARCHAR PRIMARY KEY, experiment VARCHAR NOT NULL, description VARCHAR,
            status VARCHAR NOT NULL, started_at TIMESTAMP, finished_at TIMESTAMP,
            spec_hash VARCHAR, spec_yaml VARCHAR, spec_path VARCHAR, git_sha VARCHAR,
            harness_version VARCHAR, host VARCHAR, cached_calls INTEGER DEFAULT 0,
            total_cost_usd DOUBLE DEFAULT 0, total_calls INTEGER, error_calls INTEGER,
            wall_time_s DOUBLE
        )""")
    con.execute("""
        CREATE TABLE arms (
            run_id VARCHAR NOT NULL, arm_id VARCHAR NOT NULL, provider VARCHAR NOT NULL,
            endpoint VARCHAR, model VARCHAR NOT NULL, tier INTEGER, prompt_name VARCHAR,
            prompt_version INTEGER, prompt_hash VARCHAR, params_json JSON,
            is_baseline BOOLEAN, position INTEGER, PRIMARY KEY (run_id, arm_id)
        )""")
    con.execute("""
        CREATE TABLE cases (
            run_id VARCHAR NOT NULL, case_id VARCHAR NOT NULL, vars_json JSON,
            expected_json JSON, PRIMARY KEY (run_id, case_id)
        )""")
    con.execute("""
        CREATE TABLE calls (
            call_id VARCHAR PRIMARY KEY, run_id VARCHAR NOT NULL, arm_id VARCHAR NOT NULL,
            case_id VARCHAR NOT NULL, repeat INTEGER NOT NULL, status VARCHAR NOT NULL,
            error_type VARCHAR, error_message VARCHAR, attempts INTEGER,
            started_at TIMESTAMP, latency_ms DOUBLE, ttft_ms DOUBLE, queue_ms DOUBLE,
            input_tokens INTEGER, output_tokens INTEGER, cache_read_tokens INTEGER,
            cache_write_tokens INTEGER, reasoning_tokens INTEGER,
            est_input_tokens INTEGER, est_method VARCHAR, truncated_json JSON,
            cost_usd DOUBLE, price_source VARCHAR, cache_hit BOOLEAN DEFAULT FALSE,
            request_hash VARCHAR, prompt_text VARCHAR, response_text VARCHAR,
            finish_reason VARCHAR, provider_metrics_json JSON
        )""")
    con.execute("""
        CREATE TABLE scores (
            call_id VARCHAR NOT NULL, run_id VARCHAR NOT NULL, scorer VARCHAR NOT NULL,
            value DOUBLE, passed BOOLEAN, detail VARCHAR, PRIMARY KEY (call_id, scorer)
        )""")
    con.execute("""
        CREATE VIEW call_facts AS
        SELECT c.*, a.provider, a.endpoint, a.model, a.tier, a.prompt_name,
               a.prompt_version, a.prompt_hash, a.params_json, a.is_baseline,
               r.experiment, r.started_at AS run_started_at, r.status AS run_status
        FROM calls c
        JOIN arms a ON a.run_id = c.run_id AND a.arm_id = c.arm_id
        JOIN runs r ON r.run_id = c.run_id""")
    # A call passes when every scorer passed; its score is the mean of its scorers.
    # Failed calls have no scores and count as not passed, score 0.
    con.execute("""
        CREATE VIEW arm_summary AS
        WITH call_scores AS (
            SELECT call_id, avg(value) AS score, bool_and(passed) AS passed
            FROM scores GROUP BY call_id
        )
        SELECT c.run_id, c.arm_id,
               count(*) AS n,
               count(*) FILTER (WHERE c.status = 'ok') AS ok,
               count(*) FILTER (WHERE c.status = 'error') AS errors,
               count(*) FILTER (WHERE c.cache_hit) AS cache_hits,
               avg(CASE WHEN s.passed THEN 1.0 ELSE 0.0 END) AS pass_rate,
               avg(coalesce(s.score, 0.0)) AS mean_score,
               quantile_cont(c.latency_ms, 0.5) FILTER (WHERE c.status = 'ok' AND NOT c.cache_hit) AS latency_p50_ms,
               quantile_cont(c.latency_ms, 0.9) FILTER (WHERE c.status = 'ok' AND NOT c.cache_hit) AS latency_p90_ms,
               quantile_cont(c.ttft_ms, 0.5) FILTER (WHERE c.status = 'ok' AND NOT c.cache_hit) AS ttft_p50_ms,
               sum(c.input_tokens) AS input_tokens,
               sum(c.output_tokens) AS output_tokens,
               sum(c.cost_usd) AS cost_usd,
               avg(c.est_input_tokens - c.input_tokens) AS est_error_mean_tokens
        FROM calls c LEFT JOIN call_scores s ON s.call_id = c.call_id
        GROUP BY c.run_id, c.arm_id""")


@migration(2, "scorer_errors_fail")
def m002_scorer_errors_fail(con: duckdb.DuckDBPyConnection) -> None:
    """A scorer error (passed is null) makes its call not pass, as in the report."""
    con.execute("""
        CREATE OR REPLACE VIEW arm_summary AS
        WITH call_scores AS (
            SELECT call_id, avg(value) AS score, bool_and(coalesce(passed, FALSE)) AS passed
            FROM scores GROUP BY call_id
        )
        SELECT c.run_id, c.arm_id,
               count(*) AS n,
               count(*) FILTER (WHERE c.status = 'ok') AS ok,
               count(*) FILTER (WHERE c.status = 'error') AS errors,
               count(*) FILTER (WHERE c.cache_hit) AS cache_hits,
               avg(CASE WHEN s.passed THEN 1.0 ELSE 0.0 END) AS pass_rate,
               avg(coalesce(s.score, 0.0)) AS mean_score,
               quantile_cont(c.latency_ms, 0.5) FILTER (WHERE c.status = 'ok' AND NOT c.cache_hit) AS latency_p50_ms,
               quantile_cont(c.latency_ms, 0.9) FILTER (WHERE c.status = 'ok' AND NOT c.cache_hit) AS latency_p90_ms,
               quantile_cont(c.ttft_ms, 0.5) FILTER (WHERE c.status = 'ok' AND NOT c.cache_hit) AS ttft_p50_ms,
               sum(c.input_tokens) AS input_tokens,
               sum(c.output_tokens) AS output_tokens,
               sum(c.cost_usd) AS cost_usd,
               avg(c.est_input_tokens - c.input_tokens) AS est_error_mean_tokens
        FROM calls c LEFT JOIN call_scores s ON s.call_id = c.call_id
        GROUP BY c.run_id, c.arm_id""")


@migration(3, "judges")
def m003_judges(con: duckdb.DuckDBPyConnection) -> None:
    """Judge arms (role 'judge') and, on a judge's calls, the call it graded."""
    con.execute("ALTER TABLE arms ADD COLUMN role VARCHAR DEFAULT 'arm'")
    con.execute("ALTER TABLE calls ADD COLUMN judged_call_id VARCHAR")


@migration(4, "what_the_server_said")
def m004_what_the_server_said(con: duckdb.DuckDBPyConnection) -> None:
    """The provider's request id, the model the server says it served, each failed
    attempt's error; and why an arm was not run (``--skip-unavailable``)."""
    con.execute("ALTER TABLE calls ADD COLUMN request_id VARCHAR")
    con.execute("ALTER TABLE calls ADD COLUMN served_model VARCHAR")
    con.execute("ALTER TABLE calls ADD COLUMN attempt_errors_json JSON")
    con.execute("ALTER TABLE arms ADD COLUMN not_run_reason VARCHAR")


_SUMMARY = """
    CREATE OR REPLACE VIEW {name} AS
    SELECT run_id, arm_id,
           count(*) FILTER (WHERE made) AS n,
           count(*) FILTER (WHERE NOT made) AS not_made,
           count(*) FILTER (WHERE status = 'ok') AS ok,
           count(*) FILTER (WHERE made AND status = 'error') AS errors,
           sum(scorer_errors) AS scorer_errors,
           count(*) FILTER (WHERE cache_hit) AS cache_hits,
           avg(CASE WHEN passed THEN 1.0 ELSE 0.0 END) FILTER (WHERE made) AS pass_rate,
           avg(score) FILTER (WHERE made) AS mean_score,
           quantile_cont(latency_ms, 0.5) FILTER (WHERE status = 'ok' AND NOT cache_hit) AS latency_p50_ms,
           quantile_cont(latency_ms, 0.9) FILTER (WHERE status = 'ok' AND NOT cache_hit) AS latency_p90_ms,
           quantile_cont(ttft_ms, 0.5) FILTER (WHERE status = 'ok' AND NOT cache_hit) AS ttft_p50_ms,
           sum(input_tokens) AS input_tokens,
           sum(output_tokens) AS output_tokens,
           sum(cost_usd) AS cost_usd,
           avg(est_input_tokens - input_tokens) AS est_error_mean_tokens
    FROM call_facts WHERE role = '{role}' GROUP BY run_id, arm_id"""


_CALL_FACTS = """
        CREATE OR REPLACE VIEW call_facts AS
        WITH call_scores AS (
            SELECT call_id, avg(value) AS score, bool_and(coalesce(passed, FALSE)) AS passed,
                   count(*) FILTER (WHERE passed IS NULL) AS scorer_errors
            FROM scores GROUP BY call_id
        )
        SELECT {columns},
               {made} AS made,
               c.status = 'ok' AND coalesce(s.passed, FALSE) AS passed,
               CASE WHEN c.status = 'ok' AND coalesce(s.scorer_errors, 0) = 0
                    THEN coalesce(s.score, 0.0) ELSE 0.0 END AS score,
               coalesce(s.scorer_errors, 0) AS scorer_errors,
               a.provider, a.endpoint, a.model, a.tier, a.prompt_name,
               a.prompt_version, a.prompt_hash, a.params_json, a.is_baseline,
               r.experiment, r.kind AS run_kind, r.started_at AS run_started_at,
               r.status AS run_status
        FROM calls c
        JOIN arms a ON a.run_id = c.run_id AND a.arm_id = c.arm_id
        JOIN runs r ON r.run_id = c.run_id
        LEFT JOIN call_scores s ON s.call_id = c.call_id"""


@migration(5, "views_for_analysts_and_nightly")
def m005_views(con: duckdb.DuckDBPyConnection) -> None:
    """``runs.kind`` (``run`` or ``nightly``). ``call_facts`` gains each call's role,
    whether it was made, passed and its score, counted as the report counts them (a
    call never made is missing data; a failed call or a scorer error neither passes
    nor scores). ``arm_summary`` is built on it and leaves judges out; ``judge_summary``
    has them; ``nightly_trend`` has one row per nightly run and arm."""
    con.execute("ALTER TABLE runs ADD COLUMN kind VARCHAR DEFAULT 'run'")
    con.execute(
        _CALL_FACTS.format(
            columns="c.*, coalesce(a.role, 'arm') AS role",
            made="c.attempts > 0 OR c.cache_hit OR c.error_type = 'context_length'",
        )
    )
    con.execute(_SUMMARY.format(name="arm_summary", role="arm"))
    con.execute(_SUMMARY.format(name="judge_summary", role="judge"))
    con.execute("""
        CREATE OR REPLACE VIEW nightly_trend AS
        WITH per_case AS (
            SELECT run_id, arm_id, case_id, avg(passed::DOUBLE) AS passed
            FROM call_facts WHERE role = 'arm' AND made GROUP BY ALL
        ), rates AS (
            SELECT run_id, arm_id, count(*) AS cases, avg(passed) AS pass_rate
            FROM per_case GROUP BY ALL
        )
        SELECT r.experiment, s.arm_id, CAST(r.started_at AS DATE) AS night, r.run_id,
               r.started_at, r.status, k.cases, k.pass_rate,
               s.latency_p50_ms,
               s.cost_usd / nullif(k.cases, 0) * 1000 AS cost_per_1k_cases_usd
        FROM runs r
        JOIN arm_summary s ON s.run_id = r.run_id
        JOIN rates k ON k.run_id = s.run_id AND k.arm_id = s.arm_id
        WHERE r.kind = 'nightly'""")


@migration(6, "calls_never_made_and_usage_source")
def m006_not_made_and_usage_source(con: duckdb.DuckDBPyConnection) -> None:
    """``calls.unfinished``: the call ended because its endpoint or model went down, not
    because it used up its retries; ``call_facts.made`` is false for it, as for a call
    never made (missing data, not an error; resume makes it). ``runs.not_made_calls``
    counts those, and ``error_calls`` no longer does. ``calls.usage_source``: where a
    call's token counts came from (``final_chunk``, ``body``, ``missing``,
    ``proxy_estimate``, ``cache``)."""
    con.execute("ALTER TABLE runs ADD COLUMN not_made_calls INTEGER DEFAULT 0")
    con.execute("ALTER TABLE calls ADD COLUMN usage_source VARCHAR")
    con.execute("ALTER TABLE calls ADD COLUMN unfinished BOOLEAN DEFAULT FALSE")
    con.execute(_CALL_FACTS.format(columns="c.*, coalesce(a.role, 'arm') AS role", made=MADE_SQL))


@migration(7, "composite_arms")
def m007_composite_arms(con: duckdb.DuckDBPyConnection) -> None:
    """Panels and routes (SPEC §14). ``calls.role`` (``arm``, ``judge``, ``member``,
    ``synthesizer``) and ``parent_call_id`` (a part's composite call), ``served_by`` (the
    route that answered a route arm's call, ``provider:model``); ``arms.parent_arm_id``
    (a part's composite arm). ``call_facts.role`` is the call's own role, else its arm's;
    ``composite_calls`` has a composite call with each of its parts."""
    con.execute("ALTER TABLE arms ADD COLUMN parent_arm_id VARCHAR")
    con.execute("ALTER TABLE calls ADD COLUMN role VARCHAR")
    con.execute("ALTER TABLE calls ADD COLUMN parent_call_id VARCHAR")
    con.execute("ALTER TABLE calls ADD COLUMN served_by VARCHAR")
    con.execute(
        _CALL_FACTS.format(
            columns="c.* EXCLUDE (role), coalesce(c.role, a.role, 'arm') AS role", made=MADE_SQL
        )
    )
    con.execute("""
        CREATE OR REPLACE VIEW composite_calls AS
        SELECT p.run_id, p.call_id AS composite_call_id, p.arm_id AS composite_arm_id,
               p.case_id, p.repeat, p.status AS composite_status,
               p.latency_ms AS composite_latency_ms, p.cost_usd AS composite_cost_usd,
               c.call_id AS part_call_id, c.arm_id AS part_arm_id, c.role AS part_role,
               a.provider, a.model, c.status, c.error_type, c.error_message, c.attempts,
               c.latency_ms, c.input_tokens, c.output_tokens, c.cost_usd, c.response_text
        FROM calls p
        JOIN calls c ON c.parent_call_id = p.call_id
        JOIN arms a ON a.run_id = c.run_id AND a.arm_id = c.arm_id""")


@migration(8, "case_flakiness")
def m008_case_flakiness(con: duckdb.DuckDBPyConnection) -> None:
    """``case_flakiness``: per run, arm and case, the calls made (``repeats``), how many
    passed, and whether they disagree (``flaky``: some passed, some did not). A
    composite arm's parts and judges are left out, as in ``arm_summary``."""
    con.execute("""
        CREATE OR REPLACE VIEW case_flakiness AS
        SELECT run_id, arm_id, case_id,
               count(*) AS repeats,
               count(*) FILTER (WHERE passed) AS passes,
               avg(passed::DOUBLE) AS pass_rate,
               count(*) >= 2 AND bool_or(passed) AND NOT bool_and(passed) AS flaky
        FROM call_facts WHERE role = 'arm' AND made
        GROUP BY run_id, arm_id, case_id""")


@migration(9, "batches")
def m009_batches(con: duckdb.DuckDBPyConnection) -> None:
    """Batch mode (SPEC §13). ``batches``: one row per batch submitted to a provider's
    batch API (its id there, state, counts, and when it was submitted, ended and
    collected); ``batch_calls``: which calls each batch holds. Written to the staging
    file before the submission returns, so a resumed run polls the same batches."""
    con.execute("""
        CREATE TABLE batches (
            run_id VARCHAR NOT NULL,
            batch_key VARCHAR NOT NULL,       -- ours: the run, the arm and the generation
            arm_id VARCHAR NOT NULL,
            endpoint VARCHAR NOT NULL,        -- the spec's provider name
            provider_type VARCHAR NOT NULL,   -- openai | anthropic
            base_url VARCHAR,
            api_key_env VARCHAR,              -- the variable, never the key
            generation INTEGER NOT NULL,      -- 1; 2 and 3 re-send expired or retryable requests
            provider_batch_id VARCHAR,        -- null until the provider accepted it
            status VARCHAR NOT NULL,          -- submitting, validating, in_progress, finalizing,
                                              -- ended, failed, expired, cancelling, cancelled
            request_count INTEGER NOT NULL,
            request_bytes BIGINT,
            counts_json VARCHAR,              -- the provider's request counts, as it said
            error_message VARCHAR,            -- why the batch failed (validation: the first bad line)
            submitted_at TIMESTAMP,
            ended_at TIMESTAMP,
            collected_at TIMESTAMP,           -- every result stored as a call
            updated_at TIMESTAMP,
            PRIMARY KEY (run_id, batch_key)
        )""")
    con.execute("""
        CREATE TABLE batch_calls (
            run_id VARCHAR NOT NULL,
            batch_key VARCHAR NOT NULL,
            call_id VARCHAR NOT NULL,
            PRIMARY KEY (batch_key, call_id)
        )""")


@migration(10, "online_calls")
def m010_online_calls(con: duckdb.DuckDBPyConnection) -> None:
    """Live traffic (`abharness serve`, SPEC §16), in runs of kind ``online``.
    ``calls.subject_hash``: a keyed SHA-256 of the request's subject (its ``user``, else
    the ``x-abharness-subject`` header), never the subject itself; the unit the online
    report compares arms by. ``calls.assignment``: how the arm came to make the call,
    ``assigned`` (drawn by ``serve.split``; its answer was returned), ``shadow`` (called
    beside it, never returned) or ``fallback`` (answered because the assigned arm failed;
    ``parent_call_id`` names the assigned call). Null for offline runs. A client's
    ``POST /v1/feedback`` is a score named ``feedback``: ``call_facts``' pass and score
    leave it out (it is not a scorer's verdict; the online report compares it apart)."""
    con.execute("ALTER TABLE calls ADD COLUMN subject_hash VARCHAR")
    con.execute("ALTER TABLE calls ADD COLUMN assignment VARCHAR")
    con.execute(
        _CALL_FACTS.replace(
            "FROM scores GROUP BY call_id",
            "FROM scores WHERE scorer <> 'feedback' GROUP BY call_id",
        ).format(
            columns="c.* EXCLUDE (role), coalesce(c.role, a.role, 'arm') AS role", made=MADE_SQL
        )
    )


@contextmanager
def transaction(con: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """Commit what the block does, or roll all of it back if it raises."""
    con.execute("BEGIN TRANSACTION")
    try:
        yield
    except BaseException:
        con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")


def migrate(con: duckdb.DuckDBPyConnection) -> list[int]:
    """Apply pending migrations in order; return the numbers applied."""
    con.execute("""
        CREATE TABLE IF NOT EXISTS schema_migrations (
            version INTEGER PRIMARY KEY, name VARCHAR, applied_at TIMESTAMP DEFAULT now()
        )""")
    done = {row[0] for row in con.execute("SELECT version FROM schema_migrations").fetchall()}
    applied = []
    for number, name, fn in sorted(MIGRATIONS, key=lambda m: m[0]):
        if number in done:
            continue
        with transaction(con):
            fn(con)
            con.execute(
                "INSERT INTO schema_migrations (version, name) VALUES (?, ?)", [number, name]
            )
        applied.append(number)
    return applied
