"""abharness against the plain SDK loop it is built on, side by side, in one table.

Throughput: the loopback fake server runs in its own process with a fixed latency;
rounds alternate between (a) a plain loop of the official openai SDK (aiohttp
transport, streamed chat completions, a semaphore for concurrency, nothing stored),
(b) abharness's `run_experiment` on a spec with the same number of cases (cache off,
every call written to DuckDB, report not built) and, where installed, (c) LiteLLM's
`acompletion` loop and (d) `promptfoo eval`. Client wall time and CPU time per call,
medians. Then `tests.benchmarks.scale`: peak RSS of the whole `abharness run` process
(report included) at 10k and 100k calls, and the time to its first request.

    .venv/bin/python -m tests.benchmarks.runloop [--calls 2000] [--concurrency 16 100 256]
        [--rounds 3] [--latency-ms 20] [--scale-calls 10000 100000] [--first-cases 1000]
        [--litellm-python PY] [--profile FILE]

LiteLLM runs in the interpreter given by --litellm-python (default: this one, if it
can import litellm), so it need not share the project's environment; promptfoo is
found on PATH. A client that is not installed gets "–".
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from . import scale
from .common import run_child, sdk_loop, write_spec

# Run by --litellm-python: the same loop as `sdk_loop`, through litellm.acompletion;
# prints its own wall and CPU seconds (import and start-up left out).
LITELLM_LOOP = """
import asyncio, json, sys, time
import litellm
url, calls, concurrency = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
async def main():
    gate = asyncio.Semaphore(concurrency)
    async def call(i):
        async with gate:
            stream = await litellm.acompletion(
                model="openai/gpt-4.1-mini", api_base=url + "/v1", api_key="k",
                messages=[{"role": "user", "content": f"What is the capital of Land{i}?"}],
                max_tokens=8, stream=True, stream_options={"include_usage": True})
            async for _ in stream:
                pass
    await asyncio.gather(*(call(i) for i in range(calls)))
cpu, wall = time.process_time(), time.perf_counter()
asyncio.run(main())
print(json.dumps([time.perf_counter() - wall, time.process_time() - cpu]))
"""


def abharness_loop(spec: Path, db: Path) -> None:
    from abharness.run.experiment import run_experiment

    out = run_experiment(spec, db=db, use_cache=False)
    assert out.stats.ok == out.stats.calls, out.stats


def litellm_python(given: str | None) -> str | None:
    """The interpreter that runs the LiteLLM loop, or None if litellm is not installed."""
    if given:
        return given
    found = subprocess.run([sys.executable, "-c", "import litellm"], capture_output=True)
    return sys.executable if found.returncode == 0 else None


def litellm_loop(python: str, url: str, calls: int, concurrency: int) -> tuple[float, float]:
    out = subprocess.run(
        [python, "-c", LITELLM_LOOP, url, str(calls), str(concurrency)],
        env={**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"},  # offline: no fetch
        capture_output=True,
        text=True,
        check=True,
        timeout=1800,
    )
    wall, cpu = json.loads(out.stdout.strip().splitlines()[-1])
    return wall, cpu


def promptfoo_eval(folder: Path, url: str, calls: int, concurrency: int) -> tuple[float, float]:
    """`promptfoo eval -j N` of the same prompts; wall and CPU of its whole process
    (Node start-up included, which is small beside the calls)."""
    config = folder / "promptfooconfig.json"
    config.write_text(
        json.dumps(
            {
                "prompts": ["What is the capital of {{country}}?"],
                "providers": [
                    {
                        "id": "openai:chat:gpt-4.1-mini",
                        "config": {"apiBaseUrl": url + "/v1", "apiKey": "k", "max_tokens": 8},
                    }
                ],
                "tests": [{"vars": {"country": f"Land{i}"}} for i in range(calls)],
            }
        )
    )
    cmd = [shutil.which("promptfoo") or "promptfoo", "eval", "-c", str(config), "-j"]
    cmd += [str(concurrency), "--no-cache", "--no-progress-bar", "--no-write"]
    child = run_child(cmd, cwd=folder)
    return child.wall_s, child.cpu_s


def measure(fn: object, *args: object) -> tuple[float, float]:
    cpu, wall = time.process_time(), time.perf_counter()
    result = fn(*args)  # type: ignore[operator]
    if asyncio.iscoroutine(result):
        asyncio.run(result)
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[16, 100, 256])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--latency-ms", type=float, default=20)
    parser.add_argument("--scale-calls", type=int, nargs="*", default=[10_000, 100_000])
    parser.add_argument("--first-cases", type=int, default=1000)
    parser.add_argument("--litellm-python", help="an interpreter that can import litellm")
    parser.add_argument("--profile", type=Path, help="cProfile the abharness rounds into FILE")
    args = parser.parse_args()
    os.environ["BENCH_KEY"] = "k"
    others = {
        "litellm": litellm_python(args.litellm_python),
        "promptfoo": shutil.which("promptfoo"),
    }
    clients = ["sdk", "abharness", *(c for c, where in others.items() if where)]
    server = scale.Server(args.latency_ms)
    profiler = cProfile.Profile() if args.profile else None
    rows: dict[str, dict[str, float]] = {}
    try:
        for concurrency in args.concurrency:
            results: dict[str, list[tuple[float, float]]] = {c: [] for c in clients}
            with tempfile.TemporaryDirectory() as tmp:
                spec = write_spec(Path(tmp), server.url, args.calls, concurrency)
                for r in range(args.rounds):
                    order = clients if r % 2 == 0 else clients[::-1]
                    for who in order:
                        if who == "sdk":
                            got = measure(sdk_loop, server.url, args.calls, concurrency)
                        elif who == "abharness":
                            db = Path(tmp) / f"r{r}.duckdb"
                            if profiler:
                                profiler.enable()
                            got = measure(abharness_loop, spec, db)
                            if profiler:
                                profiler.disable()
                        elif who == "litellm":
                            python = others["litellm"]
                            assert python is not None
                            got = litellm_loop(python, server.url, args.calls, concurrency)
                        else:
                            got = promptfoo_eval(Path(tmp), server.url, args.calls, concurrency)
                        results[who].append(got)
            rate = f"calls/s, concurrency {concurrency}"
            cpu = f"client CPU ms/call, concurrency {concurrency}"
            rows[rate], rows[cpu] = {}, {}
            for who, rs in results.items():
                rows[rate][who] = args.calls / statistics.median(w for w, _ in rs)
                rows[cpu][who] = statistics.median(c for _, c in rs) * 1000 / args.calls
    finally:
        server.stop()
    if profiler and args.profile:
        profiler.dump_stats(args.profile)
    if args.scale_calls:
        rows.update(scale.measure(args.scale_calls, args.first_cases, 1, 256))
    print(
        f"{args.calls} streamed calls per round, {args.rounds} rounds alternating, fake server "
        f"({args.latency_ms:g} ms) in its own process on 127.0.0.1; scale rows: 1 ms server, "
        "concurrency 256, two arms, a fresh `abharness run` process each"
    )
    names = {
        "sdk": "SDK loop",
        "abharness": "abharness",
        "litellm": "LiteLLM",
        "promptfoo": "promptfoo",
    }
    print("| measure | SDK loop | abharness | abharness ÷ SDK | LiteLLM | promptfoo |")
    print("|---|--:|--:|--:|--:|--:|")
    for name, by in rows.items():
        cell = {w: (f"{by[w]:.2f}" if w in by else "–") for w in names}
        ratio = f"{by['abharness'] / by['sdk']:.2f}" if {"sdk", "abharness"} <= by.keys() else "–"
        print(
            f"| {name} | {cell['sdk']} | {cell['abharness']} | {ratio} | "
            f"{cell['litellm']} | {cell['promptfoo']} |"
        )


if __name__ == "__main__":
    main()
