"""Verdict rules by simulation, before and after: one Markdown table over the cells of
tests/simulation.py (A/A false claims, interval coverage of a 10-point effect,
``no_difference`` on that effect, per-arm interval coverage) plus the power on a
20-point effect over 100 cases.

``--old REF`` also evaluates the rule of an earlier commit's report/stats.py (which
paired (case, repeat) rows and used Wilson intervals over calls), on the same draws.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from abharness.report.stats import mean_ci

from ..simulation import CELLS, Cell, draw, toward_middle, verdict

Rule = Callable[[np.ndarray, np.ndarray, str], tuple[str, float, float]]


def new_rule(arm: np.ndarray, base: np.ndarray, metric: str) -> tuple[str, float, float]:
    c = verdict(arm, base, metric)
    assert c.ci_low is not None and c.ci_high is not None
    return c.verdict, c.ci_low, c.ci_high


def new_arm_ci(calls: np.ndarray) -> tuple[float, float]:
    low, high = mean_ci(calls.mean(axis=1), 0.0, 1.0)
    assert low is not None and high is not None
    return low, high


def load_old(ref: str) -> ModuleType:
    root = Path(__file__).resolve().parents[2]
    source = subprocess.run(
        ["git", "show", f"{ref}:src/abharness/report/stats.py"],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    path = Path(tempfile.mkdtemp()) / "old_stats.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("old_stats", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["old_stats"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def old_rules(old: ModuleType) -> tuple[Rule, Callable[[np.ndarray], tuple[float, float]]]:
    def rule(arm: np.ndarray, base: np.ndarray, metric: str) -> tuple[str, float, float]:
        c = old.compare_arms({"b": (list(arm.ravel()), list(base.ravel()))}, metric)["b"]
        return c.verdict, c.ci_low, c.ci_high

    def arm_ci(calls: np.ndarray) -> tuple[float, float]:
        return old.wilson(int(calls.sum()), calls.size)  # type: ignore[no-any-return]

    return rule, arm_ci


def evaluate(cell: Cell, rules: dict[str, tuple[Rule, Any]], runs: int) -> dict[str, list[float]]:
    """Per rule: A/A claims, coverage, no_difference on 10 points, per-arm coverage."""
    metric = "pass_rate" if cell.kind == "pass" else "mean_score"
    out = {name: [0.0, 0.0, 0.0, 0.0] for name in rules}
    rng = np.random.default_rng(int.from_bytes(str(cell).encode()[-8:], "little"))
    effect = toward_middle(cell, 0.10)
    for _ in range(runs):
        aa = draw(rng, cell)
        ab = draw(rng, effect)
        for name, (rule, arm_ci) in rules.items():
            v, _, _ = rule(*aa, metric)
            out[name][0] += v in ("better", "worse")
            v, low, high = rule(*ab, metric)
            out[name][1] += low <= effect.effect <= high
            out[name][2] += v == "no_difference"
            low, high = arm_ci(aa[1])
            out[name][3] += low <= cell.p <= high
    return {name: [x / runs for x in figures] for name, figures in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200, help="experiments per cell")
    parser.add_argument("--old", help="a git ref whose report/stats.py to compare with")
    args = parser.parse_args()
    rules: dict[str, tuple[Rule, Any]] = {"now": (new_rule, new_arm_ci)}
    if args.old:
        rules = {"before": old_rules(load_old(args.old)), **rules}
    head = " | ".join(
        f"{what} {name}"
        for what in ("A/A claims", "coverage", "no-diff on 10 pts", "arm coverage")
        for name in rules
    )
    print(f"| cell | {head} |")
    print("|---|" + "--:|" * (4 * len(rules)))
    worst: dict[str, list[float]] = {name: [0.0, 1.0, 0.0, 1.0] for name in rules}
    for cell in CELLS:
        if cell.kind == "score" and cell.repeats == 5 and cell.temperature0:
            continue  # same figures as one repeat: copies
        result = evaluate(cell, rules, args.runs)
        cols = []
        for i in range(4):
            cols += [f"{result[name][i] * 100:.1f}%" for name in rules]
        for name in rules:
            w, r = worst[name], result[name]
            worst[name] = [max(w[0], r[0]), min(w[1], r[1]), max(w[2], r[2]), min(w[3], r[3])]
        t = "t=0" if cell.temperature0 else "t>0"
        print(
            f"| {cell.kind} n={cell.n} p={cell.p} R={cell.repeats} {t} | " + " | ".join(cols) + " |"
        )
        sys.stdout.flush()
    cols = []
    for i in range(4):
        cols += [f"**{worst[name][i] * 100:.1f}%**" for name in rules]
    print("| worst cell | " + " | ".join(cols) + " |")
    print()
    print(
        "| 20-point effect, 100 cases, p 0.5 → 0.7 | "
        + " | ".join(f"called better ({n})" for n in rules)
        + " |"
    )
    print("|---|" + "--:|" * len(rules))
    for repeats, t0 in ((1, True), (5, True), (5, False)):
        cell = Cell(100, 0.5, repeats, t0, "pass", 0.20)
        rng = np.random.default_rng(4)
        draws = [draw(rng, cell) for _ in range(args.runs)]
        called = [
            np.mean([rule(a, b, "pass_rate")[0] == "better" for a, b in draws])
            for rule, _ in rules.values()
        ]
        t = "t=0" if t0 else "t>0"
        print(f"| R={repeats} {t} | " + " | ".join(f"{x * 100:.1f}%" for x in called) + " |")


if __name__ == "__main__":
    main()
