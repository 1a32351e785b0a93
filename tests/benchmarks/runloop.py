"""The abharness run loop against the plain SDK loop it is built on, side by side.

The loopback fake server runs in its own process with a fixed latency; rounds alternate
between (a) a plain loop of the official openai SDK (aiohttp transport, streamed chat
completions, a semaphore for concurrency, nothing stored) and (b) `abharness run` of a
spec with the same number of cases on the same server (cache off, every call written
to DuckDB, report not built). Client wall time and CPU time per call, medians.

    .venv/bin/python -m tests.benchmarks.runloop [--calls 2000] [--concurrency 16 100 256]
        [--rounds 3] [--latency-ms 20] [--profile FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .transport import free_port


async def sdk_loop(url: str, calls: int, concurrency: int) -> None:
    import openai

    client = openai.AsyncOpenAI(
        base_url=url + "/v1", api_key="k", http_client=openai.DefaultAioHttpClient(), max_retries=0
    )
    gate = asyncio.Semaphore(concurrency)

    async def call(i: int) -> None:
        async with gate:
            stream = await client.chat.completions.create(
                model="gpt-4.1-mini",
                messages=[{"role": "user", "content": f"What is the capital of Land{i}?"}],
                max_tokens=8,
                stream=True,
                stream_options={"include_usage": True},
            )
            async for _ in stream:
                pass

    await asyncio.gather(*(call(i) for i in range(calls)))
    await client.close()


def write_spec(folder: Path, url: str, calls: int, concurrency: int) -> Path:
    (folder / "prompts/q").mkdir(parents=True, exist_ok=True)
    (folder / "prompts/q/v1.j2").write_text(
        "{% block user %}What is the capital of {{ country }}?{% endblock %}\n"
    )
    with (folder / "cases.jsonl").open("w") as f:
        for i in range(calls):
            f.write(f'{{"id": "c{i}", "country": "Land{i}"}}\n')
    spec = folder / "spec.yaml"
    spec.write_text(
        f"""name: runloop
dataset: cases.jsonl
prompts_dir: prompts
prompt: q@1
defaults: {{max_tokens: 8, temperature: 0}}
providers:
  fake: {{type: openai, base_url: "{url}/v1", api_key_env: BENCH_KEY, concurrency: {concurrency}}}
arms:
  - {{id: a, provider: fake, model: gpt-4.1-mini}}
scorers:
  - {{type: contains, expected: "Paris"}}
max_error_rate: 1
"""
    )
    return spec


def abharness_loop(spec: Path, db: Path) -> None:
    from abharness.run.experiment import run_experiment

    out = run_experiment(spec, db=db, use_cache=False)
    assert out.stats.ok == out.stats.calls, out.stats


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
    parser.add_argument("--profile", type=Path, help="cProfile the abharness rounds into FILE")
    args = parser.parse_args()
    os.environ["BENCH_KEY"] = "k"
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.fake_server",
            "--port",
            str(port),
            "--seconds",
            "3600",
            "--latency-ms",
            str(args.latency_ms),
        ],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    profiler = cProfile.Profile() if args.profile else None
    rows = []
    try:
        assert server.stdout is not None
        url = server.stdout.readline().strip()
        for concurrency in args.concurrency:
            results: dict[str, list[tuple[float, float]]] = {"sdk": [], "abharness": []}
            with tempfile.TemporaryDirectory() as tmp:
                spec = write_spec(Path(tmp), url, args.calls, concurrency)
                for r in range(args.rounds):
                    order = ["sdk", "abharness"] if r % 2 == 0 else ["abharness", "sdk"]
                    for who in order:
                        if who == "sdk":
                            results[who].append(measure(sdk_loop, url, args.calls, concurrency))
                        else:
                            db = Path(tmp) / f"r{r}.duckdb"
                            if profiler:
                                profiler.enable()
                            results[who].append(measure(abharness_loop, spec, db))
                            if profiler:
                                profiler.disable()
            med = {
                who: (
                    args.calls / statistics.median(w for w, _ in rs),
                    statistics.median(c for _, c in rs) * 1000 / args.calls,
                )
                for who, rs in results.items()
            }
            rows.append((concurrency, med))
    finally:
        server.kill()
        server.wait()
    if profiler and args.profile:
        profiler.dump_stats(args.profile)
    print(
        f"{args.calls} streamed calls per round, {args.rounds} rounds alternating, fake server "
        f"({args.latency_ms:g} ms) in its own process on 127.0.0.1"
    )
    print(
        "| concurrency | SDK loop calls/s | abharness calls/s | ratio | SDK CPU ms/call | abharness CPU ms/call | ratio |"
    )
    print("|--:|--:|--:|--:|--:|--:|--:|")
    for concurrency, med in rows:
        (s_rate, s_cpu), (a_rate, a_cpu) = med["sdk"], med["abharness"]
        print(
            f"| {concurrency} | {s_rate:.0f} | {a_rate:.0f} | {a_rate / s_rate:.2f} | "
            f"{s_cpu:.2f} | {a_cpu:.2f} | {a_cpu / s_cpu:.2f} |"
        )


if __name__ == "__main__":
    main()
