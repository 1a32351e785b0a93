"""`abharness view` through its ASGI app (Starlette's TestClient): every page and its JSON
twin on a real run, the compare page's filters, search, sort and paging, escaping of
whatever a model or a dataset planted, a database held by another process, and URLs
that try to reach files. The browser's view of it is tests/test_browser.py."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from starlette.testclient import TestClient

from abharness.entry import cli
from abharness.report.build import build_report
from abharness.run.experiment import run_experiment
from abharness.store.queries import Results
from abharness.view.app import create_app

from .conftest import write
from .fake_server import FakeServer, prompt_text

SCRIPT = "<script>alert('x')</script>"
IMG = '<img src=x onerror="alert(1)">'
# arm-b gets c01 and c02 wrong where arm-a is right (regressions), c03 right where
# arm-a is wrong (an improvement); c04's answers hold a script, c05's an image
WRONG = {("model-b", "c01"), ("model-b", "c02"), ("model-a", "c03")}


def answer(body: dict[str, Any]) -> str:
    case = prompt_text(body).rsplit("case ", 1)[1].split("?")[0].strip()
    if (body["model"], case) in WRONG:
        return "no idea"
    extra = {"c04": SCRIPT, "c05": IMG}.get(case, "")
    return f"answer-{case} {extra}".strip()


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    root = tmp_path_factory.mktemp("view")
    with FakeServer(answer) as server, pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("FAKE_KEY", "k")
        write(
            root / "prompts/q/v1.j2", "{% block prompt %}Answer for case {{ id }}?{% endblock %}\n"
        )
        cases = "\n".join(
            f"  - {{id: c{i:02d}, note: {json.dumps(SCRIPT if i == 4 else IMG if i == 5 else 'plain')}}}"
            for i in range(60)
        )
        spec = write(
            root / "spec.yaml",
            f"""
name: viewing
prompts_dir: prompts
prompt: q@1
baseline: arm-a
defaults: {{temperature: 0, max_tokens: 8}}
cases:
{cases}
providers:
  fake: {{type: openai, base_url: "{server.url}/v1", api_key_env: FAKE_KEY, rpm: 600000}}
arms:
  - {{id: arm-a, provider: fake, model: model-a}}
  - {{id: arm-b, provider: fake, model: model-b}}
scorers:
  - {{type: contains, expected: "answer-{{{{ case.id }}}}"}}
max_error_rate: 1
""",
        )
        out = run_experiment(spec, db=root / "r.duckdb")
    yield out.db, out.run_id


@pytest.fixture(scope="module")
def client(run: tuple[Path, str]) -> Iterator[TestClient]:
    with TestClient(create_app(run[0], worker=False)) as c:
        yield c


@pytest.mark.slow
def test_every_page_and_its_json_twin(client: TestClient, run: tuple[Path, str]) -> None:
    db, rid = run
    pages = [
        "/",
        f"/runs/{rid}",
        f"/compare?a={rid}:arm-a&b={rid}:arm-b",
        f"/runs/{rid}/cases/c01?arms=arm-a,arm-b",
    ]
    for page in pages:
        html = client.get(page)
        assert html.status_code == 200, (page, html.text[:500])
        assert html.headers["content-type"].startswith("text/html")
        assert html.headers["server-timing"].startswith("app;dur=")
        api = client.get("/api/runs" if page == "/" else f"/api{page}")
        assert api.status_code == 200 and api.headers["content-type"] == "application/json"
    runs = client.get("/api/runs").json()
    assert runs["total"] == 1 and runs["runs"][0]["run_id"] == rid
    assert {v["verdict"] for v in runs["runs"][0]["verdicts"]} <= {
        "better", "worse", "no_difference", "inconclusive"
    }  # fmt: skip
    with Results(db) as results:
        expected = build_report(results, rid).to_json()
    assert client.get(f"/api/runs/{rid}").json()["report"] == json.loads(json.dumps(expected))


def test_regressions_are_exactly_the_cases_b_passes_less(client: TestClient, run) -> None:
    _, rid = run
    base = f"/api/compare?a={rid}:arm-a&b={rid}:arm-b"
    data = client.get(base + "&filter=regressions").json()
    assert [r["case_id"] for r in data["rows"]] == ["c01", "c02"]
    assert data["total"] == 2 and all(r["b_k"] < r["a_k"] for r in data["rows"])
    assert [r["case_id"] for r in client.get(base + "&filter=improvements").json()["rows"]] == [
        "c03"
    ]
    assert client.get(base + "&filter=differing").json()["total"] == 3
    # the verdict is the report's own comparison of arm-b with its baseline
    assert [c["metric"] for c in data["verdicts"]] == ["pass_rate", "mean_score", "latency", "cost"]
    html = client.get(base.replace("/api", "") + "&filter=regressions").text
    assert "c01" in html and "c02" in html and ">c03<" not in html


def test_search_sort_and_pages_live_in_the_query_string(client: TestClient, run) -> None:
    _, rid = run
    base = f"/api/compare?a={rid}:arm-a&b={rid}:arm-b"
    assert [r["case_id"] for r in client.get(base + "&q=no+idea").json()["rows"]] == [
        "c01", "c02", "c03"
    ]  # fmt: skip
    assert [r["case_id"] for r in client.get(base + "&q=onerror").json()["rows"]] == ["c05"]
    first = client.get(base + "&sort=-case").json()
    assert first["rows"][0]["case_id"] == "c59" and first["pages"] == 2 and len(first["rows"]) == 50
    second = client.get(base + "&sort=-case&page=2").json()
    assert [r["case_id"] for r in second["rows"]] == [f"c{i:02d}" for i in range(9, -1, -1)]
    assert client.get(base + "&sort=diff").json()["rows"][0]["case_id"] in ("c01", "c02")
    html = client.get(base.replace("/api", "") + "&sort=-case").text
    assert "sort=-case&amp;page=2" in html  # the next page keeps the sort


def test_bad_query_strings_are_400_with_the_reason(client: TestClient, run) -> None:
    _, rid = run
    for query, words in (
        ("a=x", "RUN_ID:ARM_ID"),
        (f"a={rid}:arm-a&b={rid}:arm-b&filter=bogus", "filter must be one of"),
        (f"a={rid}:arm-a&b={rid}:arm-b&sort=drop+table", "sort must be one of"),
        (f"a={rid}:arm-a&b={rid}:arm-b&page=0", "page must be 1 or more"),
    ):
        r = client.get(f"/api/compare?{query}")
        assert r.status_code == 400 and words in r.json()["message"], (query, r.text)
    assert client.get("/runs/nope").status_code == 404
    assert client.get(f"/compare?a={rid}:nope&b={rid}:arm-b").status_code == 404
    assert "Traceback" not in client.get("/runs/nope").text


def test_nothing_planted_in_an_output_or_a_variable_reaches_the_page_raw(
    client: TestClient, run
) -> None:
    _, rid = run
    pages = [
        f"/runs/{rid}",
        f"/compare?a={rid}:arm-a&b={rid}:arm-b&q=alert",
        f"/runs/{rid}/cases/c04?arms=arm-a,arm-b",
        f"/runs/{rid}/cases/c05?arms=arm-a,arm-b",
    ]
    for page in pages:
        html = client.get(page).text
        assert "<script>alert" not in html and "<img src=x" not in html, page
    case = client.get(f"/runs/{rid}/cases/c04?arms=arm-a,arm-b").text
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in case
    assert (
        "&lt;img src=x onerror=&#34;alert(1)&#34;&gt;"
        in client.get(f"/runs/{rid}/cases/c05?arms=arm-a,arm-b").text
    )


def test_no_url_reaches_the_file_system(client: TestClient, run) -> None:
    _, rid = run
    for path in (
        "/static/../../../../etc/passwd",
        "/..%2F..%2F..%2Fetc%2Fpasswd",
        f"/runs/{rid}/cases/..%2F..%2F..%2Fetc%2Fpasswd",
        "/runs/..%2F..%2Fr.duckdb",
        "/api/runs/%2Fetc%2Fpasswd",
        "/r.duckdb",
    ):
        r = client.get(path)
        assert r.status_code == 404, (path, r.status_code)
        assert "root:" not in r.text and "DUCK" not in r.text


def test_a_database_held_by_another_process_is_a_banner_that_retries(run, tmp_path) -> None:
    db, rid = run
    copy = tmp_path / "held.duckdb"
    copy.write_bytes(db.read_bytes())
    holder = subprocess.Popen(
        [sys.executable, "-c", f"import duckdb, time; c = duckdb.connect({str(copy)!r}); "
         "print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with TestClient(create_app(copy, worker=False)) as c:
            page = c.get(f"/runs/{rid}")
            assert page.status_code == 503 and page.headers["retry-after"] == "2"
            assert "the database is busy" in page.text and "open for writing" in page.text
            assert '<meta http-equiv="refresh" content="2">' in page.text
            assert "Traceback" not in page.text
            api = c.get("/api/runs")
            assert api.status_code == 503 and api.json()["retry_after_s"] == 2
            holder.kill()
            holder.wait()
            time.sleep(0.2)
            assert c.get(f"/runs/{rid}").status_code == 200  # the retry finds it free
    finally:
        holder.kill()
        holder.wait()


def test_view_warns_when_it_listens_beyond_this_machine(run, monkeypatch) -> None:
    import uvicorn

    started: list[dict[str, Any]] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: started.append(kw))
    db, _ = run
    result = CliRunner().invoke(cli, ["view", "--db", str(db), "--no-open", "--host", "0.0.0.0"])
    assert result.exit_code == 0, result.output
    assert "warning: listening on 0.0.0.0" in " ".join(result.output.split())
    assert started == [{"host": "0.0.0.0", "port": 8765, "log_level": "warning"}]
    local = CliRunner().invoke(cli, ["view", "--db", str(db), "--no-open"])
    assert "warning" not in local.output and started[-1]["host"] == "127.0.0.1"
    missing = CliRunner().invoke(cli, ["view", "--db", "nope.duckdb", "--no-open"])
    assert missing.exit_code == 1 and "no database" in missing.output


@pytest.mark.slow
def test_a_run_merges_while_the_view_is_open(run, tmp_path) -> None:
    """The view opens the database for each request and closes it after: a run that
    ends while someone is looking merges at once, and the next page shows it."""
    from .benchmarks.bigrun import build_database

    db, rid = run
    copy = tmp_path / "live.duckdb"
    copy.write_bytes(db.read_bytes())
    with TestClient(create_app(copy, worker=False)) as c:
        assert c.get("/api/runs").json()["total"] == 1
        assert c.get(f"/runs/{rid}").status_code == 200
        build_database(copy, cases=4, repeats=1, run_id="20261203-000000-new000")
        runs = c.get("/api/runs").json()
        assert runs["total"] == 2
        assert {r["run_id"] for r in runs["runs"]} == {rid, "20261203-000000-new000"}


def test_a_large_report_embeds_the_cases_that_differ_and_says_so(run) -> None:
    from abharness.report.cases import case_data
    from abharness.report.html import cases_section

    db, rid = run
    with Results(db) as results:
        report = build_report(results, rid)
        everything = case_data(results, report)
        few = case_data(results, report, max_cases=10)
    assert everything is not None and everything["complete"] and everything["embedded"] == 60
    assert few is not None and not few["complete"]
    assert sorted(few["cases"]) == ["c01", "c02", "c03"] and few["embedded"] == 3
    html = cases_section(few, rid, "r.duckdb")
    assert "embeds 3 of 60 cases" in html and "<code>abharness view --db r.duckdb</code>" in html
    # no output can close the script element that carries the data
    assert "</script>" not in html.split('id="abh-cases">', 1)[1].split("</script>", 1)[0]
    assert "<script>alert" not in cases_section(everything, rid, None).split("<script>(function")[0]


@pytest.mark.slow
def test_the_worker_computes_the_figures_and_is_replaced_when_it_dies(run) -> None:
    import os
    import signal

    db, rid = run
    app = create_app(db)  # figures in the worker process, as `abharness view` runs
    with TestClient(app) as c:
        assert c.get(f"/runs/{rid}").status_code == 200
        pid = app.state.figures.worker_pid.result(timeout=60)
        assert pid != os.getpid()
        os.kill(pid, signal.SIGKILL)
        time.sleep(0.5)
        page = c.get(f"/compare?a={rid}:arm-b&b={rid}:arm-a")  # a pair not computed yet
        assert page.status_code == 200 and "arm-a" in page.text
