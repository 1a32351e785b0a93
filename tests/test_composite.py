"""Composite arms against the loopback fake (SPEC §14): a panel that fans out and has a
synthesizer answer, and a route that falls back; rows, costs, resume and the report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner

from abharness.cli.main import cli
from abharness.run.experiment import run_experiment

from .conftest import dict_rows, write
from .fake_server import FakeServer, Fault, Logged, prompt_text

REPO = Path(__file__).resolve().parents[1]
PRICE = "price: {input_per_mtok: 1000, output_per_mtok: 1000}"  # $0.001 a token


def answers(body: dict) -> str:
    """Members disagree (each model its own answer); the synthesizer says which it read."""
    text = prompt_text(body)
    if "Candidates:" in text:
        return "SYNTH " + text.split("Candidates:")[1].strip().split("\n")[0]
    return {"m-a": "Paris", "m-b": "Lyon", "m-c": "Paris", "m-single": "Paris"}.get(
        body["model"], "?"
    )


@pytest.fixture(autouse=True)
def key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_KEY", "k")


def project(root: Path, url: str, arms: str, cases: int = 6, extra: str = "") -> Path:
    write(root / "prompts/q/v1.j2", "{% block user %}Capital of {{ country }}?{% endblock %}\n")
    write(
        root / "prompts/synth/v1.j2",
        "{% block user %}Question: capital of {{ country }}?\nCandidates: "
        "{% for m in members %}{{ m.model }}={{ m.text if m.ok else '(failed)' }} {% endfor %}"
        "{% endblock %}\n",
    )
    rows = "\n".join(f"  - {{id: c{i}, country: Land{i}}}" for i in range(cases))
    return write(
        root / "spec.yaml",
        f"""
name: composites
prompts_dir: prompts
prompt: q@1
baseline: single
defaults: {{temperature: 0, max_tokens: 8}}
providers:
  gw: {{type: openai, base_url: "{url}/v1", api_key_env: FAKE_KEY, {PRICE}}}
  dead: {{type: openai, base_url: "http://127.0.0.1:9/v1", api_key_env: FAKE_KEY, {PRICE}}}
arms:
  - {{id: single, provider: gw, model: m-single}}
{arms}
cases:
{rows}
scorers:
  - {{type: contains, expected: "Paris"}}
max_error_rate: 1
{extra}
""",
    )


PANEL = """
  - id: panel
    panel:
      members:
        - {provider: gw, model: m-a}
        - {provider: gw, model: m-b}
        - {provider: gw, model: m-c}
      synthesizer: {provider: gw, model: m-s, prompt: synth@1}
"""
ROUTE = """
  - id: robust
    route:
      - {provider: dead, model: m-x}
      - {provider: gw, model: m-c}
"""


def rows(db: Path, sql: str = "SELECT * FROM calls ORDER BY call_id") -> list[dict]:
    return dict_rows(db, sql)


@pytest.mark.slow
def test_a_panel_fans_out_then_the_synthesizer_answers_and_costs_add_up(tmp_path: Path) -> None:
    with FakeServer(answers) as server:
        out = run_experiment(project(tmp_path, server.url, PANEL), db=tmp_path / "r.duckdb")
    assert out.status == "completed" and out.errors == 0
    calls = rows(tmp_path / "r.duckdb")
    panel = [c for c in calls if c["arm_id"] == "panel"]
    assert len(panel) == 6
    by_parent: dict[str, list[dict]] = {}
    for c in calls:
        if c["parent_call_id"]:
            by_parent.setdefault(c["parent_call_id"], []).append(c)
    for p in panel:
        parts = by_parent[p["call_id"]]
        roles = Counter(c["role"] for c in parts)
        assert roles == {"member": 3, "synthesizer": 1} and p["role"] == "arm"
        synth = next(c for c in parts if c["role"] == "synthesizer")
        # the members disagreed; the panel's answer is the synthesizer's, which read them
        assert p["response_text"] == synth["response_text"]
        assert p["response_text"].startswith("SYNTH m-a=Paris m-b=Lyon m-c=Paris")
        assert p["cost_usd"] == pytest.approx(sum(c["cost_usd"] for c in parts))
        assert p["input_tokens"] == sum(c["input_tokens"] for c in parts)
        assert p["attempts"] == sum(c["attempts"] for c in parts) == 4
        assert p["latency_ms"] >= max(c["latency_ms"] for c in parts)
    members = [c for c in calls if c["role"] == "member"]
    scored = {r["call_id"] for r in rows(tmp_path / "r.duckdb", "SELECT * FROM scores")}
    assert {m["call_id"] for m in members} <= scored  # members are scored like arms
    view = rows(tmp_path / "r.duckdb", "SELECT * FROM composite_calls")
    assert len(view) == 24 and {v["composite_arm_id"] for v in view} == {"panel"}
    summary = rows(tmp_path / "r.duckdb", "SELECT arm_id FROM arm_summary ORDER BY 1")
    assert [r["arm_id"] for r in summary] == ["panel", "single"]  # parts are not arms


@pytest.mark.slow
def test_too_few_members_fail_the_panel_naming_them_and_skip_the_synthesizer(
    tmp_path: Path,
) -> None:
    def faults(entry: Logged) -> Fault | None:
        return Fault(status=400) if entry.body["model"] in ("m-a", "m-b") else None

    with FakeServer(answers) as server:
        server.fault_fn = faults
        spec = project(
            tmp_path, server.url, PANEL.replace("members:", "min_members: 2\n      members:")
        )
        run_experiment(spec, db=tmp_path / "r.duckdb")
        asked = Counter(e.body["model"] for e in server.log)
    assert asked["m-s"] == 0  # no synthesizer when the panel has failed
    panel = [c for c in rows(tmp_path / "r.duckdb") if c["arm_id"] == "panel"]
    assert all(p["status"] == "error" for p in panel)
    message = panel[0]["error_message"]
    assert message.startswith("1 of 3 members answered, the panel needs 2: panel.member1 (gw:m-a)")
    assert "panel.member2 (gw:m-b): bad_request" in message


@pytest.mark.slow
def test_a_route_falls_back_for_every_case_and_says_who_served(tmp_path: Path) -> None:
    with FakeServer(answers) as server:
        spec = project(tmp_path, server.url, ROUTE, cases=12)
        out = run_experiment(spec, db=tmp_path / "r.duckdb")
    assert out.errors == 0
    robust = [c for c in rows(tmp_path / "r.duckdb") if c["arm_id"] == "robust"]
    assert len(robust) == 12 and all(c["status"] == "ok" for c in robust)
    assert {c["served_by"] for c in robust} == {"gw:m-c"}
    assert {c["response_text"] for c in robust} == {"Paris"}
    for c in robust:
        errors = json.loads(c["attempt_errors_json"] or "[]")
        routed = [e for e in errors if "route" in e]
        assert routed and routed[0]["route"] == "dead:m-x"
        assert routed[0]["error_type"] == "connection" or "circuit" in routed[0]["message"]
        assert c["attempts"] <= 2  # a refused connection moves on at once, not after 5 tries
    # once the dead route's circuit is open, later calls skip it at once
    skipped = [c for c in robust if "circuit open" in (c["attempt_errors_json"] or "")]
    assert skipped


@pytest.mark.slow
def test_a_route_does_not_fall_back_on_what_it_was_not_told_to(tmp_path: Path) -> None:
    def faults(entry: Logged) -> Fault | None:
        return Fault(status=400) if entry.body["model"] == "m-a" else None

    route = ROUTE.replace("dead, model: m-x", "gw, model: m-a")
    with FakeServer(answers) as server:
        server.fault_fn = faults
        run_experiment(project(tmp_path, server.url, route), db=tmp_path / "r.duckdb")
        asked = Counter(e.body["model"] for e in server.log)
    robust = [c for c in rows(tmp_path / "r.duckdb") if c["arm_id"] == "robust"]
    assert all(c["error_type"] == "bad_request" and c["served_by"] is None for c in robust)
    assert asked["m-c"] == 0  # a 400 is not in fallback_on: the backup was never asked


@pytest.mark.slow
def test_the_panels_cost_cap_holds_its_whole_worst_case_before_any_part(tmp_path: Path) -> None:
    with FakeServer(answers) as server:
        spec = project(tmp_path, server.url, PANEL, cases=20, extra="max_cost_usd: 0.5")
        out = run_experiment(spec, db=tmp_path / "r.duckdb")
    assert out.status == "budget_exhausted"
    calls = rows(tmp_path / "r.duckdb")
    assert (
        sum(c["cost_usd"] or 0 for c in calls if c["role"] != "arm" or c["arm_id"] == "single")
        <= 0.5
    )
    panels = [c for c in calls if c["arm_id"] == "panel"]
    made = {c["call_id"] for c in panels if c["status"] == "ok"}
    for c in calls:  # no panel was left half made: its parts all exist, or none do
        if c["parent_call_id"] and c["role"] == "member":
            assert c["parent_call_id"] in made


@pytest.mark.slow
def test_a_panel_killed_mid_run_resumes_without_paying_for_its_parts_again(tmp_path: Path) -> None:
    with FakeServer(answers, latency_s=0.02) as server:
        spec = project(tmp_path, server.url, PANEL, cases=60)
        db = tmp_path / "r.duckdb"
        proc = subprocess.Popen(
            [sys.executable, "-m", "abharness", "run", str(spec), "--db", str(db), "--no-cache"],
            cwd=tmp_path,
            env={**os.environ, "PYTHONPATH": str(REPO / "src")},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while len(server.log) < 120 and time.monotonic() < deadline:
            time.sleep(0.01)
        proc.kill()
        proc.wait()
        out = run_experiment(None, db=db, resume="last", use_cache=False)
        assert out.status == "completed"
        answered = Counter(
            (e.body["model"], prompt_text(e.body)) for e in server.log if e.status == 200
        )
    twice = sum(n - 1 for n in answered.values())
    assert twice <= 16  # only what was on the wire (the endpoint's concurrency)
    calls = rows(db)
    assert sum(c["arm_id"] == "panel" for c in calls) == 60
    assert sum(c["role"] == "member" for c in calls) == 180
    assert len({c["call_id"] for c in calls}) == len(calls)


def test_validate_shows_each_composites_parts(tmp_path: Path) -> None:
    with FakeServer(answers) as server:
        spec = project(tmp_path, server.url, PANEL + ROUTE)
        result = CliRunner().invoke(
            cli, ["validate", str(spec), "--db", str(tmp_path / "r.duckdb")]
        )
    text = " ".join(result.output.split())
    assert result.exit_code == 0, result.output
    assert "panel of gw:m-a, gw:m-b, gw:m-c (at least 2 must answer), synthesized by gw:m-s" in text
    assert "dead:m-x → gw:m-c" in text
