"""The view's statistics: reports and pairwise comparisons, computed once per state of
a run and kept (a run's figures change only when its rows do: a resume, a merge).

They are computed in a worker process by default. Statistics need pandas and SciPy
(~150 MB before any data), and building the report of a 100,000-call run holds about
120 MB more while it runs; in a worker the view itself stays small, and what the worker
held is returned to the system after each figure (`malloc_trim`). The worker starts
with the view, so the first page does not wait for its imports.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import os
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from ..report.figures import ComparisonFigures, Report
from ..store.browse import Side

log = logging.getLogger(__name__)


def _trim() -> None:
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)


def build(db: str, run_id: str) -> Report:
    """The run's report (in the worker)."""
    from ..report.build import build_report
    from ..store.queries import Results

    try:
        with Results(db) as results:
            return build_report(results, run_id)
    finally:
        _trim()


def pair(db: str, a: Side, b: Side) -> list[ComparisonFigures]:
    """Arm b against arm a (in the worker)."""
    from ..report.build import compare_sides
    from ..store.queries import Results

    try:
        with Results(db) as results:
            return compare_sides(results, (a.run_id, a.arm_id), (b.run_id, b.arm_id))
    finally:
        _trim()


def _warm() -> int:
    """Import what the figures need, so the first page does not wait for it."""
    import pandas  # noqa: F401
    import scipy.stats  # noqa: F401

    from ..report import build  # noqa: F401

    return os.getpid()


class FigureCache:
    """Reports and comparisons by (what, the runs' fingerprints), least recently used
    dropped past `size`."""

    def __init__(self, db: Path, *, worker: bool = True, size: int = 24) -> None:
        self.db = str(db)
        self.size = size
        self._items: OrderedDict[tuple[Any, ...], Any] = OrderedDict()
        self._lock = threading.Lock()
        self._pool: ProcessPoolExecutor | None = None
        if worker:
            self._pool = self._start()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    def _get(self, key: tuple[Any, ...], fn: Callable[..., Any], *args: Any) -> Any:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        value = self._compute(fn, *args)
        with self._lock:
            self._items[key] = value
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return value

    def _compute(self, fn: Callable[..., Any], *args: Any) -> Any:
        """`fn` in the worker; a worker that died (killed, out of memory) is replaced and
        asked once more, so one bad moment does not break every later page."""
        if self._pool is None:
            return fn(self.db, *args)
        try:
            return self._pool.submit(fn, self.db, *args).result()
        except BrokenProcessPool:
            log.warning("view: the statistics worker died; starting another")
            with self._lock:
                self._pool.shutdown(wait=False, cancel_futures=True)
                self._pool = self._start()
            return self._pool.submit(fn, self.db, *args).result()

    def _start(self) -> ProcessPoolExecutor:
        context = multiprocessing.get_context("spawn")
        pool = ProcessPoolExecutor(max_workers=1, mp_context=context)
        self.worker_pid: Future[int] = pool.submit(_warm)
        return pool

    def memo(self, key: tuple[Any, ...], fn: Callable[[], Any]) -> Any:
        """What `fn` makes of cached figures (a page's HTML, a JSON), kept beside them."""
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        value = fn()
        with self._lock:
            self._items[key] = value
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return value

    def report(self, run_id: str, fingerprint: tuple[Any, ...]) -> Report:
        return self._get(("report", run_id, fingerprint), build, run_id)

    def pair(self, a: Side, b: Side, fingerprints: tuple[Any, ...]) -> list[ComparisonFigures]:
        return self._get(("pair", a, b, fingerprints), pair, a, b)
