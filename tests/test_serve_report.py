"""The online report's data (SPEC §16): per arm, what each subject's requests measured,
in arrival order, counted for the arm assigned (intention to treat)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from abharness.cli.main import cli
from abharness.report.build import build_report
from abharness.report.online import online_comparisons, online_frames
from abharness.report.stats import Comparison
from abharness.store.queries import Results

from .fake_server import FakeServer
from .test_serve import CHAT, KEY, Served, serve_spec


@pytest.fixture(autouse=True)
def env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_KEY", "upstream-key")
    monkeypatch.setenv("SERVE_KEYS", KEY)


@pytest.mark.slow
def test_frames_have_one_row_per_request_by_subject_in_arrival_order(tmp_path: Path) -> None:
    with FakeServer() as upstream, FakeServer() as side:
        dead = side.url
        side.stop()
        spec = serve_spec(
            tmp_path,
            upstream.url,
            "  split: {control: 1, candidate: 1}\n  fallback: [control]\n  keys_env: SERVE_KEYS\n",
            shadow_url=dead,  # candidate's endpoint is down: its requests fall back
        )
        s = Served(spec, tmp_path / "ab.duckdb")
        with s.http:
            client = s.openai()
            served_by: dict[str, str] = {}
            for i in range(12):
                subject = f"s{i % 6}"
                raw = client.chat.completions.with_raw_response.create(
                    model="live", messages=CHAT, user=subject
                )
                reply = raw.parse()
                served_by[subject] = s.session.assigner.arm_for(subject)
                auth = {"Authorization": f"Bearer {KEY}"}
                s.http.post("/v1/feedback", json={"id": reply.id, "score": i / 12}, headers=auth)
    assigned = {arm for arm in served_by.values()}
    assert assigned == {"control", "candidate"}, "the six subjects should reach both arms"
    with Results(s.db) as db:
        frames = online_frames(db, s.session.run_id)
    hashes = {subject: s.session.subjects.hash(subject) for subject in served_by}
    for arm in ("control", "candidate"):
        mine = {hashes[x] for x, a in served_by.items() if a == arm}
        feedback = frames[arm]["feedback"]
        assert list(feedback.columns) == ["subject", "value", "at"]
        assert set(feedback["subject"]) == mine and len(feedback) == 2 * len(mine)
        assert feedback["at"].is_monotonic_increasing
        # every request answered "Lima" (the candidate's through the fallback): all pass
        assert frames[arm]["pass_rate"]["value"].tolist() == [1.0] * len(feedback)
    # the candidate never answered: no latency of its own, the fallback's cost counted
    assert frames["candidate"]["latency"].empty
    assert (frames["candidate"]["cost"]["value"] > 0).all()
    assert frames["candidate"]["feedback"]["value"].sum() + frames["control"]["feedback"][
        "value"
    ].sum() == pytest.approx(sum(i / 12 for i in range(12)))
    with Results(s.db) as db:
        traffic = {a.arm_id: a for a in build_report(db, s.session.run_id).online_arms}
    n_candidate = 2 * sum(1 for a in served_by.values() if a == "candidate")
    candidate = traffic["candidate"]
    assert (candidate.requests, candidate.failed, candidate.answered_by_fallback) == (
        n_candidate,
        n_candidate,
        n_candidate,
    )
    assert candidate.subjects == n_candidate // 2 and candidate.feedback == n_candidate
    assert traffic["control"].failed == 0 and traffic["control"].requests == 12 - n_candidate


def test_the_report_compares_each_arm_with_the_control_by_subject(tmp_path: Path) -> None:
    with FakeServer() as upstream:
        spec = serve_spec(
            tmp_path,
            upstream.url,
            "  split: {control: 1, treatment: 1}\n  shadow: [candidate]\n  keys_env: SERVE_KEYS\n",
        )
        s = Served(spec, tmp_path / "ab.duckdb")
        with s.http:
            for i in range(20):
                s.openai().chat.completions.create(model="live", messages=CHAT, user=f"u{i}")
    seen: list[tuple[str, int, int]] = []

    def compare(arm: pd.DataFrame, control: pd.DataFrame, metric: str, **_: object) -> Comparison:
        seen.append((metric, arm["subject"].nunique(), control["subject"].nunique()))
        diff = float(arm["value"].mean() - control["value"].mean())
        return Comparison(
            metric,
            0,
            0,
            0,
            0,
            diff,
            diff - 1,
            diff + 1,
            0.5,
            diff - 0.5,
            diff + 0.5,
            n_units=len(arm),
        )

    with Results(s.db) as db:
        pairs, note = online_comparisons(db, s.session.run_id, "control", compare)
    assert note is None
    assert {(arm, c.metric) for arm, c in pairs} == {
        (arm, m)
        for arm in ("treatment", "candidate")
        for m in ("pass_rate", "mean_score", "latency", "cost")
    }
    n_control = sum(1 for i in range(20) if s.session.assigner.arm_for(f"u{i}") == "control")
    assert all(control == n_control for _, _, control in seen)
    assert ("latency", 20, n_control) in seen  # the shadow saw every subject
    # the report says which comparison it made, or why none
    with Results(s.db) as db:
        report = build_report(db, s.session.run_id)
    assert report.kind == "online" and report.comparisons == []
    # 20 subjects split in two: fewer than the sequential test's minimum per arm
    assert report.online and all(not c.compared for c in report.online)
    unpriced = [c for c in report.online if c.arm_id == "candidate" and c.metric == "cost"]
    assert [c.reason for c in unpriced] == ["cost unknown for candidate (no price)"]
    assert all("subjects" in (c.reason or "") for c in report.online if c not in unpriced)
    out = CliRunner().invoke(cli, ["report", s.session.run_id, "--db", str(s.db)])
    assert out.exit_code == 0, out.output
    markdown = Path(out.output.split("report: ")[1].split()[0]).read_text()
    assert "## Online: each arm against `control`, by subject" in markdown
    html = Path(out.output.split("report: ")[1].split()[0]).with_suffix(".html").read_text()
    assert "Online: each arm against <code>control</code>, by subject" in html
    assert "answered by a fallback" in html and "not compared" in html
