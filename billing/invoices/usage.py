"""An invoice's usage: per subscription segment, from the rollups plus the corrections dated in it.

:func:`period_usage` and :func:`window_usage` read (the rollups and ``usage_adjustments``, through
:mod:`spanmeter.billing.rollups` and :mod:`spanmeter.billing.adjustments`); :func:`billable_usage` and
:func:`uncovered_windows` compute, without a database.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

import psycopg

from .. import adjustments, subscriptions
from ..periods import Period
from ..prices import Catalog, load_catalog
from ..rating import BILLABLE_METRICS, billable_quantities
from ..rollups import RollupTotal, dimension_usage, rollup_totals

__all__ = [
    "BOOK_METERS",
    "DimensionWindow",
    "SegmentUsage",
    "WindowUsage",
    "billable_usage",
    "cut",
    "period_usage",
    "uncovered_windows",
    "window_usage",
    "with_corrections",
]

_METRIC_OF_METER = {meter: metric.code for metric in BILLABLE_METRICS.values() for meter in metric.meters}

# (billable metric -> quantity incl. corrections, meter -> meter versions, span plan code -> quantity)
WindowUsage = tuple[dict[str, Decimal], dict[str, set[int]], dict[str, Decimal]]


# The meters a price book prices per model (tokens) or per GPU model (gpu_seconds)
BOOK_METERS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens",
               "gpu_seconds")  # fmt: skip


@dataclass(frozen=True)
class DimensionWindow:
    """Usage per (meter, model or GPU model, provider) in [start, end), a stretch inside which no price book
    changes. Corrections have no model and no provider: they count under ``("", "")`` (priced by a book's
    default entry)."""

    start: datetime
    end: datetime
    usage: Mapping[tuple[str, str, str], Decimal]


@dataclass(frozen=True)
class SegmentUsage:
    segment: subscriptions.Segment
    usage: dict[str, Decimal]  # billable metric -> quantity (ledger + corrections)
    meter_versions: dict[str, set[int]]
    plan_codes: dict[str, Decimal]  # span plan code -> quantity, all meters
    dimension_windows: tuple[DimensionWindow, ...] = ()  # read when a pricing version prices from a book


def billable_usage(totals: Mapping[str, RollupTotal], corrections: Iterable[adjustments.Adjustment]) -> WindowUsage:
    """A window's usage from its rollup totals and its corrections (pure); meters no billable metric knows
    are left out."""
    meters: dict[str, Decimal] = {code: t.quantity for code, t in totals.items()}
    for correction in corrections:
        meters[correction.meter_code] = meters.get(correction.meter_code, Decimal(0)) + correction.quantity
    # only the meters billable metrics sum (subset meters such as cache_read_tokens are inside them already)
    versions = {code: set(t.meter_versions) for code, t in totals.items() if code in _METRIC_OF_METER}
    plans: dict[str, Decimal] = {}
    for t in (t for code, t in totals.items() if code in _METRIC_OF_METER):
        for plan_code, quantity in t.by_plan_code.items():
            plans[plan_code] = plans.get(plan_code, Decimal(0)) + quantity
    known = {code: q for code, q in meters.items() if code in _METRIC_OF_METER}
    return billable_quantities(known), versions, plans


def window_usage(conn: psycopg.Connection, account_id: str, start: datetime, end: datetime) -> WindowUsage:
    """:func:`billable_usage` of [start, end), read from the rollups and the corrections."""
    return billable_usage(
        rollup_totals(conn, account_id, start, end), adjustments.for_account(conn, account_id, start, end)
    )


def cut(start: datetime, end: datetime, dates: Sequence[datetime]) -> list[tuple[datetime, datetime]]:
    """[start, end) cut at every date strictly inside it (pure)."""
    inside = [d for d in sorted(set(dates)) if start < d < end]
    bounds = [start, *inside, end]
    return list(itertools.pairwise(bounds))


def with_corrections(
    usage: Mapping[tuple[str, str, str], Decimal],
    corrections: Iterable[adjustments.Adjustment],
    start: datetime,
    end: datetime,
) -> dict[tuple[str, str, str], Decimal]:
    """``usage`` plus the corrections of book-priced meters dated in [start, end), under no model (pure)."""
    total = dict(usage)
    for correction in corrections:
        if correction.meter_code in BOOK_METERS and start <= correction.occurred_at < end:
            key = (correction.meter_code, "", "")
            total[key] = total.get(key, Decimal(0)) + correction.quantity
    return total


def period_usage(
    conn: psycopg.Connection,
    account_id: str,
    period: Period,
    catalog: Catalog | None = None,
    pricing_override: str | None = None,
) -> list[SegmentUsage]:
    """Usage per subscription segment of ``period``; with usage per model and GPU model, window by window, for a
    segment whose pricing version (or ``pricing_override``) prices from a price book (``catalog``: the versions
    and books, read from the ledger when not given)."""
    catalog = catalog if catalog is not None else load_catalog(conn)
    result = []
    for segment in subscriptions.segments(conn, account_id, period.start, period.end):
        version = catalog.version(pricing_override or segment.subscription.pricing_version)
        per_dimension = version is not None and version.uses_book
        totals = rollup_totals(conn, account_id, segment.start, segment.end)
        corrections = adjustments.for_account(conn, account_id, segment.start, segment.end)
        usage, versions, plans = billable_usage(totals, corrections)
        windows: tuple[DimensionWindow, ...] = ()
        if per_dimension:
            windows = tuple(
                DimensionWindow(
                    start,
                    end,
                    with_corrections(
                        dimension_usage(conn, account_id, BOOK_METERS, start, end), corrections, start, end
                    ),
                )
                for start, end in cut(segment.start, segment.end, catalog.cut_dates)
            )
        result.append(SegmentUsage(segment, usage, versions, plans, windows))
    return result


def uncovered_windows(segments: Sequence[subscriptions.Segment], period: Period) -> list[tuple[datetime, datetime]]:
    """The parts of ``period`` no subscription segment covers (pure)."""
    gaps, cursor = [], period.start
    for segment in segments:
        if segment.start > cursor:
            gaps.append((cursor, segment.start))
        cursor = max(cursor, segment.end)
    if cursor < period.end:
        gaps.append((cursor, period.end))
    return gaps
