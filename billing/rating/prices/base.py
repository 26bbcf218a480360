"""What every price model shares: the ``PriceModel`` protocol and the line helpers."""

from __future__ import annotations

from decimal import Decimal
from typing import Protocol

from ..lines import Line
from ..money import exact_mul, format_quantity, require_decimal, round_money

__all__ = ["PriceModel", "overage_of", "usage_line", "with_usage_note"]


class PriceModel(Protocol):
    """A price: a pure function from (metric, usage, allowance) to invoice lines.

    ``lines`` prices the overage ``max(quantity - included, 0)`` and always returns at least one line, so a
    metric with no usage still shows its allowance on the invoice.
    """

    def lines(self, metric: str, description: str, quantity: Decimal, included: Decimal, currency: str) -> list[Line]:
        """The usage lines for ``quantity`` units of ``metric`` with ``included`` units free."""
        ...


def overage_of(quantity: Decimal, included: Decimal) -> Decimal:
    """``max(quantity - included, 0)``; both must be non-negative Decimals."""
    for name, value in (("quantity", quantity), ("included", included)):
        if require_decimal(value, name) < 0:
            raise ValueError(f"{name} must not be negative, got {value}")
    return max(quantity - included, Decimal(0))


def with_usage_note(description: str, quantity: Decimal, included: Decimal) -> str:
    """``"Worker-seconds: 5,000 used, 3,600 included"``: the line keeps the total usage readable."""
    return f"{description}: {format_quantity(quantity)} used, {format_quantity(included)} included"


def usage_line(
    metric: str,
    description: str,
    *,
    quantity: Decimal,
    unit_price: Decimal,
    included: Decimal,
    overage: Decimal,
    currency: str,
) -> Line:
    """A usage line whose amount is ``round_money(quantity × unit_price)``, the product taken exactly."""
    return Line(
        kind="usage",
        meter_code=metric,
        description=description,
        quantity=quantity,
        included_quantity=included,
        overage_quantity=overage,
        unit_price=unit_price,
        amount=round_money(exact_mul(quantity, unit_price), currency),
        currency=currency,
    )
