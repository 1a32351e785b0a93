"""The run's hard cost budget (``max_cost_usd``), enforced by reservation.

Before a call is dispatched it reserves its worst case: estimated input tokens plus
``max_tokens`` of output at the arm's price. After the call the reservation is settled
to the actual cost (or kept whole when the actual cost is unknown). A reservation that
does not fit under the cap is refused, so spent + reserved never exceeds it.
"""

from __future__ import annotations

from decimal import Decimal


class CostCap:
    def __init__(self, max_usd: float | None) -> None:
        self.max = Decimal(str(max_usd)) if max_usd is not None else None
        self.spent = Decimal(0)
        self.reserved = Decimal(0)
        self.refused = False

    def reserve(self, amount: Decimal) -> bool:
        if self.max is not None and self.spent + self.reserved + amount > self.max:
            self.refused = True
            return False
        self.reserved += amount
        return True

    def settle(self, reserved: Decimal, actual: Decimal | None) -> None:
        self.reserved -= reserved
        self.spent += reserved if actual is None else actual
