"""`abharness serve`'s overhead, throughput and memory, against the loopback fake.

The fake upstream and the gateway each run in a process of their own; this process
is the client (aiohttp). In one run, side by side:

- **overhead**: open loop at `--rate` requests/s, alternating blocks of `--block-s`
  seconds sent straight to the fake and through the gateway (the same non-streamed
  chat request; the arm calls the fake non-streamed too), `--rounds` times; the
  gateway's p50 and p99 minus the direct ones of the same round, median over rounds;
- **throughput**: closed loop at `--concurrency` for `--seconds`, direct and through;
- **memory**: the gateway's RSS (``/proc/PID/status``) every 10% of `--memory-requests`
  sent through it at full speed.

    .venv/bin/python -m tests.benchmarks.serve [--rate 200] [--memory-requests 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import httpx

from .common import free_port

BODY = {
    "model": "live",
    "messages": [{"role": "user", "content": "What is the capital of France?"}],
    "max_tokens": 8,
}
SPEC = """name: bench
prompts_dir: prompts
providers:
  up: {{type: openai, base_url: "{url}/v1", api_key_env: FAKE_KEY, concurrency: 256}}
defaults: {{stream: false, max_tokens: 8}}
arms:
  - {{id: control, provider: up, model: model-a}}
  - {{id: treatment, provider: up, model: model-b}}
serve:
  split: {{control: 1, treatment: 1}}
  keys_env: BENCH_KEYS
  merge_every_s: 30
"""


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def open_loop(
    session: aiohttp.ClientSession, url: str, rate: float, seconds: float, headers: dict[str, str]
) -> list[float]:
    """Requests sent every 1/rate s, whatever the answers' pace; their latencies in ms."""
    latencies: list[float] = []

    async def one(i: int) -> None:
        t = time.perf_counter()
        async with session.post(url, json=BODY, headers=headers) as r:
            await r.read()
            assert r.status == 200, r.status
        latencies.append((time.perf_counter() - t) * 1000)

    tasks = []
    start = time.perf_counter()
    n = int(rate * seconds)
    for i in range(n):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i)))
    await asyncio.gather(*tasks)
    return latencies


async def closed_loop(
    session: aiohttp.ClientSession,
    url: str,
    concurrency: int,
    headers: dict[str, str],
    *,
    seconds: float | None = None,
    requests: int | None = None,
    every: int = 0,
    on_every: object = None,
) -> float:
    """Requests/s with `concurrency` always in flight, for `seconds` or `requests`."""
    sent = done = 0
    deadline = time.perf_counter() + seconds if seconds else None

    async def worker() -> None:
        nonlocal sent, done
        while (deadline is None or time.perf_counter() < deadline) and (
            requests is None or sent < requests
        ):
            sent += 1
            async with session.post(url, json=BODY, headers=headers) as r:
                await r.read()
            done += 1
            if every and done % every == 0 and callable(on_every):
                on_every(done)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done / (time.perf_counter() - start)


async def bench(args: argparse.Namespace, upstream: str, gateway: str, pid: int) -> None:
    direct = f"{upstream}/v1/chat/completions"
    through = f"{gateway}/v1/chat/completions"
    headers = {"Authorization": "Bearer bench-key"}
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        for url in (direct, through):  # warm both paths
            await open_loop(session, url, 50, 1, headers)
        rounds: list[dict[str, float]] = []
        for _ in range(args.rounds):
            d = await open_loop(session, direct, args.rate, args.block_s, headers)
            g = await open_loop(session, through, args.rate, args.block_s, headers)
            rounds.append(
                {
                    "direct_p50": statistics.median(d),
                    "direct_p99": quantile(d, 0.99),
                    "gateway_p50": statistics.median(g),
                    "gateway_p99": quantile(g, 0.99),
                }
            )
        med = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
        over50 = statistics.median(r["gateway_p50"] - r["direct_p50"] for r in rounds)
        over99 = statistics.median(r["gateway_p99"] - r["direct_p99"] for r in rounds)
        direct_rps = await closed_loop(
            session, direct, args.concurrency, headers, seconds=args.seconds
        )
        gateway_rps = await closed_loop(
            session, through, args.concurrency, headers, seconds=args.seconds
        )
        print(
            f"\nOverhead at {args.rate:g} requests/s (open loop, {args.rounds} rounds of "
            f"{args.block_s:g} s each way, alternating; medians over rounds)\n"
        )
        print("| | direct to the fake | through abharness serve | overhead |")
        print("|---|--:|--:|--:|")
        print(f"| p50 ms | {med['direct_p50']:.2f} | {med['gateway_p50']:.2f} | {over50:+.2f} |")
        print(f"| p99 ms | {med['direct_p99']:.2f} | {med['gateway_p99']:.2f} | {over99:+.2f} |")
        print(f"\nThroughput (closed loop, concurrency {args.concurrency}, {args.seconds:g} s)\n")
        print("| | direct to the fake | through abharness serve | through ÷ direct |")
        print("|---|--:|--:|--:|")
        print(
            f"| requests/s | {direct_rps:.0f} | {gateway_rps:.0f} | {gateway_rps / direct_rps:.2f} |"
        )
        if args.memory_requests:
            samples: list[tuple[int, float]] = [(0, rss_mb(pid))]
            step = max(args.memory_requests // 10, 1)
            began = time.perf_counter()
            await closed_loop(
                session,
                through,
                args.concurrency,
                headers,
                requests=args.memory_requests,
                every=step,
                on_every=lambda n: samples.append((n, rss_mb(pid))),
            )
            took = time.perf_counter() - began
            print(
                f"\nGateway RSS over {args.memory_requests:,} requests "
                f"({args.memory_requests / took:.0f} requests/s)\n"
            )
            print("| requests | " + " | ".join(f"{n:,}" for n, _ in samples) + " |")
            print("|---|" + "--:|" * len(samples))
            print("| RSS MB | " + " | ".join(f"{m:.0f}" for _, m in samples) + " |")
            first = next((m for n, m in samples if n >= step), samples[0][1])
            print(f"\nRSS at the end ÷ after the first 10%: {samples[-1][1] / first:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=200)
    parser.add_argument("--block-s", type=float, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--memory-requests", type=int, default=100_000)
    args = parser.parse_args()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "FAKE_KEY": "k", "BENCH_KEYS": "bench-key"}
    fake = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.fake_server",
            "--port",
            str(free_port()),
            "--seconds",
            "3600",
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    gateway_proc = None
    try:
        assert fake.stdout is not None
        upstream = fake.stdout.readline().strip()
        with tempfile.TemporaryDirectory(prefix="abharness-serve-bench-") as tmp:
            root = Path(tmp)
            (root / "prompts").mkdir()
            (root / "spec.yaml").write_text(SPEC.format(url=upstream), encoding="utf-8")
            port = free_port()
            gateway_proc = subprocess.Popen(
                [
                    str(Path(sys.executable).with_name("abharness")),
                    "serve",
                    str(root / "spec.yaml"),
                    "--port",
                    str(port),
                    "--db",
                    str(root / "results/ab.duckdb"),
                ],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            gateway = f"http://127.0.0.1:{port}"
            for _ in range(600):
                if gateway_proc.poll() is not None:
                    raise SystemExit(f"abharness serve exited {gateway_proc.returncode}")
                try:
                    if httpx.get(f"{gateway}/healthz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.1)
            print(
                "abharness serve (one uvicorn worker) in front of the loopback fake "
                "(tests/fake_server.py), each in its own process on 127.0.0.1; "
                f"{os.cpu_count()} CPUs"
            )
            asyncio.run(bench(args, upstream, gateway, gateway_proc.pid))
            gateway_proc.terminate()
            gateway_proc.wait(120)
    finally:
        if gateway_proc is not None and gateway_proc.poll() is None:
            gateway_proc.kill()
        fake.kill()
        fake.wait()


if __name__ == "__main__":
    main()
