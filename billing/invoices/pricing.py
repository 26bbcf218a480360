"""Rating an invoice's segments: each under its subscription's plan (or a preview version), prorated (pure).

A segment is rated with its plan's base fee, included quantities, commitment and minimum prorated by its
share of the month in exact seconds; a plan change mid-month labels each segment's lines with its dates.
Subscriptions of one period must share one currency (an invoice never converts).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from decimal import Decimal

from .. import subscriptions
from ..periods import Period
from ..rating import PRICING_VERSIONS, Line, rate_plan
from .document import InvoiceError
from .usage import SegmentUsage

__all__ = ["metric_amounts", "rate_segments", "segment_label"]


def segment_label(segment: subscriptions.Segment, period: Period, plan_name: str) -> str:
    """The prefix of a segment's lines: empty when it covers the whole period."""
    if segment.start == period.start and segment.end == period.end:
        return ""
    last = segment.end - timedelta(seconds=1)
    return f"{plan_name}, {segment.start:%b %d}–{last:%b %d}: "


def rate_segments(
    parts: Sequence[SegmentUsage], period: Period, pricing_override: str | None
) -> tuple[list[Line], str, str]:
    """(lines, pricing version(s) joined by ``+``, currency) of the period's segments."""
    lines: list[Line] = []
    versions, currencies = set(), set()
    period_seconds = Decimal((period.end - period.start).total_seconds())
    for part in parts:
        sub = part.segment.subscription
        version_code = pricing_override or sub.pricing_version
        version = PRICING_VERSIONS.get(version_code)
        if version is None:
            raise InvoiceError(f"unknown pricing version {version_code!r}; known: {', '.join(PRICING_VERSIONS)}")
        plan = version.plans.get(sub.plan_code)
        if plan is None:
            raise InvoiceError(f"pricing version {version_code} has no plan {sub.plan_code!r}")
        fraction = Decimal((part.segment.end - part.segment.start).total_seconds()) / period_seconds
        lines.extend(
            rate_plan(part.usage, plan, fraction=fraction, label=segment_label(part.segment, period, plan.name))
        )
        versions.add(version_code)
        currencies.add(plan.currency)
    if len(currencies) > 1:
        raise InvoiceError(f"subscriptions in {period} mix currencies {sorted(currencies)}: split the invoice")
    return lines, "+".join(sorted(versions)), (currencies.pop() if currencies else "EUR")


def metric_amounts(lines: Sequence[Line]) -> dict[str, Decimal]:
    """The usage lines' amounts per billable metric."""
    amounts: dict[str, Decimal] = {}
    for line in lines:
        if line.kind == "usage" and line.meter_code:
            amounts[line.meter_code] = amounts.get(line.meter_code, Decimal(0)) + line.amount
    return amounts
