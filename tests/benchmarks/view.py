"""`abharness view` on a 100,000-call run: every page and its JSON, timed server-side.

A run of 2 arms × 10,000 cases × 5 repeats is written into a fresh database
(`tests.benchmarks.bigrun`), then `abharness view` starts on it as a user starts it (its
own process, its statistics worker beside it). Each URL is asked once cold (the first
time its figures are computed) and then `--requests` times; the time is the app's own,
from its ``Server-Timing`` header. Then the peak RSS (VmHWM) of the view process and of
its worker, and the size of the static report's script, style and page.

    .venv/bin/python -m tests.benchmarks.view [--cases 10000] [--repeats 5] [--requests 20]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from .bigrun import RUN_ID, build_database
from .common import free_port


def _timed(url: str) -> float:
    with urllib.request.urlopen(url, timeout=120) as response:
        response.read()
        header = response.headers["server-timing"]
    return float(header.split("dur=")[1])


def _peak_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        out += [int(t) for t in text]
    return out


def pages(run: str) -> list[str]:
    compare = f"/compare?a={run}:v1&b={run}:v2"
    html = [
        "/",
        f"/runs/{run}",
        f"/runs/{run}?page=100",
        compare,
        *(
            f"{compare}&filter={f}"
            for f in ("differing", "regressions", "improvements", "errors", "flaky")
        ),
        f"{compare}&q=Atlantis",
        f"{compare}&filter=regressions&sort=-diff&page=20",
        f"{compare}&sort=b_latency&page=150",
        f"/compare?a={run}:v2&b={run}:v1",
        f"/runs/{run}/cases/case-004242",
        f"/runs/{run}/cases/case-004242?arms=v2",
    ]
    return html + ["/api/runs" if p == "/" else "/api" + p for p in html]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--requests", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "results.duckdb"
        started = time.perf_counter()
        build_database(db, args.cases, args.repeats)
        built = time.perf_counter() - started
        port = free_port()
        exe = Path(sys.executable).with_name("abharness")
        view = subprocess.Popen(
            [str(exe), "view", "--db", str(db), "--port", str(port), "--no-open"],
            stdout=subprocess.DEVNULL,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            for _ in range(600):
                try:
                    urllib.request.urlopen(base + "/api/runs?kind=nightly", timeout=5).read()
                    break
                except OSError:
                    time.sleep(0.1)
            rows = []
            for path in pages(RUN_ID):
                cold = _timed(base + path)
                warm = sorted(_timed(base + path) for _ in range(args.requests))
                p95 = warm[min(len(warm) - 1, round(0.95 * (len(warm) - 1)))]
                rows.append((path, cold, statistics.median(warm), p95))
            view_mb = _peak_mb(view.pid)
            worker_mb = max((_peak_mb(c) for c in _children(view.pid)), default=float("nan"))
            report = Path(tmp) / "reports"
            subprocess.run(
                [str(exe), "report", RUN_ID, "--db", str(db), "--reports-dir", str(report)],
                check=True,
                stdout=subprocess.DEVNULL,
            )
            html_kb = next(report.rglob("*.html")).stat().st_size / 1024
        finally:
            view.terminate()
            view.wait(timeout=30)
    calls = 2 * args.cases * args.repeats
    print(f"{calls:,} calls (2 arms × {args.cases:,} cases × {args.repeats} repeats), "
          f"database written in {built:.0f} s; {args.requests} requests per URL after a cold one")  # fmt: skip
    print()
    print("| page | cold ms | median ms | p95 ms |")
    print("|---|--:|--:|--:|")
    for path, cold, median, p95 in rows:
        shown = path.replace(RUN_ID, "RUN")
        print(f"| `{shown}` | {cold:.0f} | {median:.0f} | {p95:.0f} |")
    worst = max(rows, key=lambda r: r[3])
    print()
    print(f"worst p95: {worst[3]:.0f} ms (`{worst[0].replace(RUN_ID, 'RUN')}`); "
          f"worst cold: {max(r[1] for r in rows):.0f} ms")  # fmt: skip
    print(f"peak RSS: view process {view_mb:.0f} MB, its statistics worker {worker_mb:.0f} MB")
    from abharness.report.html import CSS, interactive_js

    print(f"static report: script {len(interactive_js().encode()) / 1024:.1f} KB, style "
          f"{len(CSS.encode()) / 1024:.1f} KB, the page of this run {html_kb:,.0f} KB")  # fmt: skip


if __name__ == "__main__":
    main()
