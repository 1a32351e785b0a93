"""OpenAI provider: the SDK's default HTTP transport (httpx2) against aiohttp.

Runs the loopback fake server in its own process (so the client's measurements are not
shared with the server's work), then alternates the two transports for several rounds
of N streamed chat completions at a fixed concurrency, measuring wall time, the
client's CPU time and per-call latency. Ratios are taken within one run, side by side.

    .venv/bin/python -m tests.benchmarks.transport [--calls 400] [--concurrency 32] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time

from abharness.providers.base import ProviderRequest
from abharness.providers.openai import OpenAIProvider

from .common import free_port


async def one_round(url: str, transport: str, calls: int, concurrency: int) -> dict[str, float]:
    provider = OpenAIProvider(
        "bench", "gpt-4.1-mini", {"base_url": url + "/v1", "transport": transport}
    )
    request = ProviderRequest(
        model="gpt-4.1-mini",
        messages=({"role": "user", "content": "What is the capital of France?"},),
        max_tokens=8,
        stream=True,
    )
    gate = asyncio.Semaphore(concurrency)
    latencies: list[float] = []

    async def call() -> None:
        async with gate:
            t = time.perf_counter()
            await provider.generate(request)
            latencies.append((time.perf_counter() - t) * 1000)

    await provider.generate(request)  # warm the connection pool
    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(call() for _ in range(calls)))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    await provider.aclose()
    return {
        "calls_per_s": calls / wall,
        "cpu_ms_per_call": cpu * 1000 / calls,
        "p50_ms": statistics.median(latencies),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "tests.fake_server", "--port", str(port), "--seconds", "600"],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert server.stdout is not None
        url = server.stdout.readline().strip()
        results: dict[str, list[dict[str, float]]] = {"httpx": [], "aiohttp": []}
        for r in range(args.rounds):
            order = ["httpx", "aiohttp"] if r % 2 == 0 else ["aiohttp", "httpx"]
            for transport in order:
                results[transport].append(
                    asyncio.run(one_round(url, transport, args.calls, args.concurrency))
                )
    finally:
        server.kill()
        server.wait()
    print(
        f"{args.calls} streamed calls x {args.rounds} rounds, concurrency {args.concurrency}, "
        "fake server in its own process on 127.0.0.1"
    )
    print(
        "| transport | calls/s (median) | client CPU ms/call (median) | latency p50 ms (median) |"
    )
    print("|---|--:|--:|--:|")
    med = {t: {k: statistics.median(x[k] for x in rs) for k in rs[0]} for t, rs in results.items()}
    for t, m in med.items():
        print(f"| {t} | {m['calls_per_s']:.0f} | {m['cpu_ms_per_call']:.2f} | {m['p50_ms']:.1f} |")
    ratio = med["aiohttp"]["calls_per_s"] / med["httpx"]["calls_per_s"]
    cpu_ratio = med["aiohttp"]["cpu_ms_per_call"] / med["httpx"]["cpu_ms_per_call"]
    print(
        f"\naiohttp/httpx throughput ratio: {ratio:.2f}; client CPU per call ratio: {cpu_ratio:.2f}"
    )


if __name__ == "__main__":
    main()
