"""`abharness mcp` end to end: the official `mcp` SDK's stdio client starts the server
as a subprocess, lists the tools, compares two fake models (and a synthesis), runs a
spec with progress, reads reports and runs read-only SQL; failures are tool errors."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import duckdb
import pytest
from mcp import Client, StdioServerParameters

from .conftest import write
from .fake_server import FakeServer, prompt_text

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def reply(body: dict[str, Any]) -> str:
    text = prompt_text(body)
    if "Several models answered" in text:
        return "SYNTHESIS of " + ", ".join(
            line.split("(")[1].split(")")[0]
            for line in text.splitlines()
            if line.startswith("Answer ")
        )
    return {"fast": "Paris, I think", "slow": "It is Paris"}.get(body["model"], "?")


@pytest.fixture
def setup(tmp_path: Path) -> Any:
    with FakeServer(reply) as server:
        config = write(
            tmp_path / "mcp.yaml",
            f"""
name: mcp-config
prompt: q@1
prompts_dir: prompts
cases: [{{id: x}}]
providers:
  fake: {{type: openai, base_url: "{server.url}/v1", api_key_env: FAKE_KEY,
          price: {{input_per_mtok: 1000, output_per_mtok: 1000}}}}
arms:
  - {{id: a, provider: fake, model: fast}}
""",
        )
        write(tmp_path / "prompts/q/v1.j2", "{% block user %}Capital of {{ id }}?{% endblock %}\n")
        params = StdioServerParameters(
            command=sys.executable,
            args=[
                "-m",
                "abharness",
                "mcp",
                "--config",
                str(config),
                "--db",
                str(tmp_path / "r.duckdb"),
            ],
            env={**os.environ, "PYTHONPATH": str(REPO / "src"), "FAKE_KEY": "k"},
            cwd=str(tmp_path),
        )
        yield params, server, tmp_path


def content(result: Any) -> Any:
    """A tool's result: its structured content (a list comes wrapped as {"result": ...}),
    else its text."""
    data = result.structured_content
    if data is None:
        return result.content[0].text
    return data["result"] if isinstance(data, dict) and set(data) == {"result"} else data


async def test_an_mcp_client_lists_the_tools_and_compares_two_models(setup: Any) -> None:
    params, server, root = setup
    async with Client(params) as client:
        tools = {t.name for t in (await client.list_tools()).tools}
        assert tools == {
            "compare_models", "list_experiments", "run_experiment", "list_runs", "get_report", "query",
        }  # fmt: skip
        result = await client.call_tool(
            "compare_models",
            {"prompt": "What is the capital of France?", "models": ["fake:fast", "fake:slow"]},
        )
        assert not result.is_error, result
        answer = content(result)
        assert [a["model"] for a in answer["answers"]] == ["fake:fast", "fake:slow"]
        assert [a["text"] for a in answer["answers"]] == ["Paris, I think", "It is Paris"]
        for a in answer["answers"]:
            assert a["ok"] and a["latency_ms"] > 0 and a["input_tokens"] > 0 and a["cost_usd"] > 0
        synth = content(
            await client.call_tool(
                "compare_models",
                {
                    "prompt": "What is the capital of France?",
                    "models": ["fake:fast", "fake:slow"],
                    "synthesize_with": "fake:judge",
                },
            )
        )
        assert synth["synthesis"]["text"] == "SYNTHESIS of fake:fast, fake:slow"
        assert synth["panel"]["cost_usd"] == pytest.approx(
            sum(a["cost_usd"] for a in synth["answers"]) + synth["synthesis"]["cost_usd"]
        )
        runs = content(await client.call_tool("list_runs", {"experiment": "mcp"}))
        assert [r["kind"] for r in runs] == ["mcp", "mcp"]
        report = content(await client.call_tool("get_report", {"run_id": runs[0]["run_id"]}))
        assert report.startswith("# mcp")
        rows = content(await client.call_tool("query", {"sql": "SELECT count(*) AS n FROM calls"}))
        assert rows["columns"] == ["n"] and rows["rows"] == [[2 + 4]]
    con = duckdb.connect(str(root / "r.duckdb"), read_only=True)
    kinds = con.execute("SELECT DISTINCT kind FROM runs").fetchall()
    con.close()
    assert kinds == [("mcp",)]


async def test_failures_are_one_line_tool_errors_and_the_server_lives_on(setup: Any) -> None:
    params, server, root = setup
    async with Client(params) as client:
        bad = await client.call_tool("compare_models", {"prompt": "x", "models": ["nowhere"]})
        assert bad.is_error and "expected PROVIDER:MODEL" in bad.content[0].text
        bad = await client.call_tool("compare_models", {"prompt": "x", "models": ["mars:m"]})
        assert bad.is_error and "unknown provider 'mars'" in bad.content[0].text
        bad = await client.call_tool("query", {"sql": "SELECT 1"})
        assert bad.is_error and "no database at" in bad.content[0].text  # nothing run yet
        ok = await client.call_tool("compare_models", {"prompt": "x", "models": ["fake:fast"]})
        assert not ok.is_error  # still serving
        bad = await client.call_tool("query", {"sql": "COPY (SELECT 1) TO 'x.csv'"})
        assert bad.is_error and "refused COPY" in bad.content[0].text
        assert "\n" not in bad.content[0].text.strip()
        bad = await client.call_tool("get_report", {"run_id": "no-such-run"})
        assert bad.is_error and "no run 'no-such-run'" in bad.content[0].text
    assert not (root / "x.csv").exists()


async def test_run_experiment_reports_progress_and_a_dry_run_calls_nothing(setup: Any) -> None:
    params, server, root = setup
    write(root / "experiments/data.jsonl", "".join(f'{{"id": "c{i}"}}\n' for i in range(6)))
    spec = write(
        root / "experiments/small.yaml",
        (root / "mcp.yaml")
        .read_text()
        .replace("name: mcp-config", "name: small")
        .replace("cases: [{id: x}]", "dataset: data.jsonl")
        .replace("prompts_dir: prompts", "prompts_dir: ../prompts"),
    )
    seen: list[tuple[float, float | None]] = []

    async def progress(done: float, total: float | None, message: str | None) -> None:
        seen.append((done, total))

    async with Client(params) as client:
        listed = content(await client.call_tool("list_experiments", {}))
        assert [e["name"] for e in listed] == ["small"]
        before = len(server.log)
        dry = content(
            await client.call_tool("run_experiment", {"spec_path": str(spec), "dry_run": True})
        )
        assert dry["dry_run"] and dry["arms"][0]["calls"] == 6 and len(server.log) == before
        done = content(
            await client.call_tool(
                "run_experiment", {"spec_path": str(spec)}, progress_callback=progress
            )
        )
    assert done["status"] == "completed" and done["calls"] == 6
    assert seen and seen[-1] == (6, 6)
