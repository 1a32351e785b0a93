"""A fault-injected run against a clean one, side by side (issue 4's acceptance figure).

500 calls (250 cases x 2 arms) through the real runner and retry policy against the
loopback fake server: first with no faults, then with 20% 429 (Retry-After 0.2 s),
10% 500 and a few hangs (timeout_s 2). Prints calls ok, failures by type, attempts,
duplicates (keys the server answered more than once: must be 0) and wall times.

    .venv/bin/python -m tests.benchmarks.faults [--cases 250] [--hangs 5]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from collections import Counter
from pathlib import Path

import duckdb

from abharness.run.experiment import run_experiment
from tests.fake_server import FakeServer, Fault, Logged


def spec(root: Path, url: str, cases: int) -> Path:
    (root / "prompts/cap").mkdir(parents=True)
    (root / "prompts/cap/v1.j2").write_text(
        "{% block user %}{% block examples %}{% endblock %}What is the capital of {{ country }}?{% endblock %}"
    )
    (root / "prompts/cap/v2.j2").write_text(
        '{% extends "cap/v1.j2" %}{% block examples %}Lisbon is the capital of Portugal. {% endblock %}'
    )
    (root / "data.jsonl").write_text(
        "".join(json.dumps({"id": f"c{i:04d}", "country": f"Land{i}"}) + "\n" for i in range(cases))
    )
    path = root / "spec.yaml"
    path.write_text(f"""
name: faults-bench
dataset: data.jsonl
prompts_dir: prompts
baseline: zero-shot
defaults: {{temperature: 0, seed: 1, max_tokens: 8, timeout_s: 2}}
providers:
  fake: {{type: openai, base_url: "{url}/v1", api_key_env: BENCH_KEY, price_provider: openai, rpm: 100000,
          concurrency: 16}}
arms:
  - {{id: zero-shot, provider: fake, model: gpt-4.1-mini, prompt: cap@1}}
  - {{id: few-shot, provider: fake, model: gpt-4.1-mini, prompt: cap@2}}
max_error_rate: 1
""")
    return path


def key(entry: Logged) -> tuple[bool, str]:
    text = entry.body["messages"][-1]["content"]
    return ("Portugal" in text, text.rsplit("capital of ", 1)[1])


def run(cases: int, faults: bool, hangs: int) -> dict[str, object]:
    rng = random.Random(11)
    left = hangs

    def inject(entry: Logged) -> Fault | None:
        nonlocal left
        r = rng.random()
        if r < 0.2:
            return Fault(429, {"retry-after": "0.2"})
        if r < 0.3:
            return Fault(500)
        if r < 0.31 and left:
            left -= 1
            return Fault(hang=True)
        return None

    with tempfile.TemporaryDirectory() as tmp, FakeServer(latency_s=0.01) as server:
        if faults:
            server.fault_fn = inject
        path = spec(Path(tmp), server.url, cases)
        started = time.perf_counter()
        out = run_experiment(path, db=Path(tmp) / "b.duckdb", use_cache=False)
        wall = time.perf_counter() - started
        con = duckdb.connect(str(out.db), read_only=True)
        ok, attempts = con.execute(
            "SELECT count(*) FILTER (WHERE status = 'ok'), sum(attempts) FROM calls"
        ).fetchone()
        by_type = dict(
            con.execute(
                "SELECT error_type, count(*) FROM calls WHERE status = 'error' GROUP BY 1"
            ).fetchall()
        )
        rows = con.execute(
            "SELECT count(*), count(DISTINCT (arm_id, case_id, repeat)) FROM calls"
        ).fetchone()
        con.close()
        answered = Counter(key(e) for e in server.log if e.status == 200 and e.text)
        return {
            "calls": rows[0],
            "distinct_keys": rows[1],
            "ok": ok,
            "errors": by_type,
            "attempts": attempts,
            "server_requests": len(server.log),
            "duplicates": sum(n - 1 for n in answered.values() if n > 1),
            "hangs_served": hangs - left if faults else 0,
            "wall_s": round(wall, 1),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=250)
    parser.add_argument("--hangs", type=int, default=5)
    args = parser.parse_args()
    os.environ.setdefault("BENCH_KEY", "bench-key")
    clean = run(args.cases, False, 0)
    faulty = run(args.cases, True, args.hangs)
    print(f"{2 * args.cases} calls, 16 in flight, fake server with 10 ms latency")
    print(
        "| run | calls | ok | errors by type | attempts | server requests | duplicates | wall s |"
    )
    print("|---|--:|--:|---|--:|--:|--:|--:|")
    for name, r in (("no faults", clean), ("20% 429 + 10% 500 + hangs", faulty)):
        print(
            f"| {name} | {r['calls']} | {r['ok']} | {r['errors'] or '–'} | {r['attempts']} | "
            f"{r['server_requests']} | {r['duplicates']} | {r['wall_s']} |"
        )
    print(
        f"\nhangs served: {faulty['hangs_served']}; wall-time ratio faulty/clean: "
        f"{faulty['wall_s'] / clean['wall_s']:.1f}"
    )


if __name__ == "__main__":
    main()
