"""Adaptive concurrency (AIMD) per model: halved by failures that may mean "too many at
once", grown back slowly, never above the spec's cap; and against a server that cuts a
stream whenever another arrives (as llama-cpp-python's does), a run settles at a
concurrency the server can take and ends with no errors."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import duckdb
import pytest

from abharness import errors
from abharness.providers._http import StreamCut
from abharness.run.experiment import run_experiment
from abharness.run.window import ConcurrencyWindow, overload_reason

from .conftest import write
from .fake_server import FakeServer

CUT = StreamCut("stream ended before the final chunk")


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (CUT, "cut stream"),
        (errors.ServerError("HTTP 503", status_code=503), "HTTP 503"),
        (errors.TimeoutError_("no answer in 10 s"), "timeout"),
        (errors.ConnectionError_("connection reset by the server"), "reset connection"),
        (errors.ConnectionError_("connection refused: http://x"), None),
        (errors.RateLimitError("HTTP 429", status_code=429), None),
        (errors.BadRequestError("HTTP 400", status_code=400), None),
        (errors.TimeoutError_("HTTP 408", status_code=408), None),
    ],
)
def test_what_may_mean_too_many_at_once(error, reason) -> None:
    assert overload_reason(error) == reason


def test_halved_in_company_once_per_round_never_alone_never_below_one() -> None:
    w = ConcurrencyWindow(16, "m")
    sent_before = time.monotonic()
    w.failed(CUT, sent_before, in_company=False)
    assert w.in_force == 16  # alone: says nothing about concurrency
    w.failed(CUT, sent_before, in_company=True)
    assert w.in_force == 8 and w.failed_at == 16
    w.failed(CUT, sent_before, in_company=True)  # sent before the halving: same round
    assert w.in_force == 8
    for _ in range(10):
        w.failed(CUT, time.monotonic(), in_company=True)
    assert w.in_force == 1 and w.lowered_by["cut stream"] == 4
    w.failed(errors.BadRequestError("400", status_code=400), time.monotonic(), True)
    assert w.lowered_by == {"cut stream": 4}


def test_grows_back_slowly_and_slower_near_where_it_failed_never_above_the_cap() -> None:
    w = ConcurrencyWindow(4, "m")
    w.failed(CUT, time.monotonic(), in_company=True)  # 4 -> 2, failed at 4
    successes = 0
    while w.in_force < 3:
        w.succeeded()
        successes += 1
    assert 6 <= successes <= 10  # 2 -> 3: about 4 × 2 successes
    while w.in_force < 4:  # 3 -> 4 is the level that failed: ten times slower
        w.succeeded()
        successes += 1
    assert successes > 100
    for _ in range(1000):
        w.succeeded()
    assert w.in_force == 4 and w.limit == 4.0


async def test_waiters_wait_for_room_and_are_woken_when_it_grows() -> None:
    w = ConcurrencyWindow(2, "m")
    await w.acquire()
    await w.acquire()
    waiting = asyncio.create_task(w.acquire())
    await asyncio.sleep(0.01)
    assert not waiting.done()
    w.release()
    await asyncio.wait_for(waiting, 1)
    assert w.in_use == 2


@pytest.mark.slow
def test_a_server_that_cuts_streams_under_load_settles_and_ends_with_no_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: at the default concurrency of 16, 35% of calls to llama-cpp-python's
    server failed "stream ended before the final chunk", with nothing saying why."""
    monkeypatch.setenv("FAKE_KEY", "k")
    write(
        tmp_path / "prompts/q/v1.j2",
        "{% block prompt %}Q: capital of {{ country }}?\nA:{% endblock %}\n",
    )
    cases = "\n".join(f"  - {{id: c{i}, country: Land{i}}}" for i in range(30))
    with FakeServer(interrupt_streams=True, chunk_delay_s=0.01) as server:
        spec = write(
            tmp_path / "spec.yaml",
            f"""
name: interrupts
prompts_dir: prompts
prompt: q@1
defaults: {{temperature: 0, max_tokens: 8}}
providers:
  llama: {{type: openai, base_url: "{server.url}/v1", api_key_env: FAKE_KEY, price: {{input_per_mtok: 0, output_per_mtok: 0}}}}
arms:
  - {{id: a, provider: llama, model: m}}
  - {{id: b, provider: llama, model: m, temperature: 0.5, seed: 1}}
cases:
{cases}
""",
        )
        out = run_experiment(spec, db=tmp_path / "r.duckdb", use_cache=False)
    assert out.status == "completed" and out.errors == 0 and out.not_made == 0
    assert out.concurrency and "concurrency 16 → " in out.concurrency[0]
    assert "cut stream" in out.concurrency[0]
    con = duckdb.connect(str(tmp_path / "r.duckdb"), read_only=True)
    lowered = con.execute(
        "SELECT count(*) FROM calls WHERE json_extract(CAST(provider_metrics_json AS JSON), '$.concurrency.in_force') IS NOT NULL"
    ).fetchone()
    con.close()
    assert lowered and lowered[0] > 0  # the calls say what was in force
