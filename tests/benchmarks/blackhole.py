"""A server that accepts connections and never answers (issue 18's figure).

A loopback port whose listening socket is never accept()ed: the kernel completes the
TCP handshake, the request is sent, and no byte ever comes back. One arm of `--calls`
calls with `timeout_s` against it, through `abharness run`: the run should end in about
6 × timeout_s plus the circuit's 30 s cool-down, whatever the number of calls.

    .venv/bin/python -m tests.benchmarks.blackhole [--calls 200] [--timeout-s 10]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--timeout-s", type=float, default=10.0)
    args = parser.parse_args()
    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(4096)
    url = f"http://127.0.0.1:{hole.getsockname()[1]}/v1"
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "prompts/q").mkdir(parents=True)
        (root / "prompts/q/v1.j2").write_text("{% block user %}Question {{ id }}?{% endblock %}\n")
        cases = "\n".join(f"  - {{id: c{i:04d}}}" for i in range(args.calls))
        (root / "spec.yaml").write_text(
            f"""name: blackhole
prompts_dir: prompts
prompt: q@1
defaults: {{temperature: 0, max_tokens: 8, timeout_s: {args.timeout_s}}}
providers:
  hole: {{type: openai, base_url: "{url}", api_key_env: BENCH_KEY,
          price: {{input_per_mtok: 1, output_per_mtok: 1}}}}
arms:
  - {{id: a, provider: hole, model: m}}
cases:
{cases}
max_error_rate: 1
"""
        )
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "abharness", "run", "spec.yaml", "--db", "r.duckdb"],
            cwd=root,
            env={**os.environ, "BENCH_KEY": "k"},
            capture_output=True,
            text=True,
            timeout=3600,
        )
        wall = time.perf_counter() - started
        con = duckdb.connect(str(root / "r.duckdb"), read_only=True)
        types, attempts, made = con.execute(
            "SELECT list(DISTINCT error_type), sum(attempts), count(*) FILTER (WHERE attempts > 0) "
            "FROM calls"
        ).fetchone()  # type: ignore[misc]
        con.close()
    hole.close()
    print(
        f"{args.calls} calls, timeout_s {args.timeout_s:g}, circuit cool-down 30 s, a port that "
        "never answers"
    )
    print("| wall s (whole command) | exit | calls attempted | attempts | error types |")
    print("|--:|--:|--:|--:|---|")
    print(f"| {wall:.1f} | {done.returncode} | {made} | {attempts} | {', '.join(types)} |")


if __name__ == "__main__":
    main()
