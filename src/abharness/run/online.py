"""Live requests as calls (`abharness serve`, SPEC §16): one run of kind ``online`` per
serve session.

Each request is assigned an arm (`run.assign`), and made through the one call path
(`Executor.execute`: the prompt fitted to the arm's budget, the endpoint's limits,
retries honouring Retry-After, the circuit breakers, the cost cap) exactly as an
offline call is. Its record goes to the same `Writer`, into the session's staging file
``staging/<run_id>.duckdb``; the record is in the journal before the answer is
returned, so after ``kill -9`` nothing acknowledged is lost, and ``abharness merge``
finishes the staging file. Shadow arms are called beside it as tasks of their own,
never awaited by the answer; when the assigned arm fails, the fallback arms answer in
order (each a call of its own, ``assignment = 'fallback'``, its ``parent_call_id`` the
failed call).

One run per session, not per day: a session's rows share one spec (its hash is the
run's) and one set of arms, and a restart with a changed spec starts a new run. The
online report compares the arms of one run; subjects keep their arm across sessions.

Every `merge_every_s` the staging file's rows are merged into the main database
(`Store.flush_into`), so analysts query a session while it serves; a main file
that is busy (an analyst holding it) is tried again at the next interval. `stop`
drains the requests in flight (up to the grace period), writes, merges and marks the
run ``completed``. ``max_cost_usd`` is a cap per UTC day.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from functools import partial
from pathlib import Path
from typing import Any

import duckdb

from ..errors import InvalidInput, TemplateError
from ..prompts.client import client_variables
from ..providers.base import ProviderResponse
from ..spec.dataset import Case
from ..spec.load import LoadedSpec
from ..store.db import MergeResult, Store
from ..store.health import check_main_db, classify
from ..store.migrations import transaction
from ..store.recorder import Recorder
from ..store.records import CallRecord, ScoreRecord
from .arm import ArmPlan, CompositePlan
from .assign import Assigner, SubjectKey
from .costcap import CostCap
from .endpoints import Endpoints
from .executor import CallJob, Executor, Relay, call_id
from .plan import Plan, build_plan
from .retry import RetryPolicy
from .rows import arm_rows, run_row
from .runner import stop_grace_s
from .scorers import Score, Scorer
from .writer import Writer

log = logging.getLogger(__name__)

RECENT_CALLS = 50_000  # call ids kept in memory for feedback; older ones are looked up
NO_FALLBACK = frozenset({"bad_request", "context_length", "content_filter"})  # the request's fault


@dataclass
class Answer:
    """What a live request got: the call that answered (or the assigned call that
    failed, when nothing did), its arm and the response."""

    record: CallRecord
    response: ProviderResponse | None
    assigned_arm: str

    @property
    def ok(self) -> bool:
        return self.response is not None

    @property
    def arm_id(self) -> str:
        return self.record.arm_id


@dataclass
class SessionStats:
    requests: int = 0
    calls: int = 0
    flushes: int = 0
    flush_skipped: int = 0  # the main database was busy
    last_flush_error: str | None = None
    by_arm: dict[str, int] = field(default_factory=dict)


class OnlineSession:
    def __init__(
        self,
        spec: LoadedSpec,
        db: Path,
        *,
        policy: RetryPolicy | None = None,
        on_call: Callable[[CallRecord, str], None] | None = None,
    ) -> None:
        """`spec` has a ``serve:`` section; `on_call` hears of every record with its
        assignment (the gateway's metrics)."""
        serve = spec.experiment.serve
        if serve is None:
            raise InvalidInput(
                "no serve: section: nothing says how to split traffic", file=spec.path
            )
        check_main_db(db)
        self.spec = spec
        self.serve = serve
        self.db = db
        self.plan: Plan = build_plan(spec, online=True)
        self.plan.drop_unavailable(False)  # an arm that cannot run is refused now
        self.arms: dict[str, ArmPlan | CompositePlan] = {a.id: a for a in self.plan.arms}
        self.scorers = [s for s in self.plan.scorers if not s.is_judge]
        self.judges = [s for s in self.plan.scorers if s.is_judge]
        self._check_judges()
        self.assigner = Assigner(spec.experiment.name, serve.split, serve.sticky)
        self.subjects = SubjectKey.for_db(db)
        self.run_id = f"{datetime.now(UTC):%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"
        self.on_call = on_call
        self.stats = SessionStats()
        self.endpoints = Endpoints(policy or RetryPolicy())
        self.grace_s = stop_grace_s()
        self.stopping = False
        self._max_cost = spec.experiment.max_cost_usd
        self._cap_day: date | None = None
        self._cap = CostCap(None)
        self._recent: OrderedDict[str, str] = OrderedDict()  # answered call id -> run id
        # call id -> (subject hash, assignment: null for a judge's call)
        self._meta: dict[str, tuple[str | None, str | None]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self.recorder: Recorder | None = None
        self.store: Store | None = None
        self.writer: Writer | None = None
        self._writer_task: asyncio.Task[None] | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._stop_flushing = asyncio.Event()
        self.load_errors: dict[int, Any] = {}
        self.executor: Executor | None = None

    # --- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Load the providers, open the staging file, write the run's rows."""
        for provider in self.plan.providers:
            try:
                await asyncio.to_thread(provider.load)
            except Exception as exc:
                raise InvalidInput(
                    f"could not load {provider.label}: {exc}", file=self.spec.path
                ) from exc
        await asyncio.to_thread(self.plan.warm_up)  # SDKs and tokenizers: not the first request's
        # and the writer's pyarrow (a run imports it with its first batch, after its
        # first request; a gateway would import it under the requests of its first second)
        await asyncio.to_thread(importlib.import_module, "pyarrow")
        self.recorder = Recorder.start(
            self.db, self.run_id, run_row(self.plan, "online"), arm_rows(self.plan, [])
        )
        self.store = self.recorder.store
        self.writer = Writer(self.store, on_failure=self._store_failed)
        self.executor = Executor(
            self.run_id,
            self.endpoints,
            self.endpoints.policy,
            self._cap,
            None,  # no response cache: every live request is a call
            self.load_errors,
            lambda: False,  # a request admitted is made: stop drains, it does not drop
            self._finished,
        )
        self._writer_task = asyncio.create_task(self.writer.run())
        self._flusher = asyncio.create_task(self._flush_periodically())
        log.info("online run %s: staging file %s", self.run_id, self.store.path)

    def _store_failed(self) -> None:
        self.stopping = True

    async def stop(self) -> MergeResult:
        """Refuse new requests, give those in flight the grace period, write everything,
        merge it into the main database and mark the run completed."""
        self.stopping = True
        if self._flusher is not None:
            # never cancelled: a flush runs in the writer's thread, which a cancelled
            # await would leave running beside the final update and merge below (whose
            # 'completed' it then lost); the flusher ends after the flush in progress
            self._stop_flushing.set()
            await self._flusher
        # requests, shadows and gradings in flight; a call that ends meanwhile starts its
        # judges, so wait until none is left (or the grace period is over)
        deadline = time.monotonic() + self.grace_s
        while self._tasks and (left := deadline - time.monotonic()) > 0:
            await asyncio.wait(set(self._tasks), timeout=left)
        pending = set(self._tasks)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        assert self.writer is not None and self.store is not None
        await self.writer.close()
        try:
            assert self._writer_task is not None
            await self._writer_task
        finally:
            for provider in self.plan.providers:
                with contextlib.suppress(Exception):
                    await provider.aclose()
        assert self.recorder is not None
        self.recorder.finish("completed", total_calls=self.stats.calls)
        self.recorder.close()
        return await asyncio.to_thread(self.recorder.merge, attempts=10)

    async def _flush_periodically(self) -> None:
        while not self._stop_flushing.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop_flushing.wait(), self.serve.merge_every_s)
            if not self._stop_flushing.is_set():
                await self.flush()

    async def flush(self) -> bool:
        """Merge what is written so far into the main database; False if it was busy."""
        assert self.writer is not None and self.store is not None
        calls = self.stats.calls

        def work(con: duckdb.DuckDBPyConnection) -> None:
            assert self.recorder is not None
            self.recorder.publish(total_calls=calls)

        try:
            await self.writer.beside(work)
        except (duckdb.Error, OSError) as exc:
            cause = exc
            self.stats.flush_skipped += 1
            self.stats.last_flush_error = str(cause).splitlines()[0]
            level = logging.INFO if classify(cause) == "busy" else logging.WARNING
            log.log(level, "merge into %s postponed: %s", self.db, self.stats.last_flush_error)
            return False
        self.stats.flushes += 1
        return True

    # --- requests --------------------------------------------------------------------

    def cost_cap(self) -> CostCap:
        """Today's cap (UTC): ``max_cost_usd`` a day, a new cap at midnight."""
        today = datetime.now(UTC).date()
        if today != self._cap_day:
            self._cap_day, self._cap = today, CostCap(self._max_cost)
        return self._cap

    def _finished(self, record: CallRecord) -> None:
        """The executor's hook, before anything else runs: stamp the record with its
        subject and assignment, then journal it."""
        subject_hash, assignment = self._meta.pop(record.call_id, (None, "assigned"))
        record.subject_hash, record.assignment = subject_hash, assignment
        assert self.writer is not None
        self.writer.finished(record)

    async def answer(
        self,
        messages: list[dict[str, str]] | None,
        prompt: str | None,
        subject: str | None,
        endpoint: str,
        relay: Relay | None = None,
    ) -> Answer:
        """One live request: a chat's `messages`, or a completion's `prompt`. Returns
        once the answer (or the failure) is written to the journal; shadow calls go on.
        With a `relay`, the answering call's text goes to it as it arrives (and `end`
        once the request is answered)."""
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            return await self._answer(messages, prompt, subject, endpoint, relay)
        finally:
            if relay is not None:
                relay.end()
            if task is not None:
                self._tasks.discard(task)

    async def _answer(
        self,
        messages: list[dict[str, str]] | None,
        prompt: str | None,
        subject: str | None,
        endpoint: str,
        relay: Relay | None,
    ) -> Answer:
        assert self.writer is not None
        self.stats.requests += 1
        # the request's case: when it came and its number in the run (unique in it)
        request_id = f"{int(time.time() * 1000):x}-{self.stats.requests:x}"
        subject_hash = self.subjects.hash(subject)
        case = Case(id=request_id, data={"endpoint": endpoint})
        variables = client_variables(messages, prompt)
        cap = self.cost_cap()
        await self.writer.put_case(self.run_id, case)
        assigned = self.assigner.arm_for(subject)
        for shadow in self.serve.shadow:
            job = self._job(shadow, case, variables, subject_hash, "shadow", cap)
            self._background(self._call(job), f"shadow call {job.call_id}")
        job = self._job(assigned, case, variables, subject_hash, "assigned", cap, relay)
        record, response = await self._call(job)
        answer = Answer(record, response, assigned)
        if response is None and record.error_type not in NO_FALLBACK:
            for arm_id in self.serve.fallback:
                if relay is not None and relay.sent:
                    break  # the client holds part of an answer: no other may follow it
                if arm_id == assigned:
                    continue
                fb = self._job(arm_id, case, variables, subject_hash, "fallback", cap, relay)
                fb.parent_call_id = record.call_id
                fb_record, fb_response = await self._call(fb)
                if fb_response is not None:
                    answer = Answer(fb_record, fb_response, assigned)
                    break
        if answer.ok:
            self._remember(answer.record.call_id)
        return answer

    def _job(
        self,
        arm_id: str,
        case: Case,
        variables: dict[str, Any],
        subject_hash: str | None,
        assignment: str,
        cap: CostCap,
        relay: Relay | None = None,
    ) -> CallJob:
        cid = call_id(self.run_id, arm_id, case.id, 0)
        self._meta[cid] = (subject_hash, assignment)
        return CallJob(self.arms[arm_id], case, 0, cid, variables, cost_cap=cap, relay=relay)

    async def _call(self, job: CallJob) -> tuple[CallRecord, ProviderResponse | None]:
        """One call through the one call path, scored and written."""
        assert self.executor is not None and self.writer is not None
        if job.relay is not None:  # the call whose text the relay passes on, from now
            job.relay.call_id, job.relay.arm_id = job.call_id, job.arm.id
        try:
            record, response = await self.executor.execute(job)
        finally:  # stamped and dropped by `_finished`; a call cancelled mid-way leaves none
            self._meta.pop(job.call_id, None)
        scores = []
        if response is not None:
            for scorer in self.scorers:
                score = partial(scorer.score, response.text, job.case.data)
                scores.append(self._scored(record, scorer, score))
            for scorer in self.judges:  # in the background: the client never waits for them
                grading = self._judge(scorer, job, record, response.text)
                self._background(grading, f"{scorer.name} grading {record.call_id}")
        await self._written(record, scores)
        return record, response

    def _scored(
        self, record: CallRecord, scorer: Scorer, score: Callable[[], Score]
    ) -> ScoreRecord:
        """`score()` as `scorer`'s score of `record`; a scorer that fails is recorded as
        such, never a crash."""
        try:
            s = score()
        except Exception as exc:
            return ScoreRecord(
                record.call_id, self.run_id, scorer.name, None, None, f"scorer error: {exc}"
            )
        return ScoreRecord(record.call_id, self.run_id, scorer.name, s.value, s.passed, s.detail)

    async def _written(self, record: CallRecord, scores: list[ScoreRecord]) -> None:
        """Journal and queue `record` with its scores; counted, and told to `on_call`
        with its assignment (``judge`` for a grading's call)."""
        assert self.writer is not None
        await self.writer.put(record, scores)
        self.stats.calls += 1
        self.stats.by_arm[record.arm_id] = self.stats.by_arm.get(record.arm_id, 0) + 1
        if self.on_call is not None:
            judge = record.judged_call_id is not None
            self.on_call(record, record.assignment or ("judge" if judge else "assigned"))

    def _background(self, work: Coroutine[Any, Any, object], name: str) -> None:
        """A task the answer does not wait for, and `stop` does (up to the grace period);
        whatever it raises is logged and stays there."""
        task = asyncio.create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._background_done)

    def _background_done(self, task: asyncio.Task[object]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("%s failed", task.get_name(), exc_info=exc)

    async def _judge(self, scorer: Scorer, job: CallJob, judged: CallRecord, text: str) -> None:
        """An ``llm_judge`` scorer grades an answered call: one call of the judge's arm
        through the executor (under the day's cost cap; ``judged_call_id`` names the
        call, ``assignment`` null so the report never counts it as an arm's), then its
        score of the judged call, written with it. Live traffic has no ``expected``."""
        assert self.executor is not None
        judge = self.plan.judges[scorer.name]
        variables = {**job.variables, "response": text, "expected": None}
        cid = call_id(self.run_id, judge.id, judged.call_id, 0)
        self._meta[cid] = (judged.subject_hash, None)
        judging = CallJob(
            judge, job.case, 0, cid, variables, judged_call_id=judged.call_id, cost_cap=job.cost_cap
        )
        try:
            record, response = await self.executor.execute(judging)
        finally:
            self._meta.pop(cid, None)
        if response is None:
            failed = f"scorer error: judge call failed: {record.error_type}: {record.error_message}"
            score = ScoreRecord(judged.call_id, self.run_id, scorer.name, None, None, failed)
        else:
            score = self._scored(judged, scorer, partial(scorer.judge_score, response.text))
        await self._written(record, [score])

    def _check_judges(self) -> None:
        """A judge's rubric renders from the client's request and the answer: one that
        needs anything else (a dataset's column) is refused before serving."""
        sample = {
            **client_variables([{"role": "user", "content": "?"}]),
            "response": "",
            "expected": None,
        }
        for name, judge in self.plan.judges.items():
            try:
                judge.template.render(sample)
            except TemplateError as exc:
                raise TemplateError(
                    f"judge {name} ({judge.template.ref}) cannot grade live traffic: "
                    f"{exc.problem}; its rubric may use messages, prompt and response",
                    file=self.spec.path,
                    key="scorers",
                ) from exc

    def _remember(self, cid: str) -> None:
        self._recent[cid] = self.run_id
        if len(self._recent) > RECENT_CALLS:
            self._recent.popitem(last=False)

    # --- feedback --------------------------------------------------------------------

    async def feedback(self, cid: str, score: float, comment: str | None) -> bool:
        """Add (or replace) the ``feedback`` score of an answered call; False if no
        answered call of an online run has that id. Written before it returns."""
        assert self.writer is not None
        run_id = self._recent.get(cid) or await self._find_call(cid)
        if run_id is None:
            return False
        row = ScoreRecord(cid, run_id, "feedback", float(score), None, comment or "")

        def write(con: duckdb.DuckDBPyConnection) -> None:
            assert self.store is not None
            with transaction(con):
                con.execute("DELETE FROM scores WHERE call_id = ? AND scorer = 'feedback'", [cid])
                self.store.insert_scores([row])

        await self.writer.now(write)
        return True

    async def _find_call(self, cid: str) -> str | None:
        """The run of an answered online call no longer in memory: in the staging file,
        else in the main database (read-only; None if it cannot be read now)."""
        assert self.writer is not None

        def in_staging(con: duckdb.DuckDBPyConnection) -> str | None:
            row = con.execute(
                "SELECT run_id FROM calls WHERE call_id = ? AND status = 'ok' "
                "AND assignment IN ('assigned', 'fallback')",
                [cid],
            ).fetchone()
            return None if row is None else str(row[0])

        found: str | None = await self.writer.now(in_staging)
        if found is not None or not self.db.exists():
            return found

        def in_main() -> str | None:
            try:
                con = duckdb.connect(str(self.db), read_only=True)
            except duckdb.Error:
                return None
            try:
                row = con.execute(
                    "SELECT c.run_id FROM calls c JOIN runs r USING (run_id) "
                    "WHERE c.call_id = ? AND c.status = 'ok' AND r.kind = 'online' "
                    "AND c.assignment IN ('assigned', 'fallback')",
                    [cid],
                ).fetchone()
            finally:
                con.close()
            return None if row is None else str(row[0])

        return await asyncio.to_thread(in_main)
