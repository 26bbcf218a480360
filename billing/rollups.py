"""Usage rollups: per account, meter and UTC hour/day, maintained as usage arrives; rebuilt and checked on demand.

Month-to-date figures, invoices, quota burn and dashboards read rollups, never the raw ledger: a month of a
large account is a few hundred daily rows instead of a million events.

How they stay exact (see migration ``0003_rating``): a statement-level trigger on ``usage_events``
aggregates each INSERT statement's *new* rows (the ledger writer inserts a whole batch in one statement;
rows skipped as duplicates are not new) and upserts the sums into ``usage_rollups_hourly``,
``usage_rollups_daily`` and ``usage_rollup_jobs``, in key order, inside the inserting transaction. So:

- every event lands in the bucket of its ``occurred_at`` (the span end time), however late it arrives;
- two receivers committing out of order each add their own deltas: addition commutes, the result is the
  same in any commit order, and an aborted batch takes its deltas with it;
- the upkeep is one grouped upsert per batch, not one per row.

``spanmeter rollups check`` recomputes the daily rollups and distinct jobs from the raw ledger and lists
every difference (there should be none); ``spanmeter rollups rebuild`` recomputes all three tables from the
raw ledger (it blocks ingest for the duration with a SHARE lock on ``usage_events``).

Aggregations (:data:`AGGREGATES`): each is computed from the rollups for an account and a window of whole
UTC hours. ``sum`` (worker/GPU seconds, tokens), ``count`` (events, e.g. API requests), ``unique_count``
(distinct ``job_id`` of worker time, per UTC month), ``max`` / ``latest`` (a point-in-time value: the
largest or the most recent quantity in the window), ``weighted_sum`` (quantity × a weight per dimension,
e.g. tokens weighted by model; the dimension is ``gen_ai.model`` or ``gpu.model`` from the row's metadata).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from types import MappingProxyType
from typing import Literal

import psycopg

__all__ = [
    "AGGREGATES",
    "Aggregate",
    "RollupDifference",
    "RollupTotal",
    "aggregate",
    "check",
    "rebuild",
    "rollup_totals",
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


@dataclass(frozen=True)
class RollupDifference:
    table: str
    key: tuple[str, ...]
    maintained: str | None  # "quantity/events" as maintained, None when the row is missing
    recomputed: str | None  # the same from the raw ledger


def _split(start: datetime, end: datetime) -> tuple[datetime, datetime]:
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


# Three plain ranges (whole days from the daily table, the hour edges before and after them from the hourly
# one), each an index range scan on (account_id, bucket_start) whatever plan PostgreSQL caches for the
# prepared statement: a NOT (…) filter instead makes the generic plan read the whole month of hourly rows.
_TOTALS = """
SELECT meter_code, plan_code, sum(quantity), sum(events), array_agg(DISTINCT meter_version) FROM (
    SELECT meter_code, meter_version, plan_code, quantity, events FROM usage_rollups_daily
     WHERE account_id = %(account)s AND bucket_start >= %(day_from)s AND bucket_start < %(day_to)s
    UNION ALL
    SELECT meter_code, meter_version, plan_code, quantity, events FROM usage_rollups_hourly
     WHERE account_id = %(account)s AND bucket_start >= %(start)s AND bucket_start < %(day_from)s
    UNION ALL
    SELECT meter_code, meter_version, plan_code, quantity, events FROM usage_rollups_hourly
     WHERE account_id = %(account)s AND bucket_start >= %(day_to)s AND bucket_start < %(end)s
) AS buckets
GROUP BY meter_code, plan_code
ORDER BY meter_code, plan_code
"""


def rollup_totals(conn: psycopg.Connection, account_id: str, start: datetime, end: datetime) -> dict[str, RollupTotal]:
    """Per-meter totals for ``account_id`` over [start, end) (whole UTC hours): daily rows for whole days,
    hourly rows for the edges."""
    day_from, day_to = _split(start, end)
    params = {"account": account_id, "start": start, "end": end, "day_from": day_from, "day_to": day_to}
    by_meter: dict[str, dict[str, tuple[Decimal, int]]] = {}
    versions: dict[str, set[int]] = {}
    for meter, plan, quantity, events, meter_versions in conn.execute(_TOTALS, params):
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


_BUCKETS = """
SELECT dimension, quantity, events, max_quantity, latest_at, latest_quantity FROM usage_rollups_daily
 WHERE account_id = %(account)s AND meter_code = %(meter)s AND bucket_start >= %(day_from)s AND bucket_start < %(day_to)s
UNION ALL
SELECT dimension, quantity, events, max_quantity, latest_at, latest_quantity FROM usage_rollups_hourly
 WHERE account_id = %(account)s AND meter_code = %(meter)s AND bucket_start >= %(start)s AND bucket_start < %(day_from)s
UNION ALL
SELECT dimension, quantity, events, max_quantity, latest_at, latest_quantity FROM usage_rollups_hourly
 WHERE account_id = %(account)s AND meter_code = %(meter)s AND bucket_start >= %(day_to)s AND bucket_start < %(end)s
"""
_JOBS = """
SELECT count(DISTINCT job_id) FROM usage_rollup_jobs
 WHERE account_id = %(account)s AND meter_code = %(meter)s AND month_start >= %(start)s AND month_start < %(end)s
"""


def aggregate(conn: psycopg.Connection, code: str, account_id: str, start: datetime, end: datetime) -> Decimal | None:
    """The aggregate ``code`` (see :data:`AGGREGATES`) for an account over [start, end); None when no usage.

    ``unique_count`` is kept per UTC month: ``start`` must be a month start and the count covers the
    months that start inside the window."""
    spec = AGGREGATES[code]
    if spec.kind == "unique_count":
        if start.day != 1 or start.hour:
            raise ValueError("unique counts are kept per UTC month: start the window on the 1st, 00:00 UTC")
        (count,) = conn.execute(_JOBS, {"account": account_id, "meter": spec.meter_code, "start": start, "end": end})
        return Decimal(count[0]) if count[0] else None
    day_from, day_to = _split(start, end)
    rows = conn.execute(
        _BUCKETS,
        {
            "account": account_id,
            "meter": spec.meter_code,
            "start": start,
            "end": end,
            "day_from": day_from,
            "day_to": day_to,
        },
    ).fetchall()
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


def _recompute_select(unit: str) -> str:
    return f"""
    SELECT account_id, date_trunc('{unit}', occurred_at, 'UTC') AS bucket_start, meter_code, meter_version,
           coalesce(plan_code, '') AS plan_code,
           coalesce(metadata->>'gen_ai.model', metadata->>'gpu.model', '') AS dimension,
           sum(quantity) AS quantity, count(*) AS events, max(quantity) AS max_quantity,
           max(occurred_at) AS latest_at,
           (array_agg(quantity ORDER BY occurred_at DESC, quantity DESC))[1] AS latest_quantity
      FROM usage_events {{where}}
     GROUP BY 1, 2, 3, 4, 5, 6
    """


_JOBS_SELECT = """
SELECT DISTINCT account_id, date_trunc('month', occurred_at, 'UTC') AS month_start, meter_code, job_id
  FROM usage_events WHERE job_id IS NOT NULL AND meter_code = 'worker_seconds' {and_where}
"""
_COLUMNS = "account_id, bucket_start, meter_code, meter_version, plan_code, dimension, quantity, events, max_quantity, latest_at, latest_quantity"


def rebuild(conn: psycopg.Connection) -> dict[str, int]:
    """Recompute every rollup table from the raw ledger in one transaction; returns rows per table.

    Takes a SHARE lock on ``usage_events`` (ingest waits until the rebuild commits, nothing is lost) so the
    rebuilt tables match the ledger exactly at commit."""
    counts: dict[str, int] = {}
    with conn.transaction():
        conn.execute("LOCK TABLE usage_events IN SHARE MODE")
        for table, unit in (("usage_rollups_hourly", "hour"), ("usage_rollups_daily", "day")):
            conn.execute(f"DELETE FROM {table}")
            cur = conn.execute(f"INSERT INTO {table} ({_COLUMNS}) {_recompute_select(unit).format(where='')}")
            counts[table] = cur.rowcount
        conn.execute("DELETE FROM usage_rollup_jobs")
        cur = conn.execute(
            "INSERT INTO usage_rollup_jobs (account_id, month_start, meter_code, job_id) "
            + _JOBS_SELECT.format(and_where="")
        )
        counts["usage_rollup_jobs"] = cur.rowcount
    return counts


def check(
    conn: psycopg.Connection, start: datetime | None = None, end: datetime | None = None
) -> list[RollupDifference]:
    """Differences between the maintained daily rollups / distinct jobs and a recomputation from the raw
    ledger, for events with ``occurred_at`` in [start, end) (whole UTC days; everything when omitted)."""
    where, params = "", {}
    if start is not None and end is not None:
        where, params = "WHERE occurred_at >= %(start)s AND occurred_at < %(end)s", {"start": start, "end": end}
        bucket = "AND bucket_start >= %(start)s AND bucket_start < %(end)s"
        month = "AND month_start >= %(start)s AND month_start < %(end)s"
    else:
        bucket = month = ""
    differences: list[RollupDifference] = []
    query = f"""
    WITH recomputed AS ({_recompute_select("day").format(where=where)}),
         maintained AS (SELECT * FROM usage_rollups_daily WHERE true {bucket})
    SELECT coalesce(m.account_id, r.account_id), coalesce(m.bucket_start, r.bucket_start)::text,
           coalesce(m.meter_code, r.meter_code), coalesce(m.meter_version, r.meter_version)::text,
           coalesce(m.plan_code, r.plan_code), coalesce(m.dimension, r.dimension),
           m.quantity || '/' || m.events, r.quantity || '/' || r.events
      FROM maintained m
      FULL JOIN recomputed r USING (account_id, bucket_start, meter_code, meter_version, plan_code, dimension)
     WHERE m.quantity IS DISTINCT FROM r.quantity OR m.events IS DISTINCT FROM r.events
        OR m.max_quantity IS DISTINCT FROM r.max_quantity OR m.latest_at IS DISTINCT FROM r.latest_at
        OR m.latest_quantity IS DISTINCT FROM r.latest_quantity
     ORDER BY 1, 2, 3, 4, 5, 6
    """
    for *key, maintained, recomputed in conn.execute(query, params):
        differences.append(RollupDifference("usage_rollups_daily", tuple(key), maintained, recomputed))
    jobs_where = "AND occurred_at >= %(start)s AND occurred_at < %(end)s" if where else ""
    query = f"""
    WITH recomputed AS ({_JOBS_SELECT.format(and_where=jobs_where)}),
         maintained AS (SELECT * FROM usage_rollup_jobs WHERE true {month})
    SELECT coalesce(m.account_id, r.account_id), coalesce(m.month_start, r.month_start)::text,
           coalesce(m.meter_code, r.meter_code), coalesce(m.job_id, r.job_id),
           CASE WHEN m.job_id IS NULL THEN NULL ELSE 'present' END,
           CASE WHEN r.job_id IS NULL THEN NULL ELSE 'present' END
      FROM maintained m FULL JOIN recomputed r USING (account_id, month_start, meter_code, job_id)
     WHERE m.job_id IS NULL OR r.job_id IS NULL
     ORDER BY 1, 2, 3, 4
    """
    whole_months = start is None or (start.day == 1 and start.hour == 0 and end is not None and end.day == 1)
    if whole_months:  # distinct jobs are kept per month: a partial-month window cannot judge them
        for *key, maintained, recomputed in conn.execute(query, params):
            differences.append(RollupDifference("usage_rollup_jobs", tuple(key), maintained, recomputed))
    return differences
