"""Usage rollups: per account, meter and UTC hour/day, kept exact as usage arrives; folded, rebuilt and checked.

Month-to-date figures, invoices, quota burn and dashboards read rollups, never the raw ledger: a month of a
large account is a few hundred daily rows instead of a million events.

How they stay exact (migration ``0005_rollup_deltas``), in two steps:

1. **Deltas, in the ingest transaction.** A statement-level trigger on ``usage_events`` groups each INSERT
   statement's *new* rows (a transition table: rows skipped by ``ON CONFLICT DO NOTHING`` are not in it, so
   a retried span adds nothing) per (account, UTC hour, meter, meter version, plan code, dimension) and
   *appends* one row per group to ``usage_rollup_deltas``: sum, count, max, latest, and the distinct job ids
   of worker time as an array. Appending takes no lock on a shared row, so concurrent writers never wait for
   each other or deadlock here, and an aborted batch takes its deltas with it.
2. **Folding, in the background.** :func:`fold` (``spanmeter serve`` runs it every
   ``SPANMETER_ROLLUP_FOLD_INTERVAL_SECONDS``) consumes up to ``max_deltas`` deltas with ``DELETE …
   RETURNING`` and upserts their sums into ``usage_rollups_hourly`` and ``usage_rollups_daily``, and their
   jobs into the job sets (``usage_job_sets``, ``usage_job_set_members``: one narrow row per new job, read
   through the ``usage_rollup_jobs`` view), *in the same transaction*, in key order, holding a transaction-level advisory
   lock: one folder at a time, and a delta is either pending or folded, never both and never neither,
   whatever crashes. It never uses a time or sequence watermark (``created_at`` is a transaction's start,
   not its commit order).

Readers add the pending deltas to the folded rows **in one statement** (one snapshot): a fold that commits
between two statements cannot make a delta count twice or not at all. :func:`rollup_totals`,
:func:`aggregate`, :func:`check`, the ``*_live`` views (for Grafana and ad-hoc SQL) all do. Distinct jobs
are exact as |folded set ∪ pending arrays|.

``spanmeter rollups check`` compares the live daily rollups and distinct jobs with a recomputation from the
raw ledger (there should be no difference); ``spanmeter rollups rebuild`` locks out the folder, blocks
ingest with a SHARE lock on ``usage_events``, discards every pending delta (their rows are recomputed) and
recomputes all three tables.

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
    "FOLD_LOCK_ID",
    "Aggregate",
    "FoldResult",
    "PendingDeltas",
    "RollupDifference",
    "RollupTotal",
    "aggregate",
    "check",
    "fold",
    "pending_deltas",
    "raw_readers",
    "rebuild",
    "rollup_totals",
]

# Transaction-level advisory lock held by whoever writes the rollup tables (the folder, a rebuild):
# "rollupsf" in ASCII, the same in every spanmeter process.
FOLD_LOCK_ID = 0x726F6C6C75707366

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
# one) plus the pending deltas of the whole window, each an index range scan on (account_id, bucket_start) whatever plan PostgreSQL caches for the
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
    UNION ALL  -- pending deltas (hourly buckets), in the same snapshot as the folded rows
    SELECT meter_code, meter_version, plan_code, quantity, events FROM usage_rollup_deltas
     WHERE account_id = %(account)s AND bucket_start >= %(start)s AND bucket_start < %(end)s
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
UNION ALL
SELECT dimension, quantity, events, max_quantity, latest_at, latest_quantity FROM usage_rollup_deltas
 WHERE account_id = %(account)s AND meter_code = %(meter)s AND bucket_start >= %(start)s AND bucket_start < %(end)s
"""
# |folded set ∪ pending arrays|: a job both folded and pending counts once.
_JOBS = """
SELECT count(DISTINCT job_id) FROM (
    SELECT job_id FROM usage_rollup_jobs
     WHERE account_id = %(account)s AND meter_code = %(meter)s AND month_start >= %(start)s AND month_start < %(end)s
    UNION ALL
    SELECT unnest(job_ids) FROM usage_rollup_deltas
     WHERE account_id = %(account)s AND meter_code = %(meter)s AND job_ids IS NOT NULL
       AND date_trunc('month', bucket_start, 'UTC') >= %(start)s AND date_trunc('month', bucket_start, 'UTC') < %(end)s
) AS jobs
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


def _attached_from(conn: psycopg.Connection) -> datetime | None:
    """The start of the oldest attached ledger partition (None: no lower bound). Months before it were archived
    (``spanmeter db archive``): their rollups stay as they were, and no raw row is left to recompute them."""
    row = conn.execute("SELECT CASE WHEN isfinite(from_at) THEN from_at END FROM usage_event_coverage").fetchone()
    return row[0] if row else None


def rebuild(conn: psycopg.Connection) -> dict[str, int]:
    """Recompute every rollup table from the raw ledger in one transaction; returns rows per table.

    Holds the fold lock (no folder runs meanwhile) and a SHARE lock on ``usage_events`` (ingest waits until
    the rebuild commits, nothing is lost), discards the pending deltas (the recomputation covers their
    rows), so the rebuilt tables match the ledger exactly at commit. Archived months are left as they are:
    only the attached partitions' months are recomputed."""
    counts: dict[str, int] = {}
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (FOLD_LOCK_ID,))
        conn.execute("LOCK TABLE usage_events IN SHARE MODE")
        since = _attached_from(conn)
        keep = {"since": since or datetime.min.replace(tzinfo=UTC)}
        counts["usage_rollup_deltas discarded"] = conn.execute("DELETE FROM usage_rollup_deltas").rowcount
        for table, unit in (("usage_rollups_hourly", "hour"), ("usage_rollups_daily", "day")):
            conn.execute(f"DELETE FROM {table} WHERE bucket_start >= %(since)s", keep)
            cur = conn.execute(f"INSERT INTO {table} ({_COLUMNS}) {_recompute_select(unit).format(where='')}")
            counts[table] = cur.rowcount
        conn.execute(
            "DELETE FROM usage_job_set_members WHERE set_id IN "
            "(SELECT set_id FROM usage_job_sets WHERE month_start >= %(since)s)",
            keep,
        )
        conn.execute("DELETE FROM usage_job_sets WHERE month_start >= %(since)s", keep)
        cur = conn.execute(  # one ledger scan: every set is new, so RETURNING names them all
            f"WITH j AS MATERIALIZED ({_JOBS_SELECT.format(and_where='')}), "
            "sets AS (INSERT INTO usage_job_sets (account_id, month_start, meter_code) "
            "         SELECT DISTINCT account_id, month_start, meter_code FROM j ORDER BY 1, 2, 3 "
            "         RETURNING set_id, account_id, month_start, meter_code) "
            'INSERT INTO usage_job_set_members (set_id, job_id) SELECT s.set_id, j.job_id COLLATE "C" '
            "FROM j JOIN sets AS s USING (account_id, month_start, meter_code) ORDER BY 1, 2"
        )
        counts["usage_rollup_jobs"] = cur.rowcount
    return counts


def raw_readers() -> tuple[str, str]:
    """The statements :func:`check` (and so ``spanmeter reconcile``) reads the raw ledger with, for a window
    ``%(start)s``..``%(end)s``: bounded by ``occurred_at``, so only that window's partitions are read."""
    where = "WHERE occurred_at >= %(start)s AND occurred_at < %(end)s"
    return (
        _recompute_select("day").format(where=where),
        _JOBS_SELECT.format(and_where="AND occurred_at >= %(start)s AND occurred_at < %(end)s"),
    )


def check(
    conn: psycopg.Connection, start: datetime | None = None, end: datetime | None = None
) -> list[RollupDifference]:
    """Differences between the live daily rollups / distinct jobs (folded + pending deltas) and a
    recomputation from the raw ledger, for events with ``occurred_at`` in [start, end) (whole UTC days;
    everything when omitted), within the attached partitions (an archived month has no raw rows left to
    check against). Each comparison is one statement, so a fold committing meanwhile cannot show as a
    difference."""
    where, params = "", {}
    since = _attached_from(conn)
    if since is not None:
        start, end = (since if start is None else max(start, since)), (end or datetime.max.replace(tzinfo=UTC))
    if start is not None and end is not None:
        where, params = "WHERE occurred_at >= %(start)s AND occurred_at < %(end)s", {"start": start, "end": end}
        bucket = "AND bucket_start >= %(start)s AND bucket_start < %(end)s"
        month = "AND month_start >= %(start)s AND month_start < %(end)s"
    else:
        bucket = month = ""
    differences: list[RollupDifference] = []
    query = f"""
    WITH recomputed AS ({_recompute_select("day").format(where=where)}),
         maintained AS (SELECT * FROM usage_rollups_daily_live WHERE true {bucket})
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
         maintained AS (SELECT * FROM usage_rollup_jobs_live WHERE true {month})
    SELECT coalesce(m.account_id, r.account_id), coalesce(m.month_start, r.month_start)::text,
           coalesce(m.meter_code, r.meter_code), coalesce(m.job_id, r.job_id),
           CASE WHEN m.job_id IS NULL THEN NULL ELSE 'present' END,
           CASE WHEN r.job_id IS NULL THEN NULL ELSE 'present' END
      FROM maintained m FULL JOIN recomputed r USING (account_id, month_start, meter_code, job_id)
     WHERE m.job_id IS NULL OR r.job_id IS NULL
     ORDER BY 1, 2, 3, 4
    """
    whole_months = start is None or (
        start.day == 1 and start.hour == 0 and end is not None and (end.day == 1 or end.year == datetime.max.year)
    )
    if whole_months:  # distinct jobs are kept per month: a partial-month window cannot judge them
        for *key, maintained, recomputed in conn.execute(query, params):
            differences.append(RollupDifference("usage_rollup_jobs", tuple(key), maintained, recomputed))
    return differences


# -- folding -------------------------------------------------------------------------------------------
# The fold is the SECURITY DEFINER function spanmeter_fold_rollups(max_deltas) (migration 0006), so that the
# role serve writes as needs no right to change the rollup tables: in one statement, under the fold lock, it
# consumes (DELETE … RETURNING) at most max_deltas of the oldest deltas and adds them to both rollup tables
# and the job sets. The id range only bounds the batch: DELETE takes exactly the committed deltas its
# snapshot sees and returns exactly those, so a delta committed later (with a lower id) stays pending for the
# next fold; nothing is judged folded by a watermark. No key order is needed for the upserts: the fold lock
# makes the folder (or a rebuild) the only writer of these tables. No row comes back when another folder
# or a rebuild holds the lock.
_FOLD = "SELECT * FROM spanmeter_fold_rollups(%(limit)s)"


@dataclass(frozen=True)
class FoldResult:
    """What one :func:`fold` call did (``locked_out``: another folder or a rebuild held the lock)."""

    deltas: int
    events: int
    hourly_rows: int = 0
    daily_rows: int = 0
    new_jobs: int = 0
    locked_out: bool = False


def fold(conn: psycopg.Connection, max_deltas: int = 50_000) -> FoldResult:
    """Fold up to ``max_deltas`` pending deltas into the rollups, in one transaction; call it until it folds
    fewer than ``max_deltas``. Returns at once (``locked_out``) when another folder or a rebuild runs."""
    with conn.transaction():
        row = conn.execute(_FOLD, {"limit": max_deltas}).fetchone()
    if row is None:
        return FoldResult(0, 0, locked_out=True)
    deltas, events, hourly, daily, jobs = row
    return FoldResult(int(deltas), int(events), int(hourly), int(daily), int(jobs))


@dataclass(frozen=True)
class PendingDeltas:
    """The deltas not folded yet: how many, and how long the oldest has waited (0 when none)."""

    deltas: int
    oldest_age_seconds: float


def pending_deltas(conn: psycopg.Connection) -> PendingDeltas:
    """The fold backlog. The age is measured from the writing transaction's start (``created_at``)."""
    count, age = conn.execute(
        "SELECT count(*), coalesce(extract(epoch FROM clock_timestamp() - min(created_at)), 0) FROM usage_rollup_deltas"
    ).fetchone()
    return PendingDeltas(int(count), max(0.0, float(age)))
