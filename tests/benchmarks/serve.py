"""`abharness serve`'s overhead, throughput and memory, against the loopback fake.

The fake upstream and the gateway each run in a process of their own; this process
is the client (aiohttp). In one run, side by side:

- **overhead**: open loop at `--rate` requests/s, blocks of `--block-s` seconds sent
  straight to the fake, then through each gateway (the same non-streamed chat request;
  the arm calls the fake non-streamed too), `--rounds` times; a gateway's p50 and p99
  minus the direct ones of the same round, median over rounds;
- **throughput**: closed loop at `--concurrency` for `--seconds`, direct and through
  each gateway, twice, with the gateway's CPU per request (``/proc/PID/stat``);
- **memory**: this tree's gateway RSS (``/proc/PID/status``) every 10% of
  `--memory-requests` sent through it at full speed.

This tree's gateway runs twice: its arms on the OpenAI provider's ``transport: direct``
(what the README advises for a busy gateway; its memory is measured) and on the
default SDK transport. ``--old REF`` runs the gateway of an earlier commit beside them.

    .venv/bin/python -m tests.benchmarks.serve [--rate 200] [--memory-requests 100000] [--old REF]
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
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import httpx

from .common import free_port, trees

BODY = {
    "model": "live",
    "messages": [{"role": "user", "content": "What is the capital of France?"}],
    "max_tokens": 8,
}
SPEC = """name: bench
prompts_dir: prompts
providers:
  up: {{type: openai, base_url: "{url}/v1", api_key_env: FAKE_KEY, concurrency: 256{options}}}
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


def cpu_s(pid: int) -> float:
    """CPU seconds `pid` has used so far, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Gateway:
    name: str  # "this tree", or "at REF"
    url: str
    pid: int

    @property
    def chat(self) -> str:
        return f"{self.url}/v1/chat/completions"


async def bench(args: argparse.Namespace, upstream: str, gateways: list[Gateway]) -> None:
    direct = f"{upstream}/v1/chat/completions"
    headers = {"Authorization": "Bearer bench-key"}
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        for url in (direct, *(g.chat for g in gateways)):  # warm every path
            await open_loop(session, url, 50, 1, headers)
        over: dict[str, list[tuple[float, float, float, float]]] = {g.name: [] for g in gateways}
        for _ in range(args.rounds):  # direct, then each gateway, side by side
            d = await open_loop(session, direct, args.rate, args.block_s, headers)
            for g in gateways:
                t = await open_loop(session, g.chat, args.rate, args.block_s, headers)
                over[g.name].append(
                    (
                        statistics.median(d),
                        quantile(d, 0.99),
                        statistics.median(t),
                        quantile(t, 0.99),
                    )
                )
        rps: dict[str, list[float]] = {"direct": [], **{g.name: [] for g in gateways}}
        cpu: dict[str, list[float]] = {g.name: [] for g in gateways}
        for _ in range(2):
            rps["direct"].append(
                await closed_loop(session, direct, args.concurrency, headers, seconds=args.seconds)
            )
            for g in gateways:
                used = cpu_s(g.pid)
                began = time.perf_counter()
                rate = await closed_loop(
                    session, g.chat, args.concurrency, headers, seconds=args.seconds
                )
                rps[g.name].append(rate)
                cpu[g.name].append(
                    (cpu_s(g.pid) - used) * 1000 / (rate * (time.perf_counter() - began))
                )
        print(
            f"\nOverhead at {args.rate:g} requests/s (open loop, {args.rounds} rounds of "
            f"{args.block_s:g} s to each, direct first; the gateway's quantile minus the direct "
            "one of the same round, median over rounds)\n"
        )
        print(
            "| gateway | direct p50 ms | through p50 ms | overhead p50 | direct p99 ms | through p99 ms | overhead p99 |"
        )
        print("|---|--:|--:|--:|--:|--:|--:|")
        for g in gateways:
            r = over[g.name]
            m = [statistics.median(x[i] for x in r) for i in range(4)]
            o50 = statistics.median(x[2] - x[0] for x in r)
            o99 = statistics.median(x[3] - x[1] for x in r)
            print(
                f"| {g.name} | {m[0]:.2f} | {m[2]:.2f} | {o50:+.2f} | {m[1]:.2f} | {m[3]:.2f} "
                f"| {o99:+.2f} |"
            )
        print(
            f"\nThroughput (closed loop, concurrency {args.concurrency}, {args.seconds:g} s, "
            "2 rounds alternating; medians) and the gateway's CPU per request (all its threads)\n"
        )
        print("| | requests/s | ÷ direct | gateway CPU ms per request |")
        print("|---|--:|--:|--:|")
        base = statistics.median(rps["direct"])
        print(f"| direct to the fake | {base:.0f} | 1.00 | – |")
        for g in gateways:
            rate = statistics.median(rps[g.name])
            print(
                f"| through abharness serve, {g.name} | {rate:.0f} | {rate / base:.2f} "
                f"| {statistics.median(cpu[g.name]):.2f} |"
            )
        if args.memory_requests:
            await memory(args, session, gateways[0], headers)


async def memory(
    args: argparse.Namespace,
    session: aiohttp.ClientSession,
    gateway: Gateway,
    headers: dict[str, str],
) -> None:
    samples: list[tuple[int, float]] = [(0, rss_mb(gateway.pid))]
    step = max(args.memory_requests // 10, 1)
    began = time.perf_counter()
    await closed_loop(
        session,
        gateway.chat,
        args.concurrency,
        headers,
        requests=args.memory_requests,
        every=step,
        on_every=lambda n: samples.append((n, rss_mb(gateway.pid))),
    )
    took = time.perf_counter() - began
    print(
        f"\nGateway RSS ({gateway.name}) over {args.memory_requests:,} requests "
        f"({args.memory_requests / took:.0f} requests/s)\n"
    )
    print("| requests | " + " | ".join(f"{n:,}" for n, _ in samples) + " |")
    print("|---|" + "--:|" * len(samples))
    print("| RSS MB | " + " | ".join(f"{m:.0f}" for _, m in samples) + " |")
    first = next((m for n, m in samples if n >= step), samples[0][1])
    print(f"\nRSS at the end ÷ after the first 10%: {samples[-1][1] / first:.2f}")


SERVE = "import sys; from abharness.entry import main; sys.argv[0] = 'abharness'; main()"


def start_gateway(
    name: str, src: Path, root: Path, upstream: str, env: dict[str, str], transport: str | None
) -> tuple[Gateway, subprocess.Popen[bytes]]:
    """`abharness serve` from the source tree `src` (its arms on the OpenAI provider's
    `transport`, or its default), up once /healthz answers."""
    (root / "prompts").mkdir(parents=True)
    options = f", options: {{transport: {transport}}}" if transport else ""
    (root / "spec.yaml").write_text(SPEC.format(url=upstream, options=options), encoding="utf-8")
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            SERVE,
            "serve",
            str(root / "spec.yaml"),
            "--port",
            str(port),
            "--db",
            str(root / "results/ab.duckdb"),
        ],
        env={**env, "PYTHONPATH": str(src)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        if proc.poll() is not None:
            raise SystemExit(f"abharness serve ({name}) exited {proc.returncode}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.1)
    return Gateway(name, url, proc.pid), proc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=200)
    parser.add_argument("--block-s", type=float, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--memory-requests", type=int, default=100_000)
    parser.add_argument("--old", help="an earlier commit whose gateway runs side by side")
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
    procs: list[subprocess.Popen[bytes]] = []
    try:
        assert fake.stdout is not None
        upstream = fake.stdout.readline().strip()
        with (
            trees(args.old) as sources,
            tempfile.TemporaryDirectory(prefix="abharness-serve-bench-") as tmp,
        ):
            gateways = []
            setups = [("this tree, transport: direct", sources["this tree"], "direct")]  # memory
            setups.append(("this tree, transport: aiohttp (the SDK)", sources["this tree"], None))
            setups += [(name, src, None) for name, src in sources.items() if name != "this tree"]
            for i, (name, src, transport) in enumerate(setups):
                root = Path(tmp) / str(i)
                gateway, proc = start_gateway(name, src, root, upstream, env, transport)
                gateways.append(gateway)
                procs.append(proc)
            print(
                "abharness serve (one uvicorn worker each) in front of the loopback fake "
                "(tests/fake_server.py), each in its own process on 127.0.0.1; "
                f"{os.cpu_count()} CPUs"
            )
            asyncio.run(bench(args, upstream, gateways))
            for proc in procs:
                proc.terminate()
                proc.wait(120)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
        fake.kill()
        fake.wait()


if __name__ == "__main__":
    main()
