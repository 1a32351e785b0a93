"""Issue 20's claims by simulation, before and after, as Markdown tables: continuous
scores with a small spread, nights with drift shared by every arm, what the gates can
catch, and latency/cost ratios from a handful of cases.

"Before" is the rule of an earlier commit's report/stats.py (``--old``, default the
commit issue 20 started from), run on the same draws: pseudo-cases at the ends of the
score scale, the arm-against-itself latency gate, bootstrap ratio intervals.

    python -m tests.benchmarks.evidence [--runs 300] [--old 34f764c]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import zlib
from collections.abc import Callable
from types import ModuleType

import numpy as np

from abharness.report import stats
from abharness.report.gate_power import a_priori
from abharness.report.stats import log_t_interval, paired_interval
from abharness.spec.models import Gates

from ..simulation import (
    SCORE_FAMILIES,
    Night,
    ScoreCell,
    draw_scores,
    latency_gate_fails,
    nights_pair,
)
from .verdicts import load_old

BEFORE = "34f764c"  # main when issue 20 started


def _pct(x: float) -> str:
    return f"{x * 100:.1f}%"


def _verdict(module: ModuleType, b: np.ndarray, a: np.ndarray, metric: str) -> str:
    c = module.compare_paired(b, a, metric)
    if module is stats:
        return str(module.compare_arms({"b": c}, power=False)["b"].verdict)
    return str(module.compare_arms({"b": c})["b"].verdict)


def scores(old: ModuleType, runs: int) -> list[tuple[str, str, str]]:
    """Continuous scores: four shapes × n 8, 30, 400 (tests/simulation.py)."""
    worst = {"before": [0.0, 1.0, 0.0], "now": [0.0, 1.0, 0.0]}  # A/A, coverage, A/A sum
    cells = []
    for family in SCORE_FAMILIES:
        for n in (8, 30, 400):
            rng = np.random.default_rng(zlib.crc32(f"{family} {n}".encode()))
            claims = {"before": 0, "now": 0}
            covered = {"before": 0, "now": 0}
            for _ in range(runs):
                b, a = draw_scores(rng, ScoreCell(family, n))
                for name, module in (("before", old), ("now", stats)):
                    claims[name] += _verdict(module, b[:, 0], a[:, 0], "mean_score") in (
                        "better",
                        "worse",
                    )
                b, a = draw_scores(rng, ScoreCell(family, n, 0.04))
                d = (b - a)[:, 0]
                low, high, _ = old.adjusted_interval(d, np.ones(n), 1.0)
                covered["before"] += low <= 0.04 <= high
                low, high, _ = paired_interval(d, "mean_score")
                covered["now"] += low <= 0.04 <= high
            for name in worst:
                worst[name][0] = max(worst[name][0], claims[name] / runs)
                worst[name][1] = min(worst[name][1], covered[name] / runs)
                worst[name][2] += claims[name] / runs / (3 * len(SCORE_FAMILIES))
            cells.append((family, n, claims, covered))
    sparse = {"before": [], "now": []}
    for n in (8, 20, 50):
        rng = np.random.default_rng(n)
        covered = {"before": 0, "now": 0}
        for _ in range(runs):
            b, a = draw_scores(rng, ScoreCell("sparse", n, 0.04))
            d = (b - a)[:, 0]
            low, high, _ = old.adjusted_interval(d, np.ones(n), 1.0)
            covered["before"] += low <= 0.04 <= high
            low, high, _ = paired_interval(d, "mean_score")
            covered["now"] += low <= 0.04 <= high
        for name in sparse:
            sparse[name].append(_pct(covered[name] / runs))
    rng = np.random.default_rng(4)
    called = {"before": 0, "now": 0}
    widths: dict[str, list[float]] = {"before": [], "now": []}
    for _ in range(runs):
        b, a = draw_scores(rng, ScoreCell("low-spread", 30, 0.04))
        for name, module in (("before", old), ("now", stats)):
            called[name] += _verdict(module, b[:, 0], a[:, 0], "mean_score") == "better"
        d = (b - a)[:, 0]
        low, high, _ = old.adjusted_interval(d, np.ones(30), 1.0)
        widths["before"].append(high - low)
        low, high, _ = paired_interval(d, "mean_score")
        widths["now"].append(high - low)
    return [
        (
            "A/A: a difference claimed, mean over 12 cells (4 shapes × 8, 30, 400 cases)",
            _pct(worst["before"][2]),
            _pct(worst["now"][2]),
        ),
        (
            "A/A: a difference claimed, worst cell (a 5% test: chance puts one cell above)",
            _pct(worst["before"][0]),
            _pct(worst["now"][0]),
        ),
        (
            "95% interval covers a true 4-point difference, worst of 12 cells",
            _pct(worst["before"][1]),
            _pct(worst["now"][1]),
        ),
        (
            "uniform +4 points on 30 cases (low spread) called better",
            _pct(called["before"] / runs),
            _pct(called["now"] / runs),
        ),
        (
            "95% interval's width there, median",
            f"{np.median(widths['before']) * 100:.1f} pts",
            f"{np.median(widths['now']) * 100:.1f} pts",
        ),
        (
            "the limit: a 4-point effect carried by 10% of the cases, coverage at 8 / 20 / 50",
            " / ".join(sparse["before"]),
            " / ".join(sparse["now"]),
        ),
    ]


def _old_gate(old: ModuleType, before: np.ndarray, after: np.ndarray, arm: int) -> bool:
    c = old.compare_ratio(after[arm], before[arm], "latency", level=0.99)
    return bool(c.ci_low is not None and c.ci_low > 1.25)


def drift(old: ModuleType, runs: int) -> list[tuple[str, str, str]]:
    """False alarms of the +25% latency gate per arm-night, two arms beside the
    baseline; and a true slowdown of one arm, caught."""
    rows = []
    settings: list[tuple[str, Night, Night]] = [
        ("10% shared drift (log SD of the night's factor)", Night(drift=0.1), Night(drift=0.1)),
        ("20% shared drift", Night(drift=0.2), Night(drift=0.2)),
        ("20% shared drift, 30 cases", Night(n=30, drift=0.2), Night(n=30, drift=0.2)),
        ("a night ×1.45 slower for every arm", Night(drift=0.1), Night(factor=1.45)),
    ]
    for label, first, second in settings:
        rng = np.random.default_rng(len(label))
        alarms = {"before": 0, "now": 0}
        for _ in range(runs):
            before, after = nights_pair(rng, first, second)
            for arm in (1, 2):
                alarms["before"] += _old_gate(old, before, after, arm)
                alarms["now"] += latency_gate_fails(before, after, arm, 25, relative=True)
        rows.append(
            (
                f"drifted nights, {label}: false alarms per arm-night",
                _pct(alarms["before"] / (2 * runs)),
                _pct(alarms["now"] / (2 * runs)),
            )
        )
    for n in (30, 100):
        rng = np.random.default_rng(n)
        caught = {"before": 0, "now": 0}
        for _ in range(runs):
            before, after = nights_pair(
                rng, Night(n=n, drift=0.1), Night(n=n, drift=0.1, slowdown=1.5)
            )
            caught["before"] += _old_gate(old, before, after, 1)
            caught["now"] += latency_gate_fails(before, after, 1, 25, relative=True)
        rows.append(
            (
                f"an arm ×1.5 slower on {n} cases (10% drift): caught",
                _pct(caught["before"] / runs),
                _pct(caught["now"] / runs),
            )
        )
    return rows


def _drop_caught(
    rng: np.random.Generator, cases: int, drop: float, threshold: str | float, flips: float
) -> bool:
    u = rng.random(cases)
    d = np.where(u < flips / 2, 1.0, np.where(u < flips + drop, -1.0, 0.0))
    drops = {
        arm: stats.compare_paired(
            d if arm == "a" else np.zeros(cases), np.zeros(cases), "pass_rate", level=0.99
        )
        for arm in ("a", "b")
    }
    c = stats.compare_arms(drops, alpha=0.01, power=False)["a"]
    assert c.ci_high is not None
    return c.verdict == "worse" if threshold == "significant" else c.ci_high < -float(threshold)


def gate_power(runs: int) -> list[tuple[str, str, str]]:
    """What validate says each gate catches (80% power) and how often the gate's own
    rule fires at exactly that; and the issue's examples. Two arms, temperature > 0."""
    rows = []
    for cases in (30, 100, 400):
        for threshold in ("significant", 0.05):
            gates = Gates(score_drop=threshold)  # type: ignore[arg-type]
            [catch] = a_priori(gates, cases, 2, 1, False)
            if catch.detectable is None:
                rows.append((f"score_drop {threshold}, {cases} cases: catches", "–", "nothing"))
                continue
            rng = np.random.default_rng(cases)
            hit = sum(
                _drop_caught(rng, cases, catch.detectable, threshold, 0.2) for _ in range(runs)
            )
            rows.append(
                (
                    f"score_drop {threshold}, {cases} cases: says it catches "
                    f"{catch.detectable * 100:.0f} pts; fires at that drop",
                    "–",
                    _pct(hit / runs),
                )
            )
        [catch] = a_priori(Gates(latency_p50_increase_pct=25), cases, 3, 1, False)
        assert catch.detectable is not None
        rng = np.random.default_rng(cases + 1)
        hit = 0
        for _ in range(runs):
            before, after = nights_pair(
                rng,
                Night(n=cases, noise=0.3),
                Night(n=cases, noise=0.3, slowdown=catch.detectable),
            )
            hit += latency_gate_fails(before, after, 1, 25, relative=True)
        rows.append(
            (
                f"latency +25%, {cases} cases: says it catches ×{catch.detectable:.2f}; "
                "fires at that slowdown",
                "–",
                _pct(hit / runs),
            )
        )
    rng = np.random.default_rng(7)
    ten = sum(_drop_caught(rng, 30, 0.10, "significant", 0.2) for _ in range(runs))
    rows.append(("a true 10-point drop on 30 cases: score_drop fires", "–", _pct(ten / runs)))
    return rows


def _median_of_3(rng: np.random.Generator, length: np.ndarray, scale: float) -> np.ndarray:
    n = length.shape[0]
    calls = scale * length * rng.lognormal(0, 0.3, (n, 3))
    calls *= np.where(rng.random((n, 3)) < 0.05, rng.uniform(3, 6, (n, 3)), 1)
    return np.median(calls, axis=1)


def small_n(old: ModuleType, runs: int) -> list[tuple[str, str, str]]:
    """Latency ratios from 2-10 cases: the 95% interval's coverage (log-normal cases,
    medians of 3 calls, 5% slow outliers), and "no difference" on a true ×1.15."""
    rows = []
    for n in (2, 3, 5, 10):
        rng = np.random.default_rng(n)
        covered = {"before": 0, "now": 0}
        no_diff = {"before": 0, "now": 0}
        for _ in range(runs):
            length = rng.lognormal(6, 0.8, (n, 1))
            arm, base = _median_of_3(rng, length, 1.2), _median_of_3(rng, length, 1.0)
            c = old.compare_ratio(arm, base, "latency")
            if c.ci_low is not None:
                covered["before"] += c.ci_low <= 1.2 <= c.ci_high
            low, high = log_t_interval(np.log(arm / base))
            covered["now"] += low <= math.log(1.2) <= high
            arm, base = _median_of_3(rng, length, 1.15), _median_of_3(rng, length, 1.0)
            no_diff["before"] += (
                old.compare_arms({"b": old.compare_ratio(arm, base, "latency")})["b"].verdict
                == "no_difference"
            )
            no_diff["now"] += (
                stats.compare_arms({"b": stats.compare_ratio(arm, base, "latency")}, power=False)[
                    "b"
                ].verdict
                == "no_difference"
            )
        rows.append(
            (
                f"ratio from {n} cases: 95% interval covers the true ×1.2",
                _pct(covered["before"] / runs),
                _pct(covered["now"] / runs),
            )
        )
        rows.append(
            (
                f"ratio from {n} cases: 'no difference' on a true ×1.15",
                _pct(no_diff["before"] / runs),
                _pct(no_diff["now"] / runs),
            )
        )
    two = [1.02, 1.05]
    verdicts = []
    for module in (old, stats):
        c = module.compare_ratio(np.array(two) * 100, np.array([100.0, 100.0]), "latency")
        kw = {"power": False} if module is stats else {}
        verdicts.append(str(module.compare_arms({"b": c}, **kw)["b"].verdict).replace("_", " "))
    rows.append(("two cases at ×1.02 and ×1.05: verdict", verdicts[0], verdicts[1]))
    return rows


SECTIONS: list[tuple[str, Callable[..., list[tuple[str, str, str]]], bool]] = [
    ("Continuous scores with a small spread", scores, True),
    ("Nights with drift shared by every arm (latency gate +25%)", drift, True),
    ("What the gates can catch (80% power, two arms, temperature > 0)", gate_power, False),
    ("Latency and cost ratios from a handful of cases", small_n, True),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=300, help="experiments (nights) per cell")
    parser.add_argument("--old", default=BEFORE, help="the git ref whose rules are 'before'")
    args = parser.parse_args()
    old = load_old(args.old)
    started = time.perf_counter()
    print(f"{args.runs} simulated experiments or nights per figure; before = {args.old}")
    for title, section, uses_old in SECTIONS:
        print(f"\n| {title} | before | now |\n|---|--:|--:|")
        rows = section(old, args.runs) if uses_old else section(args.runs)
        for label, before, now in rows:
            print(f"| {label} | {before} | {now} |")
        sys.stdout.flush()
    print(f"\n{time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
