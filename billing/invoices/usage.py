"""An invoice's usage: per subscription segment, from the rollups plus the corrections dated in it.

:func:`period_usage` and :func:`window_usage` read (the rollups and ``usage_adjustments``, through
:mod:`spanmeter.billing.rollups` and :mod:`spanmeter.billing.adjustments`); :func:`billable_usage` and
:func:`uncovered_windows` compute, without a database.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

import psycopg

from .. import adjustments, subscriptions
from ..periods import Period
from ..rating import BILLABLE_METRICS, billable_quantities
from ..rollups import RollupTotal, rollup_totals

__all__ = ["SegmentUsage", "WindowUsage", "billable_usage", "period_usage", "uncovered_windows", "window_usage"]

_METRIC_OF_METER = {meter: metric.code for metric in BILLABLE_METRICS.values() for meter in metric.meters}

# (billable metric -> quantity incl. corrections, meter -> meter versions, span plan code -> quantity)
WindowUsage = tuple[dict[str, Decimal], dict[str, set[int]], dict[str, Decimal]]


@dataclass(frozen=True)
class SegmentUsage:
    segment: subscriptions.Segment
    usage: dict[str, Decimal]  # billable metric -> quantity (ledger + corrections)
    meter_versions: dict[str, set[int]]
    plan_codes: dict[str, Decimal]  # span plan code -> quantity, all meters


def billable_usage(totals: Mapping[str, RollupTotal], corrections: Iterable[adjustments.Adjustment]) -> WindowUsage:
    """A window's usage from its rollup totals and its corrections (pure); meters no billable metric knows
    are left out."""
    meters: dict[str, Decimal] = {code: t.quantity for code, t in totals.items()}
    for correction in corrections:
        meters[correction.meter_code] = meters.get(correction.meter_code, Decimal(0)) + correction.quantity
    versions = {code: set(t.meter_versions) for code, t in totals.items()}
    plans: dict[str, Decimal] = {}
    for t in totals.values():
        for plan_code, quantity in t.by_plan_code.items():
            plans[plan_code] = plans.get(plan_code, Decimal(0)) + quantity
    known = {code: q for code, q in meters.items() if code in _METRIC_OF_METER}
    return billable_quantities(known), versions, plans


def window_usage(conn: psycopg.Connection, account_id: str, start: datetime, end: datetime) -> WindowUsage:
    """:func:`billable_usage` of [start, end), read from the rollups and the corrections."""
    return billable_usage(
        rollup_totals(conn, account_id, start, end), adjustments.for_account(conn, account_id, start, end)
    )


def period_usage(conn: psycopg.Connection, account_id: str, period: Period) -> list[SegmentUsage]:
    """Usage per subscription segment of ``period``."""
    result = []
    for segment in subscriptions.segments(conn, account_id, period.start, period.end):
        usage, versions, plans = window_usage(conn, account_id, segment.start, segment.end)
        result.append(SegmentUsage(segment, usage, versions, plans))
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
