"""Each provider against the loopback fake server: exact usage, TTFT, error mapping."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from abharness import errors
from abharness.providers._http import parse_retry_after
from abharness.providers.base import ProviderRequest, track_attempt

from .conftest import make_provider
from .fake_server import CONTEXT_LENGTH_BODIES, FakeServer, Fault

KEYS = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY", "ollama": None}
MODELS = {"openai": "gpt-4.1-mini", "anthropic": "claude-haiku-4-5", "ollama": "llama3.2"}
# "openai-direct": the OpenAI provider with `transport: direct` (providers.wire), held to
# everything the SDK's transport is held to
KEYS["openai-direct"], MODELS["openai-direct"] = KEYS["openai"], MODELS["openai"]
ALL = ["openai", "openai-direct", "anthropic", "ollama"]


def type_of(kind: str) -> str:
    return kind.removesuffix("-direct")


@pytest.fixture
def server() -> Iterator[FakeServer]:
    with FakeServer(cached_tokens=3, chunk_delay_s=0.002) as s:
        yield s


def make(kind: str, server: FakeServer, monkeypatch: pytest.MonkeyPatch):
    options = {"base_url": server.url + ("/v1" if type_of(kind) == "openai" else "")}
    if KEYS[kind]:
        monkeypatch.setenv(KEYS[kind], "test-key-not-secret")
        options["api_key_env"] = KEYS[kind]
    if kind == "openai-direct":
        options["transport"] = "direct"
    provider = make_provider(type_of(kind), kind, MODELS[kind], **options)
    provider.load()
    return provider


def request(kind: str, stream: bool, raw: bool = False) -> ProviderRequest:
    if raw:
        return ProviderRequest(
            model=MODELS[kind],
            prompt="Q: What is the capital of Japan?\nA:",
            stream=stream,
            max_tokens=8,
            temperature=0,
        )
    return ProviderRequest(
        model=MODELS[kind],
        messages=(
            {"role": "system", "content": "One word."},
            {"role": "user", "content": "What is the capital of France?"},
        ),
        stream=stream,
        max_tokens=8,
        temperature=0,
        seed=7,
        stop=("\n",),
    )


@pytest.mark.slow
@pytest.mark.parametrize("kind", ALL)
@pytest.mark.parametrize("stream", [True, False])
async def test_usage_is_exactly_what_the_server_sent(
    kind: str, stream: bool, server, monkeypatch
) -> None:
    provider = make(kind, server, monkeypatch)
    try:
        response = await provider.generate(request(kind, stream))
    finally:
        await provider.aclose()
    (logged,) = server.log
    u = logged.usage
    assert response.text == "Paris" == logged.text
    assert response.usage.output_tokens == u["completion"]
    if kind == "ollama":
        assert (
            response.usage.input_tokens == u["prompt"] and response.usage.cache_read_tokens is None
        )
        assert (
            response.metrics["load_duration_ms"] == 120.0 and response.metrics["tokens_per_s"] > 0
        )
    else:  # input includes cached tokens for both APIs
        assert (
            response.usage.input_tokens == u["prompt"]
            and response.usage.cache_read_tokens == u["cached"] == 3
        )
        assert response.request_id and response.request_id.startswith("req_")
    assert (response.ttft_ms is not None) == stream
    if kind == "anthropic":
        assert logged.body["system"] == "One word." and all(
            m["role"] != "system" for m in logged.body["messages"]
        )
        assert logged.body["stop_sequences"] == ["\n"]
    if type_of(kind) == "openai":
        assert logged.body["max_tokens"] == 8 and logged.body["seed"] == 7
        assert logged.body.get("stream_options") == ({"include_usage": True} if stream else None)


@pytest.mark.parametrize("kind", ALL)
async def test_a_stream_hands_each_piece_to_the_attempts_relay(kind, monkeypatch) -> None:
    """`abharness serve` passes a stream through by the attempt's relay: every piece,
    in order, as it arrives; none without a stream."""
    with FakeServer(lambda body: "one two three") as s:
        provider = make(kind, s, monkeypatch)
        try:
            for stream in (True, False):
                pieces: list[str] = []
                with track_attempt(pieces.append):
                    response = await provider.generate(request(kind, stream))
                assert response.text == "one two three"
                assert pieces == (["one ", "two ", "three"] if stream else [])
        finally:
            await provider.aclose()


@pytest.mark.slow
async def test_anthropic_input_tokens_add_cache_reads_and_writes(monkeypatch) -> None:
    with FakeServer(cached_tokens=4, cache_write_tokens=2) as server:
        provider = make("anthropic", server, monkeypatch)
        for stream in (True, False):
            r = await provider.generate(request("anthropic", stream))
            u = server.log[-1].usage
            assert (
                r.usage.input_tokens,
                r.usage.cache_read_tokens,
                r.usage.cache_write_tokens,
            ) == (u["prompt"], 4, 2)
        await provider.aclose()


async def test_ollama_raw_prompt_uses_generate_with_raw(server, monkeypatch) -> None:
    provider = make("ollama", server, monkeypatch)
    response = await provider.generate(request("ollama", True, raw=True))
    await provider.aclose()
    (logged,) = server.log
    assert logged.path == "/api/generate" and logged.body["raw"] is True
    assert logged.body["options"] == {"temperature": 0, "num_predict": 8}
    assert response.text == "Tokyo"


async def test_ollama_spreads_calls_over_hosts(monkeypatch) -> None:
    with FakeServer() as a, FakeServer() as b:
        provider = make_provider(
            "ollama", "ollama", "llama3.2", hosts=[a.url, b.url], concurrency=2
        )
        assert provider.max_concurrency() == 4
        import asyncio

        await asyncio.gather(*(provider.generate(request("ollama", True)) for _ in range(6)))
        await provider.aclose()
        assert len(a.log) + len(b.log) == 6 and a.log and b.log


ERRORS = [
    (Fault(429, {"retry-after": "2"}), errors.RateLimitError, 2.0),
    (Fault(429, {"retry-after-ms": "1500"}), errors.RateLimitError, 1.5),
    (Fault(401), errors.AuthError, None),
    (Fault(500), errors.ServerError, None),
    (Fault(529), errors.ServerError, None),
    (Fault(408), errors.TimeoutError_, None),
]


@pytest.mark.parametrize("kind", ALL)
@pytest.mark.parametrize(("fault", "error", "retry_after"), ERRORS)
async def test_http_errors_map_to_the_spec_types(
    kind, fault, error, retry_after, server, monkeypatch
) -> None:
    provider = make(kind, server, monkeypatch)
    server.faults.append(fault)
    with pytest.raises(error) as info:
        await provider.generate(request(kind, True))
    await provider.aclose()
    assert info.value.status_code == fault.status
    if kind != "ollama":  # the ollama client does not expose response headers
        assert info.value.retry_after_s == retry_after


CONTEXT = CONTEXT_LENGTH_BODIES


@pytest.mark.parametrize("kind", ALL)
async def test_context_length_and_bad_request(kind, server, monkeypatch) -> None:
    provider = make(kind, server, monkeypatch)
    server.faults.append(Fault(400, body=CONTEXT[type_of(kind)]))
    with pytest.raises(errors.ContextLengthError):
        await provider.generate(request(kind, False))
    server.faults.append(Fault(400))
    with pytest.raises(errors.BadRequestError):
        await provider.generate(request(kind, False))
    await provider.aclose()


@pytest.mark.parametrize("kind", ALL)
async def test_connection_refused_is_a_connection_error(kind, monkeypatch) -> None:
    server = FakeServer()
    url = server.url
    server.stop()  # nothing listens there now
    monkeypatch.setenv("OPENAI_API_KEY", "k")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "k")
    direct = {"transport": "direct"} if kind == "openai-direct" else {}
    provider = make_provider(
        type_of(kind), kind, MODELS[kind], base_url=url, api_key_env=KEYS[kind], **direct
    )
    provider.load()
    with pytest.raises(errors.ConnectionError_):
        await provider.generate(request(kind, True))
    await provider.aclose()


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
def test_missing_key_is_an_auth_error_naming_the_variable(kind, monkeypatch) -> None:
    monkeypatch.delenv(KEYS[kind], raising=False)
    provider = make_provider(kind, kind, MODELS[kind], api_key_env=KEYS[kind])
    with pytest.raises(errors.AuthError, match=f"{KEYS[kind]} is not set"):
        provider.load()


NOW = 1_700_000_000.0


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after": "3"}, 3.0),
        ({"Retry-After": "0.5"}, 0.5),
        ({"retry-after-ms": "250"}, 0.25),
        ({"retry-after-ms": "250", "retry-after": "9"}, 0.25),
        (
            {
                "retry-after": format_datetime(
                    datetime.fromtimestamp(NOW, UTC) + timedelta(seconds=20)
                )
            },
            20.0,
        ),
        ({"retry-after": "Fri, 31 Dec 1999 23:59:59 GMT"}, 0.0),
        ({"retry-after": "soon"}, None),
        ({"retry-after": "-4"}, 0.0),
        ({}, None),
    ],
)
def test_parse_retry_after(headers, expected) -> None:
    assert parse_retry_after(headers, now=NOW) == expected
