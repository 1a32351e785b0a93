"""A panel's call: every member asked at once, then the synthesizer (SPEC §14).

Each part is a call of its own through the one call path (`Executor.execute`: its own
endpoint's limits, retries, cache and circuits), recorded as a row with ``role``
``member`` or ``synthesizer`` and ``parent_call_id`` naming the panel's call. The panel's
own row (``role`` ``arm``) carries the synthesizer's answer, the wall time from the
first member's dispatch to the synthesizer's last token as its latency, and the sum of
every part's tokens, attempts and cost. Fewer than ``min_members`` members answering
fails the panel's call, naming them; the synthesizer is then not called.

The cost cap holds the panel's whole worst case before any part is sent
(`CostCap.hold`), so a panel is never left half-made for money. A part a dead run had
already made is reused on resume (`Runner._execute`), never paid twice.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import fields
from decimal import Decimal
from typing import Any

from ..providers.base import ProviderResponse
from ..store.records import CallRecord, Usage
from .arm import ArmPlan, CompositePlan
from .costcap import CostCap
from .executor import CallJob, call_id

Part = tuple[CallRecord, ProviderResponse | None]
Execute = Callable[[CallJob], Awaitable[Part]]
# writes a part's record (and scores a member's answer) as soon as it is made
WritePart = Callable[[CallJob, CallRecord, ProviderResponse | None], Awaitable[None]]


async def panel_call(
    job: CallJob, run_id: str, cap: CostCap, execute: Execute, write_part: WritePart
) -> Part:
    """Make a panel's call (`job.arm` is a panel): its own record and the synthesizer's
    response, or None when it failed."""
    panel = job.arm
    assert isinstance(panel, CompositePlan) and panel.kind == "panel"
    record = CallRecord(job.call_id, run_id, panel.id, job.case.id, job.repeat)
    try:
        est = panel.members[0].fit_vars(job.variables).est_input_tokens
    except Exception:  # the member's own call fails the same way, and says why
        est = 0
    held = cap.hold(panel.worst_case_cost(est))
    if held is None:
        record.fail(
            "budget", f"not dispatched: max_cost_usd={cap.max} would be exceeded by this panel"
        )
        return record, None

    def part(arm: ArmPlan, variables: dict[str, Any]) -> CallJob:
        cid = call_id(run_id, arm.id, job.case.id, job.repeat)
        return CallJob(
            arm, job.case, job.repeat, cid, variables, parent_call_id=job.call_id, cost_cap=held
        )

    started = time.perf_counter()
    try:
        jobs = [part(m, job.variables) for m in panel.members]
        members = await asyncio.gather(*(execute(j) for j in jobs))
        for j, (rec, resp) in zip(jobs, members, strict=True):
            await write_part(j, rec, resp)
        parts: list[Part] = list(members)
        answered = [resp for _, resp in members if resp is not None]
        if len(answered) < panel.required:
            failed = [
                f"{m.id} ({m.endpoint_name}:{m.model}): {r.error_type}: {r.error_message}"
                for m, (r, _) in zip(panel.members, members, strict=True)
                if not r.ok
            ]
            _assemble(record, parts, started, None)
            record.fail(
                "other",
                f"{len(answered)} of {len(panel.members)} members answered, the panel needs "
                f"{panel.required}: " + "; ".join(failed),
            )
            # members never made (an endpoint down): the panel is missing data too
            record.unfinished = any(not r.made for r, _ in members)
            return record, None
        said = [
            {
                "provider": m.endpoint_name,
                "model": m.model,
                "text": r.response_text or "",
                "ok": r.ok,
            }
            for m, (r, _) in zip(panel.members, members, strict=True)
        ]
        synth = part(panel.synthesizer, {**job.variables, "members": said})
        synth_record, response = await execute(synth)
        await write_part(synth, synth_record, response)
        parts.append((synth_record, response))
        _assemble(record, parts, started, synth_record)
        return record, response
    finally:
        held.release()


def _assemble(
    record: CallRecord, parts: list[Part], started: float, synth: CallRecord | None
) -> None:
    """The panel's own row from its parts: the synthesizer's answer and status, the wall
    time, and the sum of the parts' attempts, tokens and cost."""
    rows = [r for r, _ in parts]
    record.latency_ms = (time.perf_counter() - started) * 1000
    record.attempts = sum(r.attempts for r in rows)
    record.cache_hit = all(r.cache_hit for r in rows)
    record.usage = Usage(**{f.name: _total(f.name, rows) for f in fields(Usage)})
    unknown = any(r.ok and r.cost_usd is None for r in rows)  # an answer with no price
    total = sum((Decimal(str(r.cost_usd)) for r in rows if r.cost_usd is not None), Decimal(0))
    record.cost_usd = None if unknown else float(total)
    record.price_source = None if unknown else "parts"
    record.prompt_text = rows[0].prompt_text
    record.est_input_tokens = rows[0].est_input_tokens
    record.est_method = rows[0].est_method
    record.usage_source = "parts"
    errors = [
        {"part": r.arm_id, "error_type": r.error_type, "message": r.error_message}
        for r in rows
        if not r.ok
    ]
    record.attempt_errors_json = json.dumps(errors, ensure_ascii=False) if errors else None
    if synth is None:
        return
    record.status = synth.status
    record.error_type, record.error_message = synth.error_type, synth.error_message
    record.unfinished = synth.unfinished
    record.response_text = synth.response_text
    record.finish_reason = synth.finish_reason
    record.served_model = synth.served_model
    record.request_id = synth.request_id
    if synth.ttft_ms is not None and synth.latency_ms is not None:
        # the panel's first token is the synthesizer's
        record.ttft_ms = record.latency_ms - synth.latency_ms + synth.ttft_ms


def _total(name: str, rows: list[CallRecord]) -> int | None:
    counts = [getattr(r.usage, name) for r in rows]
    return None if all(c is None for c in counts) else sum(c or 0 for c in counts)
