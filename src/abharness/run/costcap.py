"""The run's hard cost budget (``max_cost_usd``), enforced by reservation.

Before a call is dispatched it reserves its worst case: estimated input tokens plus
``max_tokens`` of output at the arm's price. After the call the reservation is settled
to the actual cost (or kept whole when the actual cost is unknown). A reservation that
does not fit under the cap is refused, so spent + reserved never exceeds it.

A composite arm's call (a panel) reserves its whole worst case at once with `hold`,
before any of its parts is sent: the parts then reserve from that hold, which
`release` settles back to the run's cap with what they cost.
"""

from __future__ import annotations

from decimal import Decimal


class CostCap:
    def __init__(self, max_usd: float | None) -> None:
        self.max = Decimal(str(max_usd)) if max_usd is not None else None
        self.spent = Decimal(0)
        self.reserved = Decimal(0)
        self.refused = False
        self.parent: CostCap | None = None  # set on a hold

    def reserve(self, amount: Decimal) -> bool:
        if self.max is not None and self.spent + self.reserved + amount > self.max:
            self.refused = True
            return False
        self.reserved += amount
        return True

    def settle(self, reserved: Decimal, actual: Decimal | None) -> None:
        self.reserved -= reserved
        self.spent += reserved if actual is None else actual

    def root(self) -> CostCap:
        """The run's (or the day's) cap this one holds from; itself if it is that one."""
        return self if self.parent is None else self.parent.root()

    def hold(self, amount: Decimal) -> CostCap | None:
        """Reserve `amount` now, for several calls to spend later (their own cap); None
        if it does not fit."""
        if not self.reserve(amount):
            return None
        held = CostCap(None)
        held.max = amount
        held.parent = self
        return held

    def release(self) -> None:
        """A hold's calls are done: settle its reservation to what they cost."""
        assert self.parent is not None and self.max is not None
        self.parent.settle(self.max, self.spent + self.reserved)
