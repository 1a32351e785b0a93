"""Simulated online experiments with a known truth, for validating the always-valid
statistics of `report.sequential` (docs/online-statistics.md quotes this script's table).

An experiment runs `days` days. Each arm gets `subjects` subjects, each arriving at a
uniform time; a subject makes 1 + Poisson(`extra_requests`) requests, or, with
`heavy`, a Pareto-tailed number (a few subjects make hundreds), spread uniformly from
its arrival to the end. A subject has its own propensity q ~ Beta(mean `p`,
`concentration`), so its requests are correlated; each request's value is:

- `binary`: 1 with probability q (a thumbs-up feedback); a share `missing` of the
  requests get no feedback (NaN);
- `score`: a Beta(10·q, 10·(1 − q)) score (a scorer's 0..1 score), mean q;
- `latency`: exp(6 + N(0, 0.4) per subject + N(0, 0.6) per request) ms, log-normal.

The arm's subjects are shifted by `effect`: q' = q + effect·(1 − q)/(1 − p) for 0..1
values (the population mean moves by exactly `effect`), the log latency by log(ratio).
The truth is that shift: the difference of the mean over subjects of their expected
value (or the ratio of geometric means for latency).

Run it: `.venv/bin/python -m tests.simulation_online [--experiments N]` prints the
table (one core; about 2 minutes at 1,000 experiments per row).
"""

from __future__ import annotations

import argparse
import math
import time
import zlib
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from abharness.report.sequential import (
    PLANNED_SUBJECTS,
    sequential_compare,
    sequential_path,
    sequential_power,
)

SEED = 20261202
ALPHA = 0.05


@dataclass(frozen=True)
class Scenario:
    name: str
    kind: str = "binary"  # binary | score | latency
    p: float = 0.5
    subjects: int = 1_000  # per arm
    days: int = 30
    extra_requests: float = 2.0
    heavy: bool = False
    concentration: float = 4.0
    missing: float = 0.0
    effect: float = 0.0  # 0..1 kinds: difference; latency: log of the ratio
    control_subjects: int | None = None  # an unequal split: the control's own count

    @property
    def metric(self) -> str:
        return {"binary": "feedback", "score": "mean_score", "latency": "latency"}[self.kind]

    @property
    def truth(self) -> float:
        return math.exp(self.effect) if self.kind == "latency" else self.effect


def _shift(q: np.ndarray, p: float, effect: float) -> np.ndarray:
    if effect >= 0:
        return q + effect * (1 - q) / (1 - p)
    return q * (1 + effect / p)


def draw_arm(rng: np.random.Generator, s: Scenario, effect: float, prefix: str) -> pd.DataFrame:
    """One arm's requests: columns subject, value, at (days since the start)."""
    n = s.subjects
    arrive = rng.random(n) * s.days
    if s.heavy:  # Pareto(1.1) tail: a median of ~1 extra request, a few with hundreds
        extra = np.minimum(np.floor(rng.pareto(1.1, n) * 1.5), 500).astype(np.int64)
    else:
        extra = rng.poisson(s.extra_requests, n)
    k = 1 + extra
    who = np.repeat(np.arange(n), k)
    first = np.zeros(who.size, dtype=bool)
    first[np.cumsum(k) - k] = True
    at = np.where(first, arrive[who], arrive[who] + rng.random(who.size) * (s.days - arrive[who]))
    if s.kind == "latency":
        subject_log = 6 + rng.normal(0, 0.4, n) + effect
        value = np.exp(subject_log[who] + rng.normal(0, 0.6, who.size))
    else:
        a, b = s.p * s.concentration, (1 - s.p) * s.concentration
        q = _shift(rng.beta(a, b, n), s.p, effect)[who]
        if s.kind == "binary":
            value = (rng.random(who.size) < q).astype(float)
        else:
            qq = np.clip(q, 1e-3, 1 - 1e-3)
            value = rng.beta(10 * qq, 10 * (1 - qq))
    if s.missing:
        value[rng.random(who.size) < s.missing] = np.nan
    return pd.DataFrame({"subject": [f"{prefix}{i}" for i in who], "value": value, "at": at})


def experiment(rng: np.random.Generator, s: Scenario) -> tuple[pd.DataFrame, pd.DataFrame]:
    control = s if s.control_subjects is None else replace(s, subjects=s.control_subjects)
    return draw_arm(rng, s, s.effect, "a"), draw_arm(rng, control, 0.0, "c")


@dataclass
class Outcome:
    claimed: bool  # the always-valid p reached α at some look (p is its running minimum)
    covered: bool  # the truth inside the running intersection at the end: at every look
    naive_claimed: bool  # Welch's t-test, read at each day's end, p < α at some day
    fixed_claimed: bool  # Welch's t-test read once, at the end (valid, not sequential)
    p: float


def run_one(rng: np.random.Generator, s: Scenario) -> Outcome:
    arm, control = experiment(rng, s)
    c = sequential_compare(arm, control, s.metric, alpha=ALPHA)
    path = sequential_path(arm, control, s.metric, alpha=ALPHA)
    # the last look of each day: what someone reading the report daily would see
    day = np.floor(path["at"].to_numpy())
    daily = path[np.append(day[1:] != day[:-1], True)]
    assert c.p_value is not None and c.ci_low is not None and c.ci_high is not None
    return Outcome(
        claimed=c.p_value <= ALPHA,
        covered=c.ci_low <= s.truth <= c.ci_high,
        naive_claimed=bool((daily["p_fixed"] < ALPHA).any()),
        fixed_claimed=bool(daily["p_fixed"].iloc[-1] < ALPHA),
        p=c.p_value,
    )


def run(s: Scenario, experiments: int, seed: int = SEED) -> list[Outcome]:
    rng = np.random.default_rng([seed, zlib.crc32(s.name.encode())])
    return [run_one(rng, s) for _ in range(experiments)]


AA = [
    Scenario("binary 5%", p=0.05, missing=0.5),
    Scenario("binary 50%", p=0.5, missing=0.5),
    Scenario("binary 95%", p=0.95, missing=0.5),
    Scenario("scores", kind="score", p=0.7),
    Scenario("heavy users, binary 50%", heavy=True),
    Scenario("latency (log-normal)", kind="latency"),
    Scenario("binary 5%, 60 subjects/arm", p=0.05, subjects=60, missing=0.5),
    Scenario("binary 10%, split 10/90 (200 vs 1,800)", p=0.1, subjects=200, control_subjects=1_800),
    Scenario(
        "latency, split 10/90 (200 vs 1,800)", kind="latency", subjects=200, control_subjects=1_800
    ),
]
EFFECTS = [
    Scenario(
        "+5 points on 50%, 2,000/arm, 1 request", subjects=2_000, extra_requests=0, effect=0.05
    ),
    Scenario("+5 points on 50%, 2,000/arm, ~3 requests", subjects=2_000, effect=0.05),
    Scenario(
        "+3 points on 50%, 2,000/arm, 1 request", subjects=2_000, extra_requests=0, effect=0.03
    ),
    Scenario("latency ×1.10, 1,000/arm", kind="latency", effect=math.log(1.10)),
    Scenario("heavy users, +5 points", heavy=True, subjects=2_000, effect=0.05),
]


def table(experiments: int) -> str:
    rows = [
        "| scenario | experiments | always-valid: claims (power) | coverage at every look "
        "| t-test read daily: claims | t-test read once at day 30 | predicted power |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in AA + EFFECTS:
        started = time.perf_counter()
        out = run(s, experiments)
        claims = np.mean([o.claimed for o in out])
        covered = np.mean([o.covered for o in out])
        naive = np.mean([o.naive_claimed for o in out])
        once = np.mean([o.fixed_claimed for o in out])
        predicted = "—"
        if s.effect and s.kind == "binary" and not s.heavy and s.extra_requests == 0:
            predicted = f"{sequential_power(s.effect, 0.5, s.subjects, days=s.days):.0%}"
        rows.append(
            f"| {s.name} | {experiments} | {claims:.1%} | {covered:.1%} | {naive:.1%} "
            f"| {once:.1%} | {predicted} |"
        )
        print(rows[-1], f"({time.perf_counter() - started:.0f} s)", flush=True)
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiments", type=int, default=1_000)
    args = parser.parse_args()
    print(f"planned subjects (both arms) {PLANNED_SUBJECTS}, α = {ALPHA}, seed {SEED}")
    print(table(args.experiments))


if __name__ == "__main__":
    main()
