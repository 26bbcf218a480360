"""Graduated: each tier's overage units at that tier's price, one line per tier with units.

Tiers: first 20,000,000 tokens at €0.0000015, up to 100,000,000 at €0.0000012, above at €0.0000009.
5,000,000 included, 30,000,000 used → overage 25,000,000:
  tier 1: 20,000,000 × €0.0000015 = €30.00; tier 2: 5,000,000 × €0.0000012 = €6.00; total €36.00.
A tier's ``flat_price`` is charged once, on a line of its own (quantity 1), when the tier has units.
With no overage there is one zero line at tier 1's price, so the allowance still shows.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from ..lines import Line
from .base import overage_of, usage_line, with_usage_note
from .tiers import Tier, tier_range, validate_tiers

__all__ = ["Graduated"]


@dataclass(frozen=True, slots=True)
class Graduated:
    tiers: tuple[Tier, ...]

    def __post_init__(self) -> None:
        validate_tiers(self.tiers)

    def lines(self, metric: str, description: str, quantity: Decimal, included: Decimal, currency: str) -> list[Line]:
        overage = overage_of(quantity, included)
        note = with_usage_note(description, quantity, included)
        lines: list[Line] = []
        lower = Decimal(0)
        for index, tier in enumerate(self.tiers):
            if overage <= lower:
                break
            units = (overage if tier.up_to is None else min(overage, tier.up_to)) - lower
            tier_note = f"{note}; {tier_range(self.tiers, index)}"
            lines.append(
                usage_line(
                    metric,
                    tier_note,
                    quantity=units,
                    unit_price=tier.unit_price,
                    overage=units,
                    included=included,
                    currency=currency,
                )
            )
            if tier.flat_price:
                lines.append(
                    usage_line(
                        metric,
                        f"{tier_note} (flat fee)",
                        quantity=Decimal(1),
                        unit_price=tier.flat_price,
                        overage=Decimal(0),
                        included=included,
                        currency=currency,
                    )
                )
            lower = tier.up_to if tier.up_to is not None else lower
        if not lines:
            first = self.tiers[0]
            lines.append(
                usage_line(
                    metric,
                    f"{note}; {tier_range(self.tiers, 0)}",
                    quantity=Decimal(0),
                    unit_price=first.unit_price,
                    included=included,
                    overage=Decimal(0),
                    currency=currency,
                )
            )
        return lines
