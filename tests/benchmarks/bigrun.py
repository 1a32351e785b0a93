"""A large finished run written straight into a results database, as a run writes it:
its rows through `Store` (a staging file), then `merge` into the main file.

Two arms (`v1`, the baseline, and `v2`) over `cases` cases with `repeats` repeats each:
every case has its own difficulty, `v2` passes a little more often, repeats disagree on
the cases of middling difficulty (flaky), about 1% of calls fail (rate limits, timeouts,
with their failed attempts), and prompts and answers are text of realistic length.
Seeded: the same arguments give the same database. Used by the view's benchmark and
its tests (a small one).

    .venv/bin/python -m tests.benchmarks.bigrun PATH [--cases 10000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from abharness.hashing import content_hash
from abharness.store.db import Store, merge, staging_dir
from abharness.store.records import CallRecord, ScoreRecord, Usage

RUN_ID = "20261201-020000-big000"
TEXT = (
    "the capital city of this country is located near a large river and hosts many "
    "museums government buildings parks and old churches that visitors like to see"
)
WORDS = TEXT.split()
SPEC = """name: big
description: a large synthetic run for the view's benchmark
prompt: q@1
baseline: v1
repeats: {repeats}
arms:
  - {{id: v1, provider: fake, model: model-a}}
  - {{id: v2, provider: fake, model: model-b}}
scorers:
  - {{type: contains, expected: "{{{{ case.answer }}}}"}}
"""


def _text(rng: np.random.Generator, words: int) -> str:
    return " ".join(WORDS[i] for i in rng.integers(0, len(WORDS), words))


def build_database(
    main: Path, cases: int = 10_000, repeats: int = 5, run_id: str = RUN_ID, seed: int = 7
) -> Path:
    """Write the run into `main` (created if missing); return `main`."""
    rng = np.random.default_rng(seed)
    staging = staging_dir(main) / f"{run_id}.duckdb"
    store = Store(staging)
    started = datetime(2026, 12, 1, 2, 0, tzinfo=UTC).replace(tzinfo=None)
    store.insert(
        "runs",
        [
            {
                "run_id": run_id,
                "experiment": "big",
                "description": "a large synthetic run",
                "status": "completed",
                "started_at": started,
                "finished_at": started + timedelta(minutes=30),
                "spec_hash": "bigspec",
                "spec_yaml": SPEC.format(repeats=repeats),
                "harness_version": "bench",
                "host": "bench",
                "total_calls": 2 * cases * repeats,
                "wall_time_s": 1800.0,
                "kind": "run",
            }
        ],
    )
    store.insert(
        "arms",
        [
            {
                "run_id": run_id,
                "arm_id": arm,
                "provider": "fake",
                "endpoint": "http://127.0.0.1:9/v1",
                "model": model,
                "tier": 2,
                "prompt_name": "q",
                "prompt_version": 1,
                "prompt_hash": "h" + arm,
                "params_json": "{}",
                "is_baseline": arm == "v1",
                "position": i,
                "role": "arm",
            }
            for i, (arm, model) in enumerate((("v1", "model-a"), ("v2", "model-b")))
        ],
    )
    difficulty = rng.beta(2, 2, cases)
    for start in range(0, cases, 500):
        ids = range(start, min(start + 500, cases))
        store.insert(
            "cases",
            [
                {
                    "run_id": run_id,
                    "case_id": f"case-{i:06d}",
                    "vars_json": json.dumps(
                        {"country": f"Land {i}", "context": _text(rng, 40), "answer": f"City{i}"}
                    ),
                    "expected_json": None,
                }
                for i in ids
            ],
        )
        calls: list[CallRecord] = []
        scores: list[ScoreRecord] = []
        for i in ids:
            for arm, lift in (("v1", 0.0), ("v2", 0.05)):
                for r in range(repeats):
                    cid = content_hash([run_id, arm, i, r], 24)
                    rec = CallRecord(cid, run_id, arm, f"case-{i:06d}", r, attempts=1)
                    rec.started_at = started + timedelta(milliseconds=int(i * 180 + r))
                    rec.prompt_text = (
                        f"Context: {_text(rng, 40)}\nQ: What is the capital of Land {i}?\nA:"
                    )
                    rec.request_id = f"req-{cid[:12]}"
                    rec.served_model = "model-a" if arm == "v1" else "model-b"
                    if rng.random() < 0.01:
                        kind = "rate_limit" if rng.random() < 0.5 else "timeout"
                        rec.fail(kind, f"{kind}: the server gave up")
                        rec.attempts = 5
                        rec.attempt_errors_json = json.dumps(
                            [{"attempt": a, "error_type": kind, "message": "retry"} for a in (1, 2)]
                        )
                        calls.append(rec)
                        continue
                    passed = bool(rng.random() < min(1.0, 1 - difficulty[i] + lift))
                    answer = f"City{i}" if passed else "Atlantis"
                    rec.status = "ok"
                    rec.response_text = f"{answer}. {_text(rng, int(rng.integers(5, 25)))}"
                    rec.latency_ms = float(rng.lognormal(6.0 if arm == "v1" else 6.1, 0.4))
                    rec.ttft_ms = rec.latency_ms * 0.3
                    rec.usage = Usage(input_tokens=int(rng.integers(60, 90)), output_tokens=20)
                    rec.usage_source = "final_chunk"
                    rec.est_input_tokens = (rec.usage.input_tokens or 0) + 2
                    rec.est_method = "tiktoken:o200k_base"
                    rec.cost_usd = 1e-6 * ((rec.usage.input_tokens or 0) + 4 * 20)
                    rec.price_source = "spec"
                    rec.finish_reason = "stop"
                    calls.append(rec)
                    scores.append(ScoreRecord(cid, run_id, "contains", float(passed), passed, ""))
        store.insert_calls(calls)
        store.insert_scores(scores)
    store.close()
    result = merge(staging, main)
    assert result.merged, result.message
    return main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", type=Path)
    parser.add_argument("--cases", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    build_database(args.path, args.cases, args.repeats)
    print(args.path)


if __name__ == "__main__":
    main()
