"""Lines for a metric priced per model or GPU model from a price book (see :mod:`spanmeter.billing.pricebook`).

:mod:`spanmeter.billing.pricebook.rate` groups the usage (model, token kind, book version, unit price); this
module turns the groups into invoice lines, applying the rate's allowance to the dearest groups first. Pure.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal

from .lines import Line
from .money import exact_mul, format_quantity, round_money

__all__ = ["Group", "book_lines"]


@dataclass(frozen=True, slots=True)
class Group:
    """Usage of one model (or GPU model) and kind under one book version, with its unit price."""

    dimension: str
    kind: str  # a token kind, or "gpu"
    book: str  # the version's label, "docpipe@2026-12"
    unit_price: Decimal  # price / per: exact (per is a power of ten)
    unit_cost: Decimal | None
    quantity: Decimal
    provider: str = ""  # the rows' gen_ai.provider.name ('' for none)


def book_lines(
    metric: str, description: str, groups: Sequence[Group], included: Decimal, currency: str, unit: str
) -> list[Line]:
    """One usage line per group, the allowance applied to the dearest groups first; one zero line (showing the
    allowance) when there is no priced usage."""
    if not groups:
        return [Line("usage", metric, f"{description}: no usage, {format_quantity(included)} included",
                     Decimal(0), included, Decimal(0), Decimal(0), Decimal(0), currency)]  # fmt: skip
    left = included
    free: dict[int, Decimal] = {}
    dearest_first = sorted(
        range(len(groups)),
        key=lambda i: (-groups[i].unit_price, groups[i].dimension, groups[i].provider, groups[i].kind),
    )
    for i in dearest_first:
        # a negative group (a correction that removes usage) takes no allowance and is credited in full
        free[i] = min(max(left, Decimal(0)), max(groups[i].quantity, Decimal(0)))
        left -= free[i]
    lines = []
    for i, group in enumerate(groups):
        billed = group.quantity - free[i]
        kind = "" if group.kind == "gpu" else f" {group.kind.replace('_', ' ')}"
        via = f" via {group.provider}" if group.provider else ""
        note = f", {format_quantity(free[i])} of the allowance" if free[i] else ""
        lines.append(
            Line(
                kind="usage",
                meter_code=metric,
                description=(
                    f"{description}, {group.dimension}{via}{kind} ({group.book}): "
                    f"{format_quantity(group.quantity)} {unit}{note}"
                ),
                quantity=billed,
                included_quantity=included,
                overage_quantity=billed,
                unit_price=group.unit_price,
                amount=round_money(exact_mul(billed, group.unit_price), currency),
                currency=currency,
                dimension=group.dimension,
                usage_kind=group.kind,
                price_book=group.book,
                provider=group.provider or None,
            )
        )
    return lines
