"""Package: the overage is sold in whole packages, rounded up.

Tokens in packages of 1,000,000 at €1.50, 250,000 included, 2,400,000 used: overage 2,150,000 tokens
→ 3 packages (2.15 rounded up) × €1.50 = €4.50. The line's ``quantity`` is the number of packages and
its ``unit_price`` the package price, so ``quantity × unit_price`` is the amount; ``overage_quantity``
keeps the raw units (2,150,000).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_CEILING, Context, Decimal

from ..lines import Line
from ..money import format_quantity, require_decimal
from .base import overage_of, usage_line, with_usage_note

__all__ = ["Package"]

_CEILING = Context(prec=200, rounding=ROUND_CEILING)


@dataclass(frozen=True, slots=True)
class Package:
    package_size: Decimal
    package_price: Decimal

    def __post_init__(self) -> None:
        if require_decimal(self.package_size, "package_size") <= 0:
            raise ValueError(f"package_size must be positive, got {self.package_size}")
        if require_decimal(self.package_price, "package_price") < 0:
            raise ValueError(f"package_price must not be negative, got {self.package_price}")

    def packages(self, overage: Decimal) -> Decimal:
        """Whole packages needed for ``overage`` units (0 for none)."""
        return _CEILING.divide(overage, self.package_size).to_integral_value(context=_CEILING)

    def lines(self, metric: str, description: str, quantity: Decimal, included: Decimal, currency: str) -> list[Line]:
        overage = overage_of(quantity, included)
        packages = self.packages(overage)
        note = f"{packages} × package of {format_quantity(self.package_size)}"
        return [
            usage_line(
                metric,
                f"{with_usage_note(description, quantity, included)}; {note}",
                quantity=packages,
                unit_price=self.package_price,
                included=included,
                overage=overage,
                currency=currency,
            )
        ]
