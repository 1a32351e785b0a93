"""What the benchmarks share: the fake server in its own process, the plain SDK loop,
a spec of N cases, and a child process measured from outside. Imports nothing of
abharness, so a child running the SDK loop holds only the SDK."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PROMPT = "What is the capital of Land{i}?"


@contextmanager
def trees(old: str | None) -> Iterator[dict[str, Path]]:
    """The source trees to measure side by side: this one, and `old` (a commit, checked
    out in a worktree of its own for the duration) when given."""
    found = {"this tree": REPO / "src"}
    if old is None:
        yield found
        return
    folder = Path(tempfile.mkdtemp()) / "old"
    subprocess.run(
        ["git", "-C", str(REPO), "worktree", "add", "--detach", str(folder), old],
        check=True,
        capture_output=True,
    )
    try:
        yield {**found, f"at {old}": folder / "src"}
    finally:
        subprocess.run(
            ["git", "-C", str(REPO), "worktree", "remove", "--force", str(folder)], check=False
        )
        shutil.rmtree(folder.parent, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
                messages=[{"role": "user", "content": PROMPT.format(i=i)}],
                max_tokens=8,
                stream=True,
                stream_options={"include_usage": True},
            )
            async for _ in stream:
                pass

    await asyncio.gather(*(call(i) for i in range(calls)))
    await client.close()


TWO_ARMS = ("gpt-4.1-mini", "gpt-4.1-nano")


def write_spec(
    folder: Path, url: str, cases: int, concurrency: int, models: tuple[str, ...] = TWO_ARMS[:1]
) -> Path:
    """A spec of `cases` cases on the fake server, one arm per model (ids a, b, ...)."""
    (folder / "prompts/q").mkdir(parents=True, exist_ok=True)
    (folder / "prompts/q/v1.j2").write_text(
        "{% block user %}What is the capital of {{ country }}?{% endblock %}\n"
    )
    with (folder / "cases.jsonl").open("w") as f:
        for i in range(cases):
            f.write(f'{{"id": "c{i}", "country": "Land{i}"}}\n')
    arms = "\n".join(
        f"  - {{id: {chr(ord('a') + i)}, provider: fake, model: {m}}}" for i, m in enumerate(models)
    )
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
{arms}
scorers:
  - {{type: contains, expected: "Paris"}}
max_error_rate: 1
"""
    )
    return spec


@dataclass
class Child:
    wall_s: float
    peak_mb: float
    cpu_s: float
    stdout: str
    started_at: float  # time.time() as the launcher started the command


# Started first, small: it starts the measured command and reports the command's own
# rusage, and when it started it (the launcher's own start-up is not the command's).
# A child forked straight from a large parent reports the parent's RSS as its peak
# (ru_maxrss counts the pages it held before exec), which would hide its own.
MEASURE = """
import json, os, subprocess, sys, time
started_at, start = time.time(), time.perf_counter()
proc = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(proc.pid, 0)
with open(sys.argv[1], "w") as f:
    json.dump([os.waitstatus_to_exitcode(status), time.perf_counter() - start,
               usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime, started_at], f)
"""


def run_child(cmd: list[str], cwd: Path | None = None) -> Child:
    """Run `cmd` to its end; its own wall time, peak RSS and CPU time."""
    with tempfile.NamedTemporaryFile("r", suffix=".json") as report:
        proc = subprocess.run(
            [sys.executable, "-c", MEASURE, report.name, *cmd],
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        code, wall, peak_mb, cpu_s, started_at = json.loads(report.read() or "[1, 0, 0, 0, 0]")
    if proc.returncode != 0 or code != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {code}:\n{proc.stdout[-2000:]}")
    return Child(wall, peak_mb, cpu_s, proc.stdout, started_at)


class Server:
    """The fake server in its own process; it prints the time of its first request."""

    def __init__(self, latency_ms: float) -> None:
        code = (
            "import sys, time\n"
            "from tests.fake_server import FakeServer\n"
            "s = FakeServer(port=int(sys.argv[1]), latency_s=float(sys.argv[2]) / 1000)\n"
            "first = []\n"
            "def seen(entry):\n"
            "    if not first:\n"
            "        first.append(entry.at)\n"
            "        print('first', entry.at, flush=True)\n"
            "s.fault_fn = seen\n"
            "s.start()\n"
            "print(s.url, flush=True)\n"
            "time.sleep(3600)\n"
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code, str(free_port()), str(latency_ms)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,  # connection resets as a run closes its pool
            text=True,
            cwd=REPO,
        )
        assert self.proc.stdout is not None
        self.url = self.proc.stdout.readline().strip()

    def first_request_at(self) -> float:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().split()
        assert line and line[0] == "first", line
        return float(line[1])

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()
