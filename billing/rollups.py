"""Usage rollups, read as billing needs them: per-meter totals and the aggregations (:data:`AGGREGATES`).

Month-to-date figures, invoices, quota burn and dashboards read rollups, never the raw ledger: a month of a
large account is a few hundred daily rows instead of a million events. How the rollups are kept exact (deltas
in the ingest transaction, folded in the background), rebuilt and checked is the ledger's business:
:mod:`spanmeter.billing.ledger.rollup_store`, which holds every query; this module holds the arithmetic.

A window is whole UTC hours: :func:`split_days` cuts it into the whole days read from the daily table and the
hour edges read from the hourly one (pure).

Aggregations (:data:`AGGREGATES`): each is computed from the rollups for an account and a window of whole
UTC hours. ``sum`` (worker/GPU seconds, tokens), ``count`` (events, e.g. API requests), ``unique_count``
(distinct ``job_id`` of worker time, per UTC month), ``max`` / ``latest`` (a point-in-time value: the
largest or the most recent quantity in the window), ``weighted_sum`` (quantity × a weight per dimension,
e.g. tokens weighted by model; the dimension is ``gen_ai.model`` or ``gpu.model`` from the row's metadata).
:func:`totals_from_rows` and :func:`aggregate_buckets` compute from rows and are testable without a database.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from types import MappingProxyType
from typing import Literal

import psycopg

from .ledger import rollup_store

__all__ = [
    "AGGREGATES",
    "Aggregate",
    "RollupTotal",
    "aggregate",
    "aggregate_buckets",
    "dimension_usage",
    "rollup_totals",
    "split_days",
    "totals_from_rows",
]

Kind = Literal["sum", "count", "unique_count", "max", "latest", "weighted_sum"]


@dataclass(frozen=True)
class Aggregate:
    code: str
    meter_code: str
    kind: Kind
    description: str
    weights: Mapping[str, Decimal] = field(default_factory=dict)  # weighted_sum: dimension -> weight
    default_weight: Decimal = Decimal(1)


AGGREGATES: Mapping[str, Aggregate] = MappingProxyType(
    {
        a.code: a
        for a in (
            Aggregate("worker_seconds", "worker_seconds", "sum", "Worker time, seconds"),
            Aggregate("gpu_seconds", "gpu_seconds", "sum", "GPU time × GPU count, seconds"),
            Aggregate("input_tokens", "input_tokens", "sum", "LLM input tokens"),
            Aggregate("output_tokens", "output_tokens", "sum", "LLM output tokens"),
            Aggregate("api_requests", "api_requests", "count", "API requests"),
            Aggregate("jobs", "worker_seconds", "unique_count", "Distinct jobs that used worker time"),
            Aggregate("largest_task_seconds", "worker_seconds", "max", "Longest single task run, seconds"),
            Aggregate("last_task_seconds", "worker_seconds", "latest", "Most recent task run, seconds"),
            Aggregate(
                "weighted_output_tokens",
                "output_tokens",
                "weighted_sum",
                "Output tokens weighted by model (small models count a tenth)",
                weights=MappingProxyType({"docpipe-classifier-small": Decimal("0.1")}),
            ),
        )
    }
)


@dataclass(frozen=True)
class RollupTotal:
    """One meter's totals for an account over a window, split by the plan code the spans carried."""

    meter_code: str
    quantity: Decimal
    events: int
    by_plan_code: Mapping[str, Decimal]
    meter_versions: tuple[int, ...]


def split_days(start: datetime, end: datetime) -> tuple[datetime, datetime]:
    """The whole UTC days inside [start, end) (an empty range when there is none)."""
    if start.utcoffset() is None or end.utcoffset() is None:
        raise ValueError("rollup windows need timezone-aware datetimes")
    start, end = start.astimezone(UTC), end.astimezone(UTC)
    for moment in (start, end):
        if moment.minute or moment.second or moment.microsecond:
            raise ValueError(f"rollup windows are whole UTC hours: {moment.isoformat()} is not")
    first_day = start.replace(hour=0)
    if first_day < start:
        first_day += timedelta(days=1)
    last_day = end.replace(hour=0)
    if last_day < first_day:
        return start, start
    return first_day, last_day


def totals_from_rows(rows: Iterable[tuple[str, str, Decimal, int, Sequence[int]]]) -> dict[str, RollupTotal]:
    """Per-meter totals from (meter, span plan code, quantity, events, meter versions) rows (pure)."""
    by_meter: dict[str, dict[str, tuple[Decimal, int]]] = {}
    versions: dict[str, set[int]] = {}
    for meter, plan, quantity, events, meter_versions in rows:
        by_meter.setdefault(meter, {})[plan] = (Decimal(quantity), int(events))
        versions.setdefault(meter, set()).update(meter_versions)
    return {
        meter: RollupTotal(
            meter_code=meter,
            quantity=sum((q for q, _ in plans.values()), Decimal(0)),
            events=sum(e for _, e in plans.values()),
            by_plan_code=MappingProxyType({plan: q for plan, (q, _) in plans.items()}),
            meter_versions=tuple(sorted(versions[meter])),
        )
        for meter, plans in by_meter.items()
    }


def rollup_totals(conn: psycopg.Connection, account_id: str, start: datetime, end: datetime) -> dict[str, RollupTotal]:
    """Per-meter totals for ``account_id`` over [start, end) (whole UTC hours): daily rows for whole days,
    hourly rows for the edges."""
    day_from, day_to = split_days(start, end)
    return totals_from_rows(rollup_store.totals_rows(conn, account_id, start, end, day_from, day_to))


def dimension_usage(
    conn: psycopg.Connection, account_id: str, meters: Sequence[str], start: datetime, end: datetime
) -> dict[tuple[str, str, str], Decimal]:
    """(meter, dimension, provider) -> quantity over [start, end) (whole UTC hours) for ``meters``."""
    day_from, day_to = split_days(start, end)
    rows = rollup_store.dimension_rows(conn, account_id, meters, start, end, day_from, day_to)
    return {(meter, dimension, provider): Decimal(quantity) for meter, dimension, provider, quantity in rows}


def aggregate_buckets(
    spec: Aggregate, rows: Sequence[tuple[str, Decimal, int, Decimal, datetime, Decimal]]
) -> Decimal | None:
    """A non-``unique_count`` aggregate from (dimension, quantity, events, max, latest at, latest quantity)
    buckets (pure); None when there is none."""
    if spec.kind == "unique_count":
        raise ValueError("unique counts are read as distinct jobs, not from buckets")
    if not rows:
        return None
    if spec.kind == "sum":
        return sum((Decimal(r[1]) for r in rows), Decimal(0))
    if spec.kind == "count":
        return Decimal(sum(int(r[2]) for r in rows))
    if spec.kind == "max":
        return max(Decimal(r[3]) for r in rows)
    if spec.kind == "latest":
        return Decimal(max(rows, key=lambda r: (r[4], Decimal(r[5])))[5])
    return sum((Decimal(r[1]) * spec.weights.get(r[0], spec.default_weight) for r in rows), Decimal(0))


def aggregate(conn: psycopg.Connection, code: str, account_id: str, start: datetime, end: datetime) -> Decimal | None:
    """The aggregate ``code`` (see :data:`AGGREGATES`) for an account over [start, end); None when no usage.

    ``unique_count`` is kept per UTC month: ``start`` must be a month start and the count covers the
    months that start inside the window."""
    spec = AGGREGATES[code]
    if spec.kind == "unique_count":
        if start.day != 1 or start.hour:
            raise ValueError("unique counts are kept per UTC month: start the window on the 1st, 00:00 UTC")
        count = rollup_store.distinct_jobs(conn, account_id, spec.meter_code, start, end)
        return Decimal(count) if count else None
    day_from, day_to = split_days(start, end)
    return aggregate_buckets(
        spec, rollup_store.bucket_rows(conn, account_id, spec.meter_code, start, end, day_from, day_to)
    )
