"""What a call cost, as `Decimal` USD until it is stored.

Order of precedence: the arm's ``price:``, then its provider's ``price:`` in the spec,
then (for API providers) genai-prices; local models cost 0 unless the spec prices them.
``price_source`` says which was used, so a cost figure can always be traced.

Batch calls (SPEC §13) cost the batch price: genai-prices' where it has one for the
model (its ``processing: batch`` variant), else half the live price, which is what
OpenAI and Anthropic charge; ``price_source`` ends in ``batch price`` or ``batch: half
the live price`` to say which. A spec's ``price:`` is a live price and is halved.
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import UTC, datetime
from decimal import Decimal
from functools import cache

from ..spec.models import Price
from .base import Usage

MILLION = Decimal(1_000_000)


@cache
def genai_prices_source() -> str:
    """``price_source`` for genai-prices figures: the package and its bundled data version."""
    import genai_prices
    from genai_prices.data_snapshot import get_snapshot

    data = "auto-updated data" if get_snapshot().from_auto_update else "bundled data"
    return f"genai-prices {genai_prices.__version__} ({data})"


def price_usage(usage: Usage, price: Price) -> Decimal:
    """Cost of `usage` at `price` (USD per million tokens).

    ``input_tokens`` includes cached tokens; cache reads are billed at their own rate
    when one is given, the rest of the input at the input rate.
    """
    cache_read = usage.cache_read_tokens or 0
    cache_write = usage.cache_write_tokens or 0
    read_rate = (
        price.cache_read_per_mtok if price.cache_read_per_mtok is not None else price.input_per_mtok
    )
    write_rate = (
        price.cache_write_per_mtok
        if price.cache_write_per_mtok is not None
        else price.input_per_mtok
    )
    plain_input = max((usage.input_tokens or 0) - cache_read - cache_write, 0)
    total = (
        plain_input * price.input_per_mtok
        + cache_read * read_rate
        + cache_write * write_rate
        + (usage.output_tokens or 0) * price.output_per_mtok
    )
    return total / MILLION


HALF = Decimal("0.5")
BATCH_HALF = "batch: half the live price"
# (model, provider_id, api_url) genai-prices has no price for: asked again on every call
# of an unpriced arm, the miss costs ~0.2 ms of the gateway's CPU (BENCHMARKS.md)
_UNPRICED: set[tuple[str, str | None, str | None]] = set()


def genai_price(
    usage: Usage,
    model: str,
    *,
    provider_id: str | None,
    api_url: str | None,
    when: datetime | None = None,
    batch: bool = False,
) -> tuple[Decimal, bool] | None:
    """genai-prices' total for `usage` at the call's time, and whether it is its own batch
    price (with `batch`); None if it knows no price."""
    from genai_prices import Usage as PriceUsage
    from genai_prices import calc_price

    if (model, provider_id, api_url) in _UNPRICED:
        return None
    # reasoning tokens are a part of the output tokens, billed with them
    counts = asdict(usage)
    del counts["reasoning_tokens"]
    usage_obj = PriceUsage(**{k: v for k, v in counts.items() if v is not None})
    at = (when or datetime.now(UTC)).replace(tzinfo=UTC)
    context = {"processing": "batch"} if batch else None
    try:
        if provider_id is not None:
            result = calc_price(
                usage_obj,
                model,
                provider_id=provider_id,
                genai_request_timestamp=at,
                price_context=context,
            )
        else:
            result = calc_price(
                usage_obj,
                model,
                provider_api_url=api_url,
                genai_request_timestamp=at,
                price_context=context,
            )
    except LookupError:
        _UNPRICED.add((model, provider_id, api_url))
        return None
    own_batch = batch and any(
        variant.when.get("processing") == "batch"
        and (variant.constraint is None or variant.constraint.active(at))
        for variant in result.model.price_variants or ()
    )
    return Decimal(result.total_price), own_batch


def _free(price: Price) -> bool:
    rates = (
        price.input_per_mtok,
        price.output_per_mtok,
        price.cache_read_per_mtok,
        price.cache_write_per_mtok,
    )
    return all(not rate for rate in rates)


def call_cost(
    usage: Usage,
    price: Price | None,
    *,
    local: bool,
    model: str = "",
    provider_id: str | None = None,
    api_url: str | None = None,
    when: datetime | None = None,
    batch: bool = False,
) -> tuple[Decimal | None, str | None]:
    """(cost, price_source) for one call (with `batch`, a batch call's); (None, None)
    when no price is known or the provider reported no usage (an unknown cost is never
    shown as zero)."""
    if local and price is None:
        return Decimal(0), "local:free"
    if price is not None and _free(price):
        return Decimal(0), "spec"  # whatever the tokens were, or whether they were reported
    if not usage.reported:
        return None, None
    if price is not None:
        live = price_usage(usage, price)
        return (live * HALF, f"spec; {BATCH_HALF}") if batch else (live, "spec")
    if provider_id is None and api_url is None:
        return None, None
    priced = genai_price(
        usage, model, provider_id=provider_id, api_url=api_url, when=when, batch=batch
    )
    if priced is None:
        return None, None
    cost, own_batch = priced
    if not batch:
        return cost, genai_prices_source()
    if own_batch:
        return cost, f"{genai_prices_source()}; batch price"
    return cost * HALF, f"{genai_prices_source()}; {BATCH_HALF}"
