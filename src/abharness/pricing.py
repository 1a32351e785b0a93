"""What a call cost, as `Decimal` USD until it is stored.

Order of precedence: the arm's ``price:``, then its provider's ``price:`` in the spec,
then (for API providers) genai-prices; local models cost 0 unless the spec prices them.
``price_source`` says which was used, so a cost figure can always be traced.
"""

from __future__ import annotations

from decimal import Decimal

from .providers.base import Usage
from .spec import Price

MILLION = Decimal(1_000_000)


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


def call_cost(
    usage: Usage, price: Price | None, *, local: bool
) -> tuple[Decimal | None, str | None]:
    """(cost, price_source) for one call; (None, None) when no price is known."""
    if price is not None:
        return price_usage(usage, price), "spec"
    if local:
        return Decimal(0), "local:free"
    return None, None
