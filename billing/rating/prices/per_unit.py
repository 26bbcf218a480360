"""Per unit: every unit beyond the allowance at one price.

Worker-seconds at €0.0020, 3,600 s included, 5,000 s used: 1,400 s × €0.0020 = €2.80 (one line).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from ..lines import Line
from ..money import require_decimal
from .base import overage_of, usage_line, with_usage_note

__all__ = ["PerUnit"]


@dataclass(frozen=True, slots=True)
class PerUnit:
    unit_price: Decimal

    def __post_init__(self) -> None:
        if require_decimal(self.unit_price, "unit_price") < 0:
            raise ValueError(f"unit_price must not be negative, got {self.unit_price}")

    def lines(self, metric: str, description: str, quantity: Decimal, included: Decimal, currency: str) -> list[Line]:
        overage = overage_of(quantity, included)
        return [
            usage_line(
                metric,
                with_usage_note(description, quantity, included),
                quantity=overage,
                unit_price=self.unit_price,
                included=included,
                overage=overage,
                currency=currency,
            )
        ]
