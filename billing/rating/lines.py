"""Invoice lines: what rating produces, one priced row each, and the invoice total."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal

from .money import currency_decimals, exact_sum, plain, require_decimal, round_money

__all__ = ["LINE_KINDS", "PERIOD_PATTERN", "Line", "invoice_total"]

LINE_KINDS: frozenset[str] = frozenset({"usage", "fee", "minimum", "commitment", "credit", "adjustment", "transition"})
PERIOD_PATTERN = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")  # "YYYY-MM"; compares correctly as a string


@dataclass(frozen=True, slots=True)
class Line:
    """One invoice line. Its arithmetic is always ``amount == round_money(quantity × unit_price, currency)``.

    - ``quantity``: what the line charges for, in the unit ``unit_price`` is quoted in: metric units beyond
      the allowance (per-unit, graduated tier, volume), whole packages (package), ``1`` for a flat amount
      (a tier's flat fee, commitment shortfall, minimum, credit, transition), the period fraction for a
      base fee (``0.5`` × €299 for half a month).
    - ``included_quantity``: the metric's allowance for the period (prorated), repeated on each line of a
      metric as context; 0 on non-usage lines.
    - ``overage_quantity``: the metric units beyond the allowance that *this* line prices; summed over a
      metric's lines it is ``max(used - included, 0)``. For a package line it is the raw units (quantity is
      packages); on a flat-fee line it is 0.
    - ``amount``: already rounded to the currency's minor unit (validated; stored with exactly that scale).
    """

    kind: str
    meter_code: str | None  # the billable metric code for usage lines, None for fees
    description: str
    quantity: Decimal
    included_quantity: Decimal
    overage_quantity: Decimal
    unit_price: Decimal
    amount: Decimal
    currency: str
    reference_period: str | None = None  # "YYYY-MM": the earlier period an adjustment corrects
    # lines priced from a price book (spanmeter.billing.pricebook): the LLM or GPU model, the token kind
    # ("input", "cache_read", …; "gpu") and the book version, so that `invoice explain` finds the rows behind it
    dimension: str | None = None
    usage_kind: str | None = None
    price_book: str | None = None
    provider: str | None = None  # the model's provider, when the usage named one

    def __post_init__(self) -> None:
        if self.kind not in LINE_KINDS:
            raise ValueError(f"line kind {self.kind!r} is not one of {sorted(LINE_KINDS)}")
        if self.kind == "usage" and not self.meter_code:
            raise ValueError("a usage line needs meter_code")
        for name in ("quantity", "included_quantity", "overage_quantity", "unit_price", "amount"):
            require_decimal(getattr(self, name), name)
        rounded = round_money(self.amount, self.currency)  # validates the currency too
        if rounded != self.amount:
            raise ValueError(f"line amount {self.amount} is not rounded to {self.currency}'s minor unit")
        # 12.3 and 12.300000 are stored as 12.30; -0.00 as 0.00
        object.__setattr__(self, "amount", rounded.copy_abs() if rounded == 0 else rounded)
        if self.reference_period is not None and not PERIOD_PATTERN.match(self.reference_period):
            raise ValueError(f"reference_period must be 'YYYY-MM', got {self.reference_period!r}")

    def to_dict(self) -> dict[str, str | None]:
        """JSON-ready: every Decimal as a string without exponent; ``amount`` with exactly the minor unit."""
        decimals = currency_decimals(self.currency)
        return {
            "kind": self.kind,
            "meter_code": self.meter_code,
            "description": self.description,
            "quantity": plain(self.quantity),
            "included_quantity": plain(self.included_quantity),
            "overage_quantity": plain(self.overage_quantity),
            "unit_price": plain(self.unit_price),
            "amount": f"{self.amount:.{decimals}f}",
            "currency": self.currency,
            "reference_period": self.reference_period,
            # only on book-priced lines: every other line keeps the form finalized invoices already have
            **({"dimension": self.dimension} if self.dimension is not None else {}),
            **({"usage_kind": self.usage_kind} if self.usage_kind is not None else {}),
            **({"price_book": self.price_book} if self.price_book is not None else {}),
            **({"provider": self.provider} if self.provider is not None else {}),
        }


def invoice_total(lines: Iterable[Line]) -> Decimal:
    """The exact sum of the (already rounded) line amounts; ``ValueError`` if the lines mix currencies.

    An empty invoice totals ``Decimal(0)``.
    """
    lines = list(lines)
    currencies = sorted({line.currency for line in lines})
    if len(currencies) > 1:
        raise ValueError(f"lines mix currencies: {', '.join(currencies)}")
    return exact_sum(line.amount for line in lines)
