"""Usage honesty: a server that sends no token counts in its streams gets null counts,
`usage_source = 'missing'`, and one line per arm in the run summary with the fix; a
price of 0 still costs 0; non-streamed calls get the body's counts."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest
from click.testing import CliRunner

from abharness.cli.main import cli

from .conftest import write
from .fake_server import FakeServer


@pytest.mark.slow
@pytest.mark.parametrize(("stream", "source"), [(True, "missing"), (False, "body")])
def test_a_server_without_streamed_usage_is_named_and_priced_at_zero_costs_zero(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stream: bool, source: str
) -> None:
    monkeypatch.setenv("FAKE_KEY", "k")
    write(tmp_path / "prompts/q/v1.j2", "{% block user %}Capital of {{ id }}?{% endblock %}\n")
    with FakeServer(stream_usage=False) as server:
        spec = write(
            tmp_path / "spec.yaml",
            f"""
name: usage
prompts_dir: prompts
prompt: q@1
defaults: {{temperature: 0, max_tokens: 8, stream: {str(stream).lower()}}}
providers:
  llama: {{type: openai, base_url: "{server.url}/v1", api_key_env: FAKE_KEY,
           price: {{input_per_mtok: 0, output_per_mtok: 0}}}}
arms:
  - {{id: local, provider: llama, model: m}}
cases: [{{id: France}}, {{id: Peru}}, {{id: Japan}}]
""",
        )
        result = CliRunner().invoke(cli, ["run", str(spec), "--db", str(tmp_path / "r.duckdb")])
    assert result.exit_code == 0, result.output
    con = duckdb.connect(str(tmp_path / "r.duckdb"), read_only=True)
    rows = con.execute(
        "SELECT usage_source, input_tokens, output_tokens, cost_usd FROM calls"
    ).fetchall()
    con.close()
    assert {r[0] for r in rows} == {source}
    assert all(r[3] == 0.0 for r in rows)  # priced at 0: 0, not unknown
    text = " ".join(result.output.split())
    if stream:
        assert all(r[1] is None and r[2] is None for r in rows)  # never a guess
        assert "local: the server reported no token counts for 3 of 3 answered calls" in text
        assert "stream: false" in text
    else:
        assert all(r[1] and r[2] for r in rows)
        assert "reported no token counts" not in text
