"""`abharness view`: a local web app over the results database (SPEC §12).

Datasette's shape: one function per page, each computing the page's data once; the
HTML page renders it and ``/api/...`` returns it as JSON, so a page and its twin cannot
disagree. Every filter, search, sort and page lives in the query string (a link
reproduces what you see), and every list is paged in SQL (`store.browse`).

The database is opened read-only for each request and closed after it, so a run can
merge into it between two requests; while another process holds it for writing, a page
says so and retries by itself (HTTP 503 with ``Retry-After``), never a traceback. No part
of a URL names a file: the only file opened is the database given at start.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..report import words as w
from ..report.figures import ComparisonFigures, Report, _plain
from ..report.html import report_body
from ..store import browse
from ..store.browse import CASE_FILTERS, CASE_SORTS, RUN_KINDS, Side
from ..store.queries import DatabaseBusy, NoDatabase, Results, RunNotFound
from .diff import word_diff
from .figures import FigureCache
from .templates import render

log = logging.getLogger(__name__)
PAGE_SIZE = 50
RETRY_S = 2


class BadRequest(ValueError):
    """A query string the page cannot use (an unknown filter, a malformed side)."""


class NotFound(LookupError):
    pass


def _int(value: str | None, default: int, name: str) -> int:
    if value in (None, ""):
        return default
    try:
        number = int(value)
    except ValueError as exc:
        raise BadRequest(f"{name} must be a whole number, not {value!r}") from exc
    if number < 1:
        raise BadRequest(f"{name} must be 1 or more")
    return number


def _pages(total: int) -> int:
    return max(1, math.ceil(total / PAGE_SIZE))


class View:
    """The pages over one database."""

    def __init__(self, db: Path, figures: FigureCache) -> None:
        self.db = db
        self.figures = figures

    @contextmanager
    def connect(self) -> Iterator[Results]:
        with Results(self.db) as results:
            yield results

    def _report(self, results: Results, run_id: str) -> Report:
        found = browse.fingerprint(results.con, run_id)
        if found is None:
            raise NotFound(f"no run {run_id!r} in the database")
        return self.figures.report(run_id, found)

    # -- pages ---------------------------------------------------------------------------

    def runs(self, params: dict[str, str]) -> dict[str, Any]:
        experiment = params.get("experiment") or None
        kind = params.get("kind") or None
        if kind is not None and kind not in RUN_KINDS:
            raise BadRequest(f"kind must be one of {', '.join(RUN_KINDS)}")
        page = _int(params.get("page"), 1, "page")
        with self.connect() as results:
            rows, total = browse.runs_page(
                results.con,
                experiment=experiment,
                kind=kind,
                limit=PAGE_SIZE,
                offset=(page - 1) * PAGE_SIZE,
            )
            for row in rows:
                report = self._report(results, row["run_id"])
                row["started_at"] = f"{row['started_at']:%Y-%m-%d %H:%M:%S}"
                row["verdicts"] = [
                    {
                        "arm_id": c.arm_id,
                        "metric": c.metric,
                        "verdict": c.verdict,
                        "word": w.verdict_word(c),
                        "css": w.verdict_css(c),
                    }
                    for c in report.verdicts()
                ]
            names = browse.experiments(results.con)
        return {
            "runs": rows,
            "experiment": experiment,
            "kind": kind,
            "experiments": names,
            "kinds": list(RUN_KINDS),
            "page": page,
            "pages": _pages(total),
            "total": total,
        }

    def run(self, run_id: str, params: dict[str, str]) -> dict[str, Any]:
        page = _int(params.get("page"), 1, "page")
        with self.connect() as results:
            report = self._report(results, run_id)
            others = [a.arm_id for a in report.arms if a.arm_id != report.baseline]
            arm = params.get("arm") or (others[0] if others else None)
            cases: dict[str, Any] | None = None
            if report.baseline is not None and arm is not None:
                if arm not in others:
                    raise BadRequest(f"arm must be one of {', '.join(others)}")
                a, b = Side(run_id, report.baseline), Side(run_id, arm)
                rows, total = browse.case_pairs(
                    results.con, a, b, limit=PAGE_SIZE, offset=(page - 1) * PAGE_SIZE
                )
                cases = {
                    "a": str(a),
                    "b": str(b),
                    "rows": rows,
                    "page": page,
                    "pages": _pages(total),
                    "total": total,
                }
            key = (run_id, browse.fingerprint(results.con, run_id))
        return {
            "report": report,
            "cases": cases,
            "arm": arm,
            "others": others,
            # rendered once per state of the run, as its figures are
            "body": self.figures.memo(("body", *key), lambda: report_body(report)),
            "json": lambda: self.figures.memo(("json", *key), report.to_json),
        }

    def compare(self, params: dict[str, str]) -> dict[str, Any]:
        try:
            a, b = Side.parse(params.get("a", "")), Side.parse(params.get("b", ""))
        except ValueError as exc:
            raise BadRequest(
                f"compare needs a=RUN_ID:ARM_ID&b=RUN_ID:ARM_ID ({exc}); the run page links "
                "to its arms' comparisons"
            ) from exc
        filter_ = params.get("filter") or "all"
        sort = params.get("sort") or "case"
        q = params.get("q") or None
        page = _int(params.get("page"), 1, "page")
        if filter_ not in CASE_FILTERS:
            raise BadRequest(f"filter must be one of {', '.join(CASE_FILTERS)}")
        if sort.lstrip("-") not in CASE_SORTS:
            raise BadRequest(f"sort must be one of {', '.join(CASE_SORTS)} (- first: descending)")
        with self.connect() as results:
            prints = []
            for side in (a, b):
                found = browse.fingerprint(results.con, side.run_id)
                if found is None:
                    raise NotFound(f"no run {side.run_id!r} in the database")
                prints.append(found)
            report_b = self._report(results, b.run_id)
            for side in (a, b):
                report = report_b if side.run_id == b.run_id else self._report(results, a.run_id)
                if side.arm_id not in [x.arm_id for x in report.arms]:
                    raise NotFound(f"run {side.run_id} has no arm {side.arm_id!r}")
            verdicts = self._verdicts(report_b, a, b, tuple(prints))
            rows, total = browse.case_pairs(
                results.con,
                a,
                b,
                filter=filter_,
                q=q,
                sort=sort,
                limit=PAGE_SIZE,
                offset=(page - 1) * PAGE_SIZE,
            )
        return {
            "a": str(a),
            "b": str(b),
            "same_run": a.run_id == b.run_id,
            "verdicts": verdicts,
            "sentences": [w.verdict_sentence(c, 0.05) for c in verdicts],
            "filter": filter_,
            "q": q,
            "sort": sort,
            "rows": rows,
            "page": page,
            "pages": _pages(total),
            "total": total,
            "filters": list(CASE_FILTERS),
        }

    def _verdicts(
        self, report_b: Report, a: Side, b: Side, prints: tuple[Any, ...]
    ) -> list[ComparisonFigures]:
        """The report's own comparisons when a is the run's baseline and b one of its arms
        (the same figures as the run page); else this pair's."""
        if a.run_id == b.run_id and a.arm_id == report_b.baseline:
            return [c for c in report_b.comparisons if c.arm_id == b.arm_id]
        return self.figures.pair(a, b, prints)

    def case(self, run_id: str, case_id: str, params: dict[str, str]) -> dict[str, Any]:
        arms = [x for x in (params.get("arms") or "").split(",") if x] or None
        with self.connect() as results:
            found = browse.case_calls(results.con, run_id, case_id, arms)
        if found is None:
            raise NotFound(f"run {run_id!r} has no case {case_id!r}")
        sides = found["arms"]
        repeats = max((len(s["calls"]) for s in sides), default=0)
        rows = []
        for i in range(repeats):
            calls = [s["calls"][i] if i < len(s["calls"]) else None for s in sides]
            first = calls[0]["response_text"] if calls and calls[0] else None
            diffs = [
                word_diff(first, c["response_text"]) if c is not None and j else None
                for j, c in enumerate(calls)
            ]
            rows.append({"repeat": i, "calls": calls, "diffs": diffs})
        found["repeats"] = rows
        return found


# -- the ASGI app ---------------------------------------------------------------------


class ServerTiming:
    """Adds ``Server-Timing: app;dur=MS`` to every response: the time the app took, as
    the benchmark reads it (BENCHMARKS.md)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()

        async def timed(message: Message) -> None:
            if message["type"] == "http.response.start":
                ms = (time.perf_counter() - start) * 1000
                message["headers"] = [
                    *message["headers"],
                    (b"server-timing", f"app;dur={ms:.1f}".encode()),
                ]
            await send(message)

        await self.app(scope, receive, timed)


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(_plain(data), status_code=status, headers=headers)


def create_app(db: Path, *, worker: bool = True) -> Starlette:
    """The app over `db`; `worker=False` computes figures in this process (tests)."""
    figures = FigureCache(db, worker=worker)
    view = View(db, figures)

    def page(
        compute: Callable[[Request], dict[str, Any]], template: str, api: bool = False
    ) -> Callable[[Request], Response]:
        def endpoint(request: Request) -> Response:
            data = compute(request)
            if api:
                if "report" in data:  # the report's JSON, made once per state of the run
                    as_json = data.pop("json")
                    del data["body"]
                    data["report"] = as_json()
                return _json(data)
            return HTMLResponse(render(template, data=data, request=request))

        return endpoint

    def runs(r: Request) -> dict[str, Any]:
        return view.runs(dict(r.query_params))

    def run(r: Request) -> dict[str, Any]:
        return view.run(r.path_params["run_id"], dict(r.query_params))

    def compare(r: Request) -> dict[str, Any]:
        return view.compare(dict(r.query_params))

    def case(r: Request) -> dict[str, Any]:
        return view.case(r.path_params["run_id"], r.path_params["case_id"], dict(r.query_params))

    routes = []
    for path, compute, template in (
        ("/", runs, "runs.html"),
        ("/runs/{run_id}", run, "run.html"),
        ("/compare", compare, "compare.html"),
        ("/runs/{run_id}/cases/{case_id:path}", case, "case.html"),
    ):
        routes.append(Route(path, page(compute, template)))
        api = "/api/runs" if path == "/" else f"/api{path}"
        routes.append(Route(api, page(compute, template, api=True)))

    def wants_json(request: Request) -> bool:
        return request.url.path.startswith("/api/")

    def problem(
        request: Request, status: int, title: str, message: str, **headers: str
    ) -> Response:
        if wants_json(request):
            body: dict[str, Any] = {"error": title, "message": message}
            if status == 503:
                body["retry_after_s"] = RETRY_S
            return _json(body, status, headers)
        html = render("problem.html", title=title, message=message, status=status, retry=RETRY_S)
        return HTMLResponse(html, status_code=status, headers=headers)

    async def busy(request: Request, exc: Exception) -> Response:
        return problem(
            request,
            503,
            "the database is busy",
            f"{exc}. A run may be merging into it: this page tries again every {RETRY_S} s.",
            **{"Retry-After": str(RETRY_S)},
        )

    async def no_database(request: Request, exc: Exception) -> Response:
        return problem(request, 503, "no database", str(exc), **{"Retry-After": str(RETRY_S)})

    async def bad(request: Request, exc: Exception) -> Response:
        return problem(request, 400, "bad request", str(exc))

    async def missing(request: Request, exc: Exception) -> Response:
        return problem(request, 404, "not found", str(exc))

    async def http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return problem(
            request,
            exc.status_code,
            "not found" if exc.status_code == 404 else "error",
            str(exc.detail),
        )

    async def failed(request: Request, exc: Exception) -> Response:
        log.exception("view: %s failed", request.url.path)
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return problem(request, 500, "something went wrong", f"{type(exc).__name__}: {first}")

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        figures.close()

    app = Starlette(
        routes=routes,
        exception_handlers={
            DatabaseBusy: busy,
            NoDatabase: no_database,
            BadRequest: bad,
            NotFound: missing,
            RunNotFound: missing,
            HTTPException: http,
            Exception: failed,
        },
        middleware=[Middleware(ServerTiming)],
        lifespan=lifespan,
    )
    app.state.figures = figures
    return app
