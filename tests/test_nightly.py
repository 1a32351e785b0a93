"""`abharness nightly`: runs against the loopback server, gates that do not cry wolf,
the index page, the lock, and a busy database.

The server answers each (model, case, night) correctly with a probability fixed per
case, drawn from a seeded hash, so a "clean night" is a fresh draw at temperature > 0
and the figures do not depend on request order.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from abharness.cli.main import cli
from abharness.report.compare import NIGHTLY_DEFAULT_GATES, RunData, compare, nightly_default_gates
from abharness.report.gate_power import a_priori
from abharness.report.stats import compare_arms, compare_paired, compare_ratio
from abharness.run import experiment, nightly
from abharness.run.experiment import run_experiment
from abharness.run.runner import RunStats
from abharness.spec.models import Gates
from abharness.store.db import MergeResult
from abharness.store.queries import Results

from .conftest import write
from .fake_server import FakeServer, prompt_text
from .simulation import Night, latency_gate_fails, nights_pair


def _u(*key: object) -> float:
    digest = hashlib.sha256(repr(key).encode()).digest()
    return int.from_bytes(digest[:8], "little") / 2**64


class Nights:
    """Per case a pass probability q (arcsine-distributed, mean 0.5: most cases are
    easy or hard, some are coin flips); `night` changes the draw; `drop` scales q so
    the mean pass rate falls by exactly that much."""

    def __init__(self) -> None:
        self.night = 0
        self.drop: dict[str, float] = {}
        self.delay_s = 0.0  # per call, times `slower` (the night) and the model's own factor
        self.slower = 1.0
        self.model_slower: dict[str, float] = {}

    def __call__(self, body: dict[str, Any]) -> str:
        model, text = body["model"], prompt_text(body)
        case = text.rsplit("case ", 1)[1].split("?")[0].strip()
        if self.delay_s:
            time.sleep(self.delay_s * self.slower * self.model_slower.get(model, 1.0))
        q = math.sin(math.pi / 2 * _u("difficulty", case)) ** 2
        p = q * (1 - self.drop.get(model, 0.0) / 0.5)
        return f"answer-{case}" if _u(self.night, model, case) < p else "no idea"


@pytest.fixture
def nights() -> Nights:
    return Nights()


@pytest.fixture
def server(nights: Nights) -> Iterator[FakeServer]:
    with FakeServer(nights, latency_s=0.005) as s:
        yield s


def nightly_folder(tmp_path: Path, server: FakeServer, monkeypatch, n_cases: int = 60) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FAKE_KEY", "k")
    write(
        tmp_path / "prompts/q/v1.j2", "{% block prompt %}Answer for case {{ id }}?{% endblock %}\n"
    )
    cases = "\n".join(f"  - {{id: c{i:03d}}}" for i in range(n_cases))
    write(
        tmp_path / "nightly/watch.yaml",
        f"""
name: watch
prompts_dir: ../prompts
prompt: q@1
baseline: arm-a
defaults: {{temperature: 0.8, max_tokens: 8}}
cases:
{cases}
providers:
  fake: {{type: openai, base_url: "{server.url}/v1", api_key_env: FAKE_KEY, concurrency: 16,
          rpm: 600000, price: {{input_per_mtok: 1000, output_per_mtok: 1000}}}}
arms:
  - {{id: arm-a, provider: fake, model: model-a}}
  - {{id: arm-b, provider: fake, model: model-b}}
scorers:
  - {{type: contains, expected: "answer-{{{{ case.id }}}}"}}
gates: {{score_drop: significant, latency_p50_increase_pct: 25, cost_increase_pct: 10}}
""",
    )
    return tmp_path / "nightly"


def run_nightly(folder: Path, db: Path) -> Any:
    return CliRunner().invoke(
        cli,
        ["nightly", str(folder), "--db", str(db), "--reports-dir", str(folder.parent / "reports")],
    )


@pytest.mark.slow
def test_two_clean_nights_pass_and_a_worse_arm_fails_naming_the_gate(
    tmp_path, server, nights, monkeypatch
) -> None:
    folder = nightly_folder(tmp_path, server, monkeypatch)
    db = tmp_path / "r.duckdb"
    first = run_nightly(folder, db)
    assert first.exit_code == 0, first.output
    assert "first night" in first.output
    nights.night = 1
    second = run_nightly(folder, db)
    assert second.exit_code == 0, second.output
    assert "no regression" in second.output
    pages = list((tmp_path / "reports/nightly").rglob("*.html"))
    assert len([p for p in pages if p.name != "index.html"]) == 2  # both nights' pages
    index = next(p for p in pages if p.name == "index.html").read_text()
    assert "score_drop" in index and 'href="../../watch/' in index and "<svg" in index
    assert "http" not in index.replace('xmlns="http://www.w3.org/2000/svg"', "")
    nights.night, nights.drop = 2, {"model-b": 0.3}
    third = run_nightly(folder, db)
    assert third.exit_code == 3, third.output
    last = third.output.strip().splitlines()[-3:]
    fail = next(line for line in last if line.startswith("FAIL"))
    assert "watch arm-b score_drop significant" in fail and "pts (99% CI" in fail
    assert not any("arm-a score_drop" in line for line in last)
    with Results(db) as results:
        kinds = results.query("SELECT DISTINCT kind FROM runs")[1]
        trend = results.query("SELECT count(*) FROM nightly_trend")[1]
    assert kinds == [("nightly",)] and trend == [(6,)]


@pytest.mark.slow
def test_a_month_of_clean_nights_raises_at_most_one_false_alarm(
    tmp_path, server, nights, monkeypatch
) -> None:
    """30 clean nights at temperature > 0 through the real run path, each compared
    with the night before under the default gates; then a true 15-point drop."""
    folder = nightly_folder(tmp_path, server, monkeypatch, n_cases=200)
    spec, db = folder / "watch.yaml", tmp_path / "r.duckdb"
    previous = None
    alarms = []
    for night in range(31):
        nights.night = night
        out = run_experiment(spec, db=db, use_cache=False, kind="nightly")
        with Results(db) as results:
            current = RunData.read(results, out.run_id)
        if previous is not None:
            alarms += compare(previous, current, NIGHTLY_DEFAULT_GATES).failed
        previous = current
    print(f"30 clean nights: {len(alarms)} false alarm(s)")  # quoted in the README (-s)
    assert len(alarms) <= 1, [(g.arm_id, g.gate, g.value) for g in alarms]
    nights.night, nights.drop = 99, {"model-a": 0.15}
    out = run_experiment(spec, db=db, use_cache=False, kind="nightly")
    with Results(db) as results:
        dropped = compare(previous, RunData.read(results, out.run_id), NIGHTLY_DEFAULT_GATES)
    assert [(g.arm_id, g.gate) for g in dropped.failed] == [("arm-a", "score_drop")]


@pytest.mark.slow
def test_a_slower_night_through_the_real_run_path(tmp_path, server, nights, monkeypatch) -> None:
    """Three nights through `run_experiment` and the database: on the second every call
    waits 4× longer in the server, for both arms (a busy machine), which passes the
    default, relative latency gate and fails the absolute one; on the third only
    arm-b's calls do, and its relative gate fails. The server's wait (0.2 s) dwarfs what
    a loaded test machine adds on the client's side."""
    folder = nightly_folder(tmp_path, server, monkeypatch, n_cases=24)
    spec, db = folder / "watch.yaml", tmp_path / "r.duckdb"
    gates = Gates(latency_p50_increase_pct=25, latency_p50_abs_increase_pct=25)
    nights.delay_s = 0.2
    runs = []
    for slower, model_slower in ((1.0, {}), (4.0, {}), (1.0, {"model-b": 4.0})):
        nights.night += 1
        nights.slower, nights.model_slower = slower, model_slower
        out = run_experiment(spec, db=db, use_cache=False, kind="nightly")
        with Results(db) as results:
            runs.append(RunData.read(results, out.run_id))
    busy = compare(runs[0], runs[1], gates)
    values = [(g.arm_id, g.gate, g.value) for g in busy.gates]
    assert _gates(busy, "latency_p50_increase_pct") == {"arm-b": "pass"}, values
    assert _gates(busy, "latency_p50_abs_increase_pct") == {
        "arm-a": "FAIL",
        "arm-b": "FAIL",
    }, values
    slower_b = compare(runs[0], runs[2], gates)
    values = [(g.arm_id, g.gate, g.value) for g in slower_b.gates]
    assert _gates(slower_b, "latency_p50_increase_pct") == {"arm-b": "FAIL"}, values


@pytest.mark.slow
def test_default_gates_false_alarm_rate_per_night_by_simulation() -> None:
    """1,000 simulated clean nights of 100 cases (temperature > 0: every call a fresh
    draw; latency log-normal per case and call; cost from output tokens): the default
    gates together fail at most 1% of nights."""
    rng = np.random.default_rng(10)
    nights = 1000
    alarms = {"score_drop": 0, "latency": 0, "cost": 0, "any": 0}
    for _ in range(nights):
        q = rng.beta(1, 1, 100)
        before, after = (rng.random(100) < q).astype(float), (rng.random(100) < q).astype(float)
        drop = compare_arms(
            {"a": compare_paired(after, before, "pass_rate", level=0.99)}, alpha=0.01, power=False
        )["a"]
        length = rng.lognormal(6, 0.5, 100)
        lat = compare_ratio(
            length * rng.lognormal(0, 0.2, 100),
            length * rng.lognormal(0, 0.2, 100),
            "latency",
            level=0.99,
        )
        cost = compare_ratio(
            50 + 10 * after + rng.integers(0, 5, 100),
            50 + 10 * before + rng.integers(0, 5, 100),
            "cost",
            level=0.99,
        )
        fired = {
            "score_drop": drop.verdict == "worse",
            "latency": lat.ci_low is not None and lat.ci_low > 1.25,
            "cost": cost.ci_low is not None and cost.ci_low > 1.10,
        }
        for k, v in fired.items():
            alarms[k] += v
        alarms["any"] += any(fired.values())
    print(f"{nights} simulated clean nights: {alarms}")  # quoted in the README (-s)
    assert alarms["any"] / nights <= 0.01, alarms


def test_a_second_nightly_exits_at_once(tmp_path, server, monkeypatch) -> None:
    folder = nightly_folder(tmp_path, server, monkeypatch, n_cases=3)
    (tmp_path / "results").mkdir()
    lock = (tmp_path / "results/nightly.lock").open("a+")
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    lock.write("pid 4242, started earlier")
    lock.flush()
    try:
        result = CliRunner().invoke(cli, ["nightly", str(folder)])
    finally:
        lock.close()
    assert result.exit_code == 1 and "another nightly is running (pid 4242" in result.output
    assert server.log == []


@pytest.mark.slow
def test_an_analyst_holding_the_database_does_not_stop_the_nightly(
    tmp_path, server, nights, monkeypatch
) -> None:
    folder = nightly_folder(tmp_path, server, monkeypatch, n_cases=10)
    db = tmp_path / "r.duckdb"
    assert run_nightly(folder, db).exit_code == 0
    monkeypatch.setattr(nightly, "MERGE_ATTEMPTS", 2)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import duckdb, time; c = duckdb.connect({str(db)!r}); print('open', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "open"
        nights.night = 1
        result = run_nightly(folder, db)
    finally:
        holder.kill()
        holder.wait()
    assert result.exit_code == 0, result.output
    assert "NOT EVALUATED" in result.output and "abharness merge" in result.output
    assert (tmp_path / "reports/nightly").exists()
    merged = CliRunner().invoke(cli, ["merge", "--db", str(db)])
    assert merged.exit_code == 0 and "merged" in merged.output
    with Results(db) as results:
        assert results.query("SELECT count(*) FROM runs WHERE kind = 'nightly'")[1] == [(2,)]


def test_an_invalid_spec_is_reported_and_the_others_still_run(
    tmp_path, server, monkeypatch
) -> None:
    folder = nightly_folder(tmp_path, server, monkeypatch, n_cases=3)
    write(folder / "broken.yaml", "name: broken\narms: []\n")
    result = run_nightly(folder, tmp_path / "r.duckdb")
    assert result.exit_code == 1, result.output
    assert "broken" in result.output and "invalid spec" in result.output
    assert any("watch" in p.name or "watch" in str(p) for p in (tmp_path / "reports").rglob("*.md"))


# -- gates that ignore a slow night -----------------------------------------------------


def run_data(run_id: str, latency: np.ndarray, arms: list[str], baseline: str | None) -> RunData:
    """A run as `compare` reads it: one call per arm and case, all passing, timed."""
    n = latency.shape[1]
    calls = pd.DataFrame(
        [
            {
                "arm_id": arm,
                "case_id": f"c{i:03d}",
                "repeat": 0,
                "status": "ok",
                "error_type": None,
                "cache_hit": False,
                "made": True,
                "latency_ms": float(latency[a, i]),
                "cost_usd": 0.001 * (1 + a),
                "passed": True,
                "score": 1.0,
            }
            for a, arm in enumerate(arms)
            for i in range(n)
        ]
    )
    spec = f"name: drift\nbaseline: {baseline}\n" if baseline else "name: drift\n"
    return RunData(run_id, "drift", spec, spec, arms, calls)


def _gates(result, gate: str) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {g.arm_id: g.status for g in result.gates if g.gate == gate}


def test_a_night_slower_for_every_arm_fails_only_the_absolute_gates() -> None:
    """Tonight the machine is ×1.45 slower for every arm (one of seven nights on a shared
    machine once failed all three arms so): the relative gates cancel it; the absolute
    gates, kept for single-arm specs, see it. An arm slower against the baseline arm
    fails the relative gate whatever the night."""
    rng = np.random.default_rng(1)
    arms = ["base", "b", "c"]
    before, after = nights_pair(rng, Night(n=40, noise=0.1), Night(n=40, noise=0.1, factor=1.45))
    gates = Gates(
        latency_p50_increase_pct=25,
        cost_increase_pct=10,
        latency_p50_abs_increase_pct=25,
        cost_abs_increase_pct=10,
    )
    result = compare(run_data("a", before, arms, "base"), run_data("b", after, arms, "base"), gates)
    assert _gates(result, "latency_p50_increase_pct") == {"b": "pass", "c": "pass"}
    assert _gates(result, "latency_p50_abs_increase_pct") == {
        "base": "FAIL",
        "b": "FAIL",
        "c": "FAIL",
    }
    assert _gates(result, "cost_increase_pct") == {"b": "pass", "c": "pass"}
    value = next(g.value for g in result.gates if g.gate == "latency_p50_increase_pct")
    assert value.startswith("×1.0") and "against base" in value
    _, slower = nights_pair(rng, Night(n=40, noise=0.1), Night(n=40, noise=0.1, slowdown=1.6))
    result = compare(
        run_data("a", before, arms, "base"), run_data("b", slower, arms, "base"), gates
    )
    assert _gates(result, "latency_p50_increase_pct") == {"b": "FAIL", "c": "pass"}


def test_a_single_arm_spec_has_only_absolute_latency_gates() -> None:
    before, after = nights_pair(np.random.default_rng(2), Night(n=20, arms=1), Night(n=20, arms=1))
    a, b = run_data("a", before, ["only"], "only"), run_data("b", after, ["only"], "only")
    result = compare(a, b, NIGHTLY_DEFAULT_GATES)
    relative = next(g for g in result.gates if g.gate == "latency_p50_increase_pct")
    assert relative.passed is None and "latency_p50_abs_increase_pct" in relative.value
    result = compare(a, b, nightly_default_gates(1))
    assert {g.gate: g.status for g in result.gates if "latency" in g.gate} == {
        "latency_p50_abs_increase_pct": "pass"
    }


@pytest.mark.slow
@pytest.mark.parametrize(
    "night", [Night(drift=0.10), Night(drift=0.20), Night(factor=1.2), Night(n=30, drift=0.20)]
)
def test_drift_shared_by_every_arm_raises_at_most_1_percent_false_alarms(night: Night) -> None:
    """500 pairs of clean nights, the candidate night drifted; two arms besides the
    baseline: the relative latency gate (+25%) fails at most 1% of the 1,000 arm-nights.
    The absolute gate, the old rule, fails a share of them that grows with the drift."""
    rng = np.random.default_rng(int(night.drift * 100) + night.n + int((night.factor or 0) * 10))
    relative = absolute = 0
    for _ in range(500):
        before, after = nights_pair(rng, Night(n=night.n, drift=night.drift), night)
        for arm in (1, 2):
            relative += latency_gate_fails(before, after, arm, 25, relative=True)
            absolute += latency_gate_fails(before, after, arm, 25, relative=False)
    print(f"{night}: relative {relative / 1000:.1%}, absolute {absolute / 1000:.1%}")
    assert relative / 1000 <= 0.01, relative
    if night.drift >= 0.2 or night.factor:
        assert absolute / 1000 > 0.02, absolute  # what the old gate did


# -- what each gate can catch ------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("cases", [30, 100])
def test_the_slowdown_validate_says_a_gate_catches_is_caught_80_percent_of_the_time(
    cases: int,
) -> None:
    """Simulated nights under validate's stated assumption (a call's latency varies by
    30% within its case), the candidate night drifted and arm 1 slower by exactly what
    `a_priori` says the relative +25% gate catches: caught in about 80% of 400 nights."""
    [catch] = a_priori(Gates(latency_p50_increase_pct=25), cases, 3, 1, False)
    assert catch.detectable is not None
    rng = np.random.default_rng(cases)
    caught = 0
    for _ in range(400):
        before, after = nights_pair(
            rng, Night(n=cases, noise=0.3), Night(n=cases, noise=0.3, slowdown=catch.detectable)
        )
        caught += latency_gate_fails(before, after, 1, 25, relative=True)
    print(f"{catch.gate} {catch.threshold}, {cases} cases: caught {caught / 400:.1%}")
    assert 0.72 <= caught / 400 <= 0.88, (catch.detectable, caught / 400)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("cases", "threshold"), [(60, "significant"), (200, "significant"), (200, 0.05)]
)
def test_the_drop_validate_says_a_gate_catches_is_caught_80_percent_of_the_time(
    cases: int, threshold: str | float
) -> None:
    """Clean nights flip 20% of cases at random (temperature > 0); the candidate night
    also loses exactly the drop `a_priori` quotes: the gate's own rule fails in about
    80% of 400 nights."""
    gates = Gates(score_drop=threshold)  # type: ignore[arg-type]
    [catch] = a_priori(gates, cases, 2, 1, False)
    assert catch.detectable is not None
    rng = np.random.default_rng(cases)
    caught = 0
    for _ in range(400):
        u = rng.random(cases)
        d = np.where(u < 0.1, 1.0, np.where(u < 0.2 + catch.detectable, -1.0, 0.0))
        drops = {
            arm: compare_paired(
                d if arm == "a" else np.zeros(cases), np.zeros(cases), "pass_rate", level=0.99
            )
            for arm in ("a", "b")
        }
        drop = compare_arms(drops, alpha=0.01, power=False)["a"]
        assert drop.ci_high is not None
        caught += drop.verdict == "worse" if threshold == "significant" else drop.ci_high < -0.05
    print(f"{catch.gate} {catch.threshold}, {cases} cases: caught {caught / 400:.1%}")
    assert 0.72 <= caught / 400 <= 0.88, (catch.detectable, caught / 400)


@pytest.mark.slow
def test_compare_and_the_nightly_page_say_what_each_gate_catches(
    tmp_path, server, nights, monkeypatch
) -> None:
    """20 cases: every gate states what it catches, and the page and `compare` warn that
    the spec is too small for its own thresholds."""
    folder = nightly_folder(tmp_path, server, monkeypatch, n_cases=20)
    db = tmp_path / "r.duckdb"
    validate = CliRunner().invoke(cli, ["validate", str(folder / "watch.yaml")])
    text = " ".join(validate.output.split())
    assert (
        "score_drop significant: a drop of" in text
        and "latency_p50_increase_pct +25%: a slowdown to ×" in text
    )
    assert "warning: score_drop significant is too small for its threshold: with 20 cases" in text
    assert run_nightly(folder, db).exit_code == 0
    nights.night = 1
    second = run_nightly(folder, db)
    assert second.exit_code == 0, second.output
    assert "catches (80% power)" in second.output and "too small for its threshold" in second.output
    index = next((tmp_path / "reports/nightly").rglob("index.html")).read_text()
    assert "catches (80% power)" in index and "or more" in index
    assert "warning: arm-" in index and "too small for its threshold" in index
    result = CliRunner().invoke(
        cli, ["compare", "previous", "last", "--db", str(db), "--format", "json"]
    )
    data = json.loads(result.output)
    assert all(g["detectable"] for g in data["gates"] if g["status"] != "not evaluated")
    assert data["warnings"]


def test_an_interrupted_run_ends_the_night_and_its_judge_hears_of_it(
    tmp_path, server, monkeypatch
) -> None:
    """`run.nightly` without the CLI: the judge is called around the run, the run's
    status is typed, and the specs after an interrupted run are not run."""
    folder = nightly_folder(tmp_path, server, monkeypatch, n_cases=3)
    write(folder / "zz.yaml", (folder / "watch.yaml").read_text().replace("watch", "zz"))

    def interrupted(spec: Path, options: experiment.RunOptions) -> experiment.Outcome:
        assert options.kind == "nightly" and not options.use_cache
        merged = MergeResult(True, {})
        return experiment.Outcome(
            "r1", tmp_path / "r.duckdb", "interrupted", RunStats(), merged, 0, 0, 0, 0.1
        )

    monkeypatch.setattr(experiment, "run_experiment", interrupted)
    heard: list[tuple[str, str | None]] = []

    class Judge:
        def before(self, night: nightly.SpecNight) -> None:
            heard.append(("before", night.experiment))

        def after(self, night: nightly.SpecNight) -> nightly.Status | None:
            heard.append(("after", night.experiment))
            return None

    with nightly.start_night(tmp_path / "r.duckdb", batch=False, batch_deadline_s=60) as night:
        (watch,) = night.run(nightly.nightly_specs(folder), Judge())
    assert heard == [("before", "watch"), ("after", "watch")]
    assert watch.statuses == {nightly.Status.INTERRUPTED}
    assert watch.problems == [
        f"interrupted: resume with `abharness run --resume r1 --db {tmp_path / 'r.duckdb'}`"
    ]


def test_every_status_of_a_night_has_an_exit_code() -> None:
    from abharness.cli.nightly import EXIT_CODES, PRECEDENCE

    assert set(EXIT_CODES) == set(nightly.Status)
    assert set(EXIT_CODES.values()) - {0} <= set(PRECEDENCE)
