"""Shared fixtures: a throwaway project on disk and an in-process fake provider.

`FakeProvider` (type ``fake``) answers from a script: per prompt text, a reply or an
exception, with an optional delay; it records every request and the peak number of
calls in flight, so runner tests can assert exact counts without a model.
"""

from __future__ import annotations

import asyncio
import hashlib
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from abharness import providers as registry
from abharness.providers.base import Provider, ProviderRequest, ProviderResponse, Usage


class FakeProvider(Provider):
    type_name = "fake"
    default_concurrency = 4
    script: Callable[[ProviderRequest], Any] | None = None
    delay_s: float = 0.0
    requests: list[ProviderRequest] = []
    in_flight = 0
    peak_in_flight = 0

    async def generate(self, request: ProviderRequest) -> ProviderResponse:
        cls = type(self)
        cls.requests.append(request)
        cls.in_flight += 1
        cls.peak_in_flight = max(cls.peak_in_flight, cls.in_flight)
        try:
            if cls.delay_s:
                await asyncio.sleep(cls.delay_s)
            reply = cls.script(request) if cls.script else "ok"
            if isinstance(reply, BaseException):
                raise reply
            text = request.prompt or request.messages[-1]["content"]
            return ProviderResponse(
                text=str(reply),
                usage=Usage(input_tokens=len(text.split()), output_tokens=len(str(reply).split())),
                finish_reason="stop",
                ttft_ms=0.5,
            )
        finally:
            cls.in_flight -= 1


REPO = Path(__file__).resolve().parents[1]


def _listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


@pytest.fixture(scope="session", autouse=True)
def nothing_written_outside_tmp() -> Any:
    """`make test` leaves the user's own reports/ and results/ as they were."""
    before = {name: _listing(REPO / name) for name in ("reports", "results")}
    yield
    after = {name: _listing(REPO / name) for name in ("reports", "results")}
    assert after == before, "a test wrote into the project's own reports/ or results/"


@pytest.fixture(autouse=True)
def reports_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Reports written by the CLI go to the test's own folder, wherever it runs from."""
    monkeypatch.setenv("ABHARNESS_REPORTS", str(tmp_path / "reports"))
    monkeypatch.delenv("ABHARNESS_DB", raising=False)


@pytest.fixture(autouse=True)
def no_retry_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    """Retry jitter is zeroed in tests; a Retry-After the test sets is still honoured."""
    from abharness.run.retry import RetryPolicy

    monkeypatch.setattr(
        RetryPolicy, "delay_s", lambda self, attempts, retry_after_s: retry_after_s or 0.0
    )
    monkeypatch.setattr(RetryPolicy, "__init__", _short_policy_init(RetryPolicy.__init__))


def _short_policy_init(init):
    """Circuit cool-downs of 50 ms in tests unless a test asks for another."""

    def patched(self, *args, circuit_cooldown_s: float = 0.05, **kwargs):
        init(self, *args, circuit_cooldown_s=circuit_cooldown_s, **kwargs)

    return patched


@pytest.fixture
def fake_provider(monkeypatch: pytest.MonkeyPatch) -> type[FakeProvider]:
    monkeypatch.setitem(registry.PROVIDER_TYPES, "fake", "tests.conftest:FakeProvider")
    FakeProvider.script = None
    FakeProvider.delay_s = 0.0
    FakeProvider.requests = []
    FakeProvider.in_flight = FakeProvider.peak_in_flight = 0
    return FakeProvider


ENDPOINT_FIELDS = ("base_url", "api_key_env", "concurrency", "rpm", "tpm")


def make_provider(kind: str, name: str | None = None, model: str | None = None, **settings: Any):
    """A provider of type `kind` on an endpoint with these settings: the endpoint's own
    (base_url, api_key_env, concurrency, rpm, tpm), the rest its options."""
    from abharness.providers import provider_class
    from abharness.spec.models import ProviderSpec

    endpoint = {k: settings.pop(k) for k in ENDPOINT_FIELDS if k in settings}
    config = ProviderSpec(type=kind, **endpoint, options=settings)
    return provider_class(kind)(name or kind, config, model)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


CAPITALS = [
    ("fr", "France", "Paris"),
    ("de", "Germany", "Berlin"),
    ("it", "Italy", "Rome"),
    ("es", "Spain", "Madrid"),
    ("jp", "Japan", "Tokyo"),
    ("pe", "Peru", "Lima"),
]


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project directory with the capitals prompts, a dataset and a spec on the fake provider."""
    return make_project(tmp_path, monkeypatch)


def make_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    write(
        tmp_path / "prompts/capitals/v1.j2",
        """
        ---
        description: zero-shot
        variables: [country]
        ---
        {% block prompt %}{% block examples %}{% endblock %}Q: What is the capital of {{ country }}?
        A:{% endblock %}
        """,
    )
    write(
        tmp_path / "prompts/capitals/v2.j2",
        """
        ---
        description: few-shot
        ---
        {% extends "capitals/v1.j2" %}
        {% block examples %}Q: What is the capital of Portugal?
        A: Lisbon
        {% endblock %}
        """,
    )
    lines = [f'{{"id": "{i}", "country": "{c}", "answer": "{a}"}}' for i, c, a in CAPITALS]
    write(tmp_path / "experiments/data/capitals.jsonl", "\n".join(lines) + "\n")
    write(
        tmp_path / "experiments/spec.yaml",
        """
        name: capitals-test
        dataset: data/capitals.jsonl
        prompts_dir: ../prompts
        baseline: zero-shot
        defaults: {temperature: 0, max_tokens: 8}
        providers:
          mock: {type: fake}
        arms:
          - {id: zero-shot, provider: mock, model: m1, prompt: capitals@1}
          - {id: few-shot, provider: mock, model: m1, prompt: capitals@2}
        scorers:
          - {type: contains, expected: "{{ case.answer }}", ignore_case: true}
        """,
    )
    return tmp_path


def capital_answers(correct: set[str] | None = None) -> Callable[[ProviderRequest], str]:
    """A script answering correctly for the countries in `correct` (all when None)."""
    answers = {c: a for _, c, a in CAPITALS}

    def reply(request: ProviderRequest) -> str:
        text = request.prompt or ""
        country = text.rsplit("capital of ", 1)[1].split("?")[0]
        return answers[country] if correct is None or country in correct else "I do not know"

    return reply


def file_digest(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None


def written_report(out: Any, reports_dir: Path | None = None) -> Path:
    """Write the run's report as `abharness run` does at its end; return the .md path."""
    from abharness.report.build import write_report
    from abharness.store.queries import Results

    with Results(out.db) as results:
        return write_report(results, out.run_id, reports_dir or out.db.parent / "reports")


def dict_rows(db: Path, sql: str = "SELECT * FROM calls ORDER BY arm_id, case_id") -> list[dict]:
    """`sql`'s rows from the database `db`, read-only, as dicts by column name."""
    import duckdb

    con = duckdb.connect(str(db), read_only=True)
    try:
        cur = con.execute(sql)
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
    finally:
        con.close()
