"""Recorded HTTP per provider: plain, streamed, 429 with Retry-After, 401, 400 context length.

The cassettes in ``tests/cassettes/test_cassettes/`` replay offline with strict
matching on method, path and body, so a change in what a provider sends fails here
until it is re-recorded. Record with ``ABHARNESS_RECORD=1 pytest tests/test_cassettes.py``:
that runs the loopback fake server (this machine has no internet; the cassettes show
the SDKs' real requests and their parsing of the documented response formats).
Authorization and x-api-key headers are filtered out of every recording.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import vcr

from abharness import errors
from abharness.providers.base import ProviderRequest

from .conftest import make_provider
from .fake_server import CONTEXT_LENGTH_BODIES, FakeServer, Fault

RECORD = os.environ.get("ABHARNESS_RECORD") == "1"
CASSETTES = Path(__file__).parent / "cassettes" / "test_cassettes"
REPLAY_URL = "http://127.0.0.1:9"  # discard port: in replay nothing may reach the network

recorder = vcr.VCR(
    cassette_library_dir=str(CASSETTES),
    record_mode="all" if RECORD else "none",
    match_on=["method", "path", "body"],
    filter_headers=[("authorization", "REDACTED"), ("x-api-key", "REDACTED")],
    decode_compressed_response=True,
)

CONTEXT_BODY = CONTEXT_LENGTH_BODIES
SCENARIOS = {
    "plain": (None, None),
    "streamed": (None, None),
    "rate_limited": (Fault(429, {"retry-after": "7"}), errors.RateLimitError),
    "unauthorized": (Fault(401), errors.AuthError),
    "context_length": ("context", errors.ContextLengthError),
}
MODELS = {"openai": "gpt-4.1-mini", "anthropic": "claude-haiku-4-5", "ollama": "llama3.2"}


@pytest.fixture
def base_url() -> Iterator[tuple[str, FakeServer | None]]:
    if not RECORD:
        yield REPLAY_URL, None
        return
    with FakeServer(cached_tokens=2) as server:
        yield server.url, server


@pytest.mark.slow
@pytest.mark.parametrize("scenario", list(SCENARIOS))
@pytest.mark.parametrize("kind", ["openai", "anthropic", "ollama"])
async def test_recorded_exchange(kind: str, scenario: str, base_url, monkeypatch) -> None:
    url, server = base_url
    monkeypatch.setenv("CASSETTE_KEY", "test-key-filtered-out")
    options = {"base_url": url + ("/v1" if kind == "openai" else "")}
    if kind != "ollama":
        options["api_key_env"] = "CASSETTE_KEY"
    fault, error = SCENARIOS[scenario]
    if server is not None and fault is not None:
        server.faults.append(Fault(400, body=CONTEXT_BODY[kind]) if fault == "context" else fault)
    provider = make_provider(kind, kind, MODELS[kind], **options)
    provider.load()
    request = ProviderRequest(
        model=MODELS[kind],
        messages=({"role": "user", "content": "What is the capital of France?"},),
        max_tokens=8,
        stream=scenario != "plain",
    )
    with recorder.use_cassette(f"{kind}_{scenario}.yaml") as cassette:
        try:
            if error is None:
                response = await provider.generate(request)
                assert response.text == "Paris"
                assert response.usage.input_tokens and response.usage.output_tokens == 1
                assert (response.ttft_ms is not None) == (scenario == "streamed")
            else:
                with pytest.raises(error) as info:
                    await provider.generate(request)
                if scenario == "rate_limited" and kind != "ollama":
                    assert info.value.retry_after_s == 7.0
        finally:
            await provider.aclose()
        assert cassette.play_count == len(cassette) or RECORD
    text = (CASSETTES / f"{kind}_{scenario}.yaml").read_text()
    assert "test-key-filtered-out" not in text
