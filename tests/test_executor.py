"""The one call path on its own, without the runner: attempts and their errors, what is
retried, the wait budget and the timeout, the breaker, credentials, the cost cap, and
the journal hook called before the call's slot can serve another."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest

from abharness import errors
from abharness.run.arm import ArmPlan
from abharness.run.costcap import CostCap
from abharness.run.endpoints import Endpoints
from abharness.run.executor import CallJob, Executor, call_id
from abharness.run.plan import build_plan
from abharness.run.retry import RetryPolicy
from abharness.spec.load import load_spec
from abharness.store.records import CallRecord


def arm_of(project: Path, edit: str = "") -> ArmPlan:
    spec = project / "experiments/spec.yaml"
    if edit:
        spec.write_text(spec.read_text().replace("max_tokens: 8}", f"max_tokens: 8, {edit}}}"))
    plan = build_plan(load_spec(spec))
    return plan.arms[0]


class Harness:
    """An executor with its endpoints, cap and policy, and the records it finished."""

    def __init__(self, arm: ArmPlan, *, max_cost: float | None = None, **policy: Any) -> None:
        self.arm = arm
        self.finished: list[str] = []  # the calls handed to on_finished, in order
        self.endpoints = Endpoints(RetryPolicy(**policy))
        self.cap = CostCap(max_cost)
        self.executor = Executor(
            "run-1", self.endpoints, self.endpoints.policy, self.cap, on_finished=self._finished
        )

    def _finished(self, record: CallRecord) -> None:
        self.finished.append(record.call_id)

    async def call(self, case: str = "France", repeat: int = 0) -> CallRecord:
        job = CallJob(
            self.arm,
            _case(case),
            repeat,
            call_id("run-1", self.arm.id, case, repeat),
            {"country": case, "case": {"country": case}},
        )
        record, _ = await self.executor.execute(job)
        return record


def _case(country: str) -> Any:
    from abharness.spec.dataset import Case

    return Case(country, {"country": country})


async def test_attempts_and_their_errors_are_recorded_until_success(
    project: Path, fake_provider
) -> None:
    outcomes = [
        errors.ServerError("HTTP 503", status_code=503),
        errors.RateLimitError("HTTP 429", status_code=429),
        "Paris",
    ]
    fake_provider.script = lambda r: outcomes.pop(0)
    h = Harness(arm_of(project))
    record = await h.call()
    assert (record.status, record.attempts, record.response_text) == ("ok", 3, "Paris")
    attempts = json.loads(record.attempt_errors_json or "[]")
    assert [(a["attempt"], a["error_type"], a.get("status_code")) for a in attempts] == [
        (1, "server", 503),
        (2, "rate_limit", 429),
    ]
    assert len(fake_provider.requests) == 3


@pytest.mark.parametrize(
    "error",
    [
        errors.BadRequestError("HTTP 400", status_code=400),
        errors.ContextLengthError("too long", status_code=400),
        errors.ContentFilterError("filtered", status_code=400),
    ],
)
async def test_what_cannot_succeed_is_tried_once(project: Path, fake_provider, error) -> None:
    fake_provider.script = lambda r: error
    record = await Harness(arm_of(project)).call()
    assert (record.status, record.error_type, record.attempts) == ("error", error.error_type, 1)


async def test_a_retry_after_beyond_the_wait_budget_gives_up_at_once(
    project: Path, fake_provider
) -> None:
    fake_provider.script = lambda r: errors.RateLimitError(
        "HTTP 429", status_code=429, retry_after_s=30
    )
    started = time.monotonic()
    record = await Harness(arm_of(project), max_total_wait_s=5).call()
    assert time.monotonic() - started < 1  # never slept 30 s to go over its 5 s budget
    assert (record.error_type, record.attempts) == ("rate_limit", 1)


async def test_each_attempt_is_held_to_timeout_s(project: Path, fake_provider) -> None:
    fake_provider.delay_s = 0.5
    h = Harness(arm_of(project, "timeout_s: 0.05"), max_attempts=3)
    started = time.monotonic()
    record = await h.call()
    assert time.monotonic() - started < 0.45  # three attempts of 0.05 s, not one of 0.5 s
    assert (record.error_type, record.attempts) == ("timeout", 3)
    assert record.error_message == "no answer in 0.05 s from mock"


async def test_five_calls_failing_open_the_models_circuit_and_the_probe_stops_it(
    project: Path, fake_provider
) -> None:
    fake_provider.script = lambda r: errors.ServerError("HTTP 500", status_code=500)
    h = Harness(arm_of(project), max_attempts=1, circuit_threshold=5, circuit_cooldown_s=0.05)
    first = [await h.call(f"C{i}") for i in range(5)]
    assert all(r.attempts == 1 for r in first)
    probe = await h.call("C5")  # waits out the cool-down, is the probe, fails
    assert probe.attempts == 1
    later = await h.call("C6")
    assert later.attempts == 0 and later.error_type == "server"
    assert later.error_message.startswith("not called: model m1 on mock down: 5 calls in a row")
    assert len(fake_provider.requests) == 6
    endpoint = h.endpoints.of(h.arm.provider)
    assert endpoint.circuit.stopped is None  # the endpoint itself is fine
    assert endpoint.model("m1").stopped is not None


async def test_a_failed_key_stops_the_endpoint_after_one_call(project: Path, fake_provider) -> None:
    fake_provider.script = lambda r: errors.AuthError("HTTP 401", status_code=401)
    h = Harness(arm_of(project))
    first, second = await h.call("A"), await h.call("B")
    assert (first.error_type, first.attempts) == ("auth", 1)
    assert (second.error_type, second.attempts) == ("auth", 0)
    assert second.error_message == "not called: HTTP 401"
    assert len(fake_provider.requests) == 1


async def test_the_cost_cap_refuses_a_call_whose_worst_case_does_not_fit(
    project: Path, fake_provider
) -> None:
    spec = project / "experiments/spec.yaml"
    spec.write_text(
        spec.read_text().replace(
            "mock: {type: fake}",
            "mock: {type: fake, price: {input_per_mtok: 1000, output_per_mtok: 1000}}",
        )
    )
    h = Harness(arm_of(project), max_cost=0.02)  # $0.001 a token: one call's worst case fits
    first, second = await h.call("A"), await h.call("B")
    assert first.status == "ok" and first.cost_usd is not None
    assert second.error_type == "budget" and second.attempts == 0
    assert float(h.cap.spent) == pytest.approx(first.cost_usd) and h.cap.reserved == 0


async def test_a_finished_call_is_handed_to_the_journal_before_its_slot_serves_another(
    project: Path, fake_provider
) -> None:
    """on_finished runs with no await after the slot was freed: nothing queued for that
    slot has started yet, so kill -9 can lose only calls still on the wire."""
    spec = project / "experiments/spec.yaml"
    spec.write_text(
        spec.read_text().replace("mock: {type: fake}", "mock: {type: fake, concurrency: 1}")
    )
    fake_provider.delay_s = 0.01
    h = Harness(arm_of(project))
    started: list[int] = []
    real = fake_provider.generate

    async def generate(self, request):  # noqa: ANN001
        started.append(len(h.finished))
        return await real(self, request)

    fake_provider.generate = generate  # type: ignore[method-assign]
    try:
        await asyncio.gather(*(h.call(c) for c in ("A", "B", "C", "D")))
    finally:
        fake_provider.generate = real  # type: ignore[method-assign]
    assert started == [0, 1, 2, 3]  # each call began only after the one before was journaled
    assert len(h.finished) == 4
