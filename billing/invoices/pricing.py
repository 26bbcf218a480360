"""Rating an invoice's segments: each under its subscription's plan (or a preview version), prorated (pure).

A segment is rated with its plan's base fee, included quantities, commitment and minimum prorated by its
share of the month in exact seconds; a plan change mid-month labels each segment's lines with its dates.
Subscriptions of one period must share one currency (an invoice never converts).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from typing import NamedTuple

from .. import subscriptions
from ..periods import Period
from ..pricebook import book_windows, group_usage
from ..pricebook.rate import TOKEN_METERS
from ..prices import BUILTIN, Catalog
from ..rating import Line, Plan, PricingVersion, rate_plan
from ..rating.book_lines import Group
from ..rating.plans import BookPrice
from .document import InvoiceError, plain
from .usage import SegmentUsage

__all__ = ["Rated", "book_groups", "metric_amounts", "rate_segments", "segment_label", "window_label"]


def segment_label(segment: subscriptions.Segment, period: Period, plan_name: str) -> str:
    """The prefix of a segment's lines: empty when it covers the whole period."""
    return window_label(segment.start, segment.end, period, plan_name)


def window_label(start: datetime, end: datetime, period: Period, plan_name: str) -> str:
    """:func:`segment_label` of a segment from ``start`` to ``end`` (``invoice explain`` finds a line's segment
    by it, in a stored invoice as in a draft)."""
    if start == period.start and end == period.end:
        return ""
    last = end - timedelta(seconds=1)
    return f"{plan_name}, {start:%b %d}–{last:%b %d}: "


class Rated(NamedTuple):
    """What rating a period's segments gives: its lines, the pricing version(s) joined by ``+``, the currency,
    the usage no price book version prices (one dict per model and meter) and the book versions used."""

    lines: list[Line]
    version: str
    currency: str
    unpriced: tuple[dict[str, str], ...] = ()
    books: tuple[str, ...] = ()
    groups: tuple[tuple[str, Group], ...] = ()  # (metric, group): usage per model behind the book-priced lines


def book_groups(
    part: SegmentUsage, version: PricingVersion, plan: Plan, catalog: Catalog
) -> tuple[dict[str, list[Group]], list[dict[str, str]], set[str]]:
    """The segment's usage per model and GPU model priced by the book versions in force (pure): groups per
    metric, the unpriced usage, the book versions used."""
    books = catalog.book_versions(version.price_book)
    groups: dict[str, list[Group]] = {}
    unpriced: list[dict[str, str]] = []
    used: set[str] = set()
    for rate in plan.rates:
        if not isinstance(rate.price, BookPrice):
            continue
        meters = TOKEN_METERS if rate.price.section == "tokens" else {"gpu_seconds": "gpu"}
        windows = []
        for window in part.dimension_windows:
            in_force = book_windows(books, window.start, window.end)[0]
            if in_force.book is not None and in_force.book.currency != plan.currency:
                raise InvoiceError(
                    f"plan {plan.code} of {version.code} is priced in {plan.currency} but {in_force.book.label} in "
                    f"{in_force.book.currency}: an invoice never converts"
                )
            usage = {key: q for key, q in window.usage.items() if key[0] in meters}
            windows.append((in_force, usage))
        found, missing = group_usage(rate.price.section, windows)
        groups[rate.metric] = found
        used.update(group.book for group in found)
        unpriced += [
            {
                "metric": rate.metric,
                "meter_code": meter,
                "model": dimension or "(none)",
                **({"provider": provider} if provider else {}),
                "quantity": plain(q),
                "price_book": version.price_book or "",
            }
            for dimension, provider, meter, q in missing
        ]
    return groups, unpriced, used


def rate_segments(
    parts: Sequence[SegmentUsage], period: Period, pricing_override: str | None, catalog: Catalog = BUILTIN
) -> Rated:
    """The period's segments rated under their subscriptions' pricing versions (or ``pricing_override``)."""
    lines: list[Line] = []
    versions, currencies = set(), set()
    unpriced: list[dict[str, str]] = []
    books: set[str] = set()
    all_groups: list[tuple[str, Group]] = []
    period_seconds = Decimal((period.end - period.start).total_seconds())
    for part in parts:
        sub = part.segment.subscription
        version_code = pricing_override or sub.pricing_version
        version = catalog.version(version_code)
        if version is None:
            raise InvoiceError(f"unknown pricing version {version_code!r}; known: {', '.join(catalog.versions)}")
        plan = version.plans.get(sub.plan_code)
        if plan is None:
            raise InvoiceError(f"pricing version {version_code} has no plan {sub.plan_code!r}")
        groups: dict[str, list[Group]] = {}
        if version.uses_book:
            groups, missing, used = book_groups(part, version, plan, catalog)
            unpriced += missing
            books |= used
            all_groups += [(metric, group) for metric, found in groups.items() for group in found]
        fraction = Decimal((part.segment.end - part.segment.start).total_seconds()) / period_seconds
        label = segment_label(part.segment, period, plan.name)
        lines.extend(rate_plan(part.usage, plan, fraction=fraction, label=label, groups=groups))
        versions.add(version_code)
        currencies.add(plan.currency)
    if len(currencies) > 1:
        raise InvoiceError(f"subscriptions in {period} mix currencies {sorted(currencies)}: split the invoice")
    return Rated(
        lines,
        "+".join(sorted(versions)),
        currencies.pop() if currencies else "EUR",
        tuple(unpriced),
        tuple(sorted(books)),
        tuple(all_groups),
    )


def metric_amounts(lines: Sequence[Line]) -> dict[str, Decimal]:
    """The usage lines' amounts per billable metric."""
    amounts: dict[str, Decimal] = {}
    for line in lines:
        if line.kind == "usage" and line.meter_code:
            amounts[line.meter_code] = amounts.get(line.meter_code, Decimal(0)) + line.amount
    return amounts
