"""``rate_plan``: usage totals and a plan → invoice lines. Pure: no database, no clock."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from decimal import ROUND_HALF_UP, Decimal

from .book_lines import Group, book_lines
from .lines import Line, invoice_total
from .metrics import BILLABLE_METRICS
from .money import exact_mul, exact_sum, format_money, require_decimal, round_money
from .plans import BookPrice, Plan, prorate, validate_fraction

__all__ = ["rate_plan"]


def _flat_line(kind: str, description: str, amount: Decimal, currency: str) -> Line:
    return Line(kind, None, description, Decimal(1), Decimal(0), Decimal(0), amount, amount, currency)


def rate_plan(
    usage: Mapping[str, Decimal],
    plan: Plan,
    *,
    fraction: Decimal = Decimal(1),
    label: str = "",
    groups: Mapping[str, Sequence[Group]] | None = None,
) -> list[Line]:
    """The lines for ``usage`` (billable metric code → total for the period) under ``plan``.

    Order: the base fee ("fee", if non-zero), then for each of the plan's rates in plan order its usage
    lines (at least one, even at zero usage), then a "commitment" top-up, then a "minimum" top-up.
    Metrics the plan does not rate are ignored (e.g. api_requests under v2_compute); missing ones are 0.
    ``fraction`` prorates base fee, allowances, commitment and minimum spend for part of a period;
    ``label`` is prefixed to every description (``"Growth, Nov 15–30: "``). A rate priced from a price book
    (:class:`.plans.BookPrice`) is rated from ``groups[metric]``, its usage per model or GPU model already
    priced by book version (:mod:`spanmeter.billing.pricebook.rate`); without groups it has no usage.
    """
    validate_fraction(fraction)
    for metric, quantity in usage.items():
        if require_decimal(quantity, f"usage of {metric}") < 0:
            raise ValueError(f"usage of {metric} is negative: {quantity}")
    period_plan = prorate(plan, fraction)
    currency = plan.currency
    lines: list[Line] = []
    if plan.base_fee:
        description = f"{label}{plan.name} base fee"
        if fraction != 1:  # the line's quantity is the exact fraction; the text rounds it for people
            description += (
                f" × {(fraction * 100).quantize(Decimal('0.01'), rounding=ROUND_HALF_UP).normalize():f}% of the period"
            )
        amount = round_money(exact_mul(fraction, plan.base_fee), currency)
        lines.append(Line("fee", None, description, fraction, Decimal(0), Decimal(0), plan.base_fee, amount, currency))
    for rate in period_plan.rates:
        if isinstance(rate.price, BookPrice):
            unit = {"{token}": "tokens"}.get(
                BILLABLE_METRICS[rate.metric].unit, BILLABLE_METRICS[rate.metric].unit.strip("{}")
            )
            metric_groups = (groups or {}).get(rate.metric, ())
            lines.extend(
                book_lines(rate.metric, f"{label}{rate.description}", metric_groups, rate.included, currency, unit)
            )
            continue
        quantity = usage.get(rate.metric, Decimal(0))
        lines.extend(rate.price.lines(rate.metric, f"{label}{rate.description}", quantity, rate.included, currency))
    usage_amount = exact_sum(line.amount for line in lines if line.kind == "usage")
    commitment = period_plan.commitment
    if commitment is not None and usage_amount < commitment:
        description = (
            f"{label}Committed spend {format_money(commitment, currency)}, "
            f"used {format_money(usage_amount, currency)}: shortfall"
        )
        lines.append(_flat_line("commitment", description, commitment - usage_amount, currency))
    minimum = period_plan.minimum_spend
    subtotal = invoice_total(lines)
    if minimum is not None and subtotal < minimum:
        description = (
            f"{label}Minimum spend {format_money(minimum, currency)}, "
            f"charges {format_money(subtotal, currency)}: difference"
        )
        lines.append(_flat_line("minimum", description, minimum - subtotal, currency))
    return lines
