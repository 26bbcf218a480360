"""Volume: all overage units at the price of the tier the overage falls in, plus that tier's flat price.

Tiers: up to 500,000 s at €0.0018, up to 2,000,000 at €0.0015, above at €0.0012. 600,000 s used, none
included → tier 2 → 600,000 × €0.0015 = €900.00 (one line). Exactly 500,000 s is still tier 1 (€900.00
too); 500,000.1 s is tier 2 (€750.00: volume pricing is not monotone at the edges, by design).
A non-zero flat price is a second line (quantity 1), so every line reads quantity × unit price = amount.
With no overage: one zero line at tier 1's price, and no flat price.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from ..lines import Line
from .base import overage_of, usage_line, with_usage_note
from .tiers import Tier, tier_range, validate_tiers

__all__ = ["Volume"]


@dataclass(frozen=True, slots=True)
class Volume:
    tiers: tuple[Tier, ...]

    def __post_init__(self) -> None:
        validate_tiers(self.tiers)

    def tier_index(self, overage: Decimal) -> int:
        """The tier ``overage`` falls in: the first whose ``up_to`` is at least ``overage``."""
        for index, tier in enumerate(self.tiers):
            if tier.up_to is None or overage <= tier.up_to:
                return index
        raise AssertionError("validate_tiers guarantees an unbounded last tier")

    def lines(self, metric: str, description: str, quantity: Decimal, included: Decimal, currency: str) -> list[Line]:
        overage = overage_of(quantity, included)
        index = self.tier_index(overage)
        tier = self.tiers[index]
        note = f"{with_usage_note(description, quantity, included)}; {tier_range(self.tiers, index)}"
        lines = [
            usage_line(
                metric,
                note,
                quantity=overage,
                unit_price=tier.unit_price,
                overage=overage,
                included=included,
                currency=currency,
            )
        ]
        if tier.flat_price and overage > 0:
            lines.append(
                usage_line(
                    metric,
                    f"{note} (flat fee)",
                    quantity=Decimal(1),
                    unit_price=tier.flat_price,
                    overage=Decimal(0),
                    included=included,
                    currency=currency,
                )
            )
        return lines
