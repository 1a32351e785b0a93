"""Rate limits learned from the provider: a custom base_url starts unthrottled, the
server's rate-limit headers (OpenAI and Anthropic) set the limits, never above the
spec's, and an exhausted limit pauses the endpoint until its reset. Rates are checked
by counting the loopback server's requests per window, not by timing the test."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from abharness.providers._http import RateLimits, parse_rate_limits
from abharness.run.experiment import run_experiment
from abharness.run.limits import EndpointLimits

from .conftest import make_provider, write
from .fake_server import FakeServer


@pytest.fixture
def server() -> Iterator[FakeServer]:
    with FakeServer() as s:
        yield s


def spec(
    tmp_path: Path, server: FakeServer, monkeypatch, kind: str, limits: str = "", n: int = 40
) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FAKE_KEY", "k")
    write(
        tmp_path / "prompts/q/v1.j2",
        "{% block user %}What is the capital of {{ country }}?{% endblock %}\n",
    )
    base = f"{server.url}/v1" if kind == "openai" else server.url
    model = "gpt-4.1-mini" if kind == "openai" else "claude-haiku-4-5"
    cases = "\n".join(f"  - {{id: c{i}, country: Land{i}}}" for i in range(n))
    return write(
        tmp_path / "spec.yaml",
        f"""
name: limits
prompts_dir: prompts
prompt: q@1
defaults: {{max_tokens: 8}}
cases:
{cases}
providers:
  gateway: {{type: {kind}, base_url: "{base}", api_key_env: FAKE_KEY, concurrency: 8{limits}}}
arms:
  - {{id: a, provider: gateway, model: {model}}}
""",
    )


def most_in_window(times: list[float], window: float) -> int:
    times = sorted(times)
    best, j = 0, 0
    for i, t in enumerate(times):
        while times[j] < t - window + 1e-9:
            j += 1
        best = max(best, i - j + 1)
    return best


def test_headers_parse_for_both_providers() -> None:
    openai = parse_rate_limits(
        {
            "x-ratelimit-limit-requests": "10000",
            "x-ratelimit-remaining-requests": "9999",
            "x-ratelimit-reset-requests": "6m0s",
            "x-ratelimit-limit-tokens": "2000000",
            "x-ratelimit-remaining-tokens": "1999000",
            "x-ratelimit-reset-tokens": "20ms",
        }
    )
    assert openai == RateLimits(10000, 9999, 360.0, 2_000_000, 1_999_000, 0.02)
    later = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 30))
    anthropic = parse_rate_limits(
        {
            "anthropic-ratelimit-requests-limit": "50",
            "anthropic-ratelimit-requests-remaining": "0",
            "anthropic-ratelimit-requests-reset": later,
            "anthropic-ratelimit-input-tokens-limit": "40000",
        }
    )
    assert (
        anthropic is not None and anthropic.requests_limit == 50 and anthropic.tokens_limit == 40000
    )
    assert anthropic.requests_reset_s is not None and 25 < anthropic.requests_reset_s <= 30
    assert parse_rate_limits({"content-type": "application/json"}) is None


def test_tier_defaults_only_on_the_providers_own_urls(monkeypatch) -> None:
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    assert make_provider("openai").rate_limits() == (500, 200_000)
    vllm = make_provider("openai", "vllm", base_url="http://gpu:8000/v1")
    assert vllm.rate_limits() == (None, None)
    assert make_provider("openai", "vllm", base_url="http://g/v1", rpm=60).rate_limits() == (
        60,
        None,
    )
    monkeypatch.setenv("OPENAI_BASE_URL", "http://proxy:4000/v1")
    assert make_provider("openai").rate_limits() == (None, None)
    assert make_provider("anthropic").rate_limits() == (50, 50_000)


@pytest.mark.slow
def test_a_custom_endpoint_without_rpm_is_not_throttled_to_a_tier(
    tmp_path, server, monkeypatch
) -> None:
    """Before: any `type: openai` endpoint got OpenAI's tier-1 500 RPM, spacing calls by
    120 ms. Now a gateway without `rpm` runs at its concurrency until its headers speak."""
    server.extra_headers = lambda: {
        "x-ratelimit-limit-requests": "60000",
        "x-ratelimit-limit-tokens": "50000000",
    }
    out = run_experiment(spec(tmp_path, server, monkeypatch, "openai"), db=tmp_path / "r.duckdb")
    assert out.stats.ok == 40
    # 40 calls at 500 RPM would need 4.7 s; the headers allow 1,000 a second
    assert most_in_window([e.at for e in server.log], 0.5) > 8
    assert out.limits == {
        f"openai:{server.url}/v1": "60,000 requests/min, 50,000,000 tokens/min (from the server's headers)"
    }


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
@pytest.mark.slow
def test_a_lower_limit_in_the_headers_is_kept(tmp_path, server, monkeypatch, kind) -> None:
    """The server announces 600 requests a minute (10 a second): after the first answer
    no second holds more than 10 requests (+1 for the window's edge)."""
    server.extra_headers = lambda: (
        {"x-ratelimit-limit-requests": "600"}
        if kind == "openai"
        else {"anthropic-ratelimit-requests-limit": "600"}
    )
    out = run_experiment(spec(tmp_path, server, monkeypatch, kind, n=25), db=tmp_path / "r.duckdb")
    assert out.stats.ok == 25
    times = sorted(e.at for e in server.log)
    assert most_in_window(times[1:], 1.0) <= 11, times
    assert times[-1] - times[1] >= 2.0  # 24 requests spaced by 0.1 s


@pytest.mark.slow
def test_headers_never_raise_the_limit_above_the_spec(tmp_path, server, monkeypatch) -> None:
    server.extra_headers = lambda: {"x-ratelimit-limit-requests": "100000"}
    path = spec(tmp_path, server, monkeypatch, "openai", limits=", rpm: 1200", n=21)
    out = run_experiment(path, db=tmp_path / "r.duckdb")
    times = sorted(e.at for e in server.log)
    assert most_in_window(times, 0.5) <= 11  # 20 a second at most
    assert "1,200 requests/min" in next(iter(out.limits.values()))


def test_an_exhausted_limit_pauses_until_its_reset() -> None:
    async def scenario() -> float:
        limits = EndpointLimits()
        limits.observe(RateLimits(requests_limit=100, requests_remaining=0, requests_reset_s=0.3))
        start = time.monotonic()
        await limits.acquire(10)
        return time.monotonic() - start

    waited = asyncio.run(scenario())
    assert waited >= 0.25
