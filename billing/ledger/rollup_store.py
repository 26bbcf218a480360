"""The rollup tables in the ledger: every query of :mod:`spanmeter.billing.rollups`, and the fold, the rebuild and
the check (the SQL half of the rollups; the aggregations and their arithmetic are in ``billing/rollups.py``).

How rollups stay exact (migration ``0005_rollup_deltas``), in two steps:

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
   through the ``usage_rollup_jobs`` view), *in the same transaction*, in key order, holding a
   transaction-level advisory lock: one folder at a time, and a delta is either pending or folded, never both
   and never neither, whatever crashes. It never uses a time or sequence watermark (``created_at`` is a
   transaction's start, not its commit order).

Readers add the pending deltas to the folded rows **in one statement** (one snapshot): a fold that commits
between two statements cannot make a delta count twice or not at all. :func:`totals_rows`,
:func:`bucket_rows`, :func:`distinct_jobs`, :func:`check`, the ``*_live`` views (for Grafana and ad-hoc SQL)
all do. Distinct jobs are exact as |folded set ∪ pending arrays|.

``spanmeter rollups check`` compares the live daily rollups and distinct jobs with a recomputation from the
raw ledger (there should be no difference); ``spanmeter rollups rebuild`` locks out the folder, blocks
ingest with a SHARE lock on ``usage_events``, discards every pending delta (their rows are recomputed) and
recomputes all three tables.

Every function takes the caller's connection; only :func:`fold` and :func:`rebuild` open a transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

import psycopg

__all__ = [
    "FOLD_LOCK_ID",
    "TOTALS",
    "FoldResult",
    "PendingDeltas",
    "RollupDifference",
    "accounts_with_usage",
    "bucket_rows",
    "check",
    "dimension_rows",
    "distinct_jobs",
    "fold",
    "pending_deltas",
    "raw_readers",
    "rebuild",
    "totals_rows",
]

# Transaction-level advisory lock held by whoever writes the rollup tables (the folder, a rebuild):
# "rollupsf" in ASCII, the same in every spanmeter process.
FOLD_LOCK_ID = 0x726F6C6C75707366


@dataclass(frozen=True)
class RollupDifference:
    table: str
    key: tuple[str, ...]
    maintained: str | None  # "quantity/events" as maintained, None when the row is missing
    recomputed: str | None  # the same from the raw ledger


# Three plain ranges (whole days from the daily table, the hour edges before and after them from the hourly
# one) plus the pending deltas of the whole window, each an index range scan on (account_id, bucket_start) whatever plan PostgreSQL caches for the
# prepared statement: a NOT (…) filter instead makes the generic plan read the whole month of hourly rows.
TOTALS = """
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


# The same three ranges plus pending deltas, per (meter, dimension, provider) of the given meters: usage per LLM
# model (and its provider) or GPU model, for metrics priced from a price book.
_DIMENSIONS = """
SELECT meter_code, dimension, provider, sum(quantity) FROM (
    SELECT meter_code, dimension, provider, quantity FROM usage_rollups_daily
     WHERE account_id = %(account)s AND meter_code = ANY(%(meters)s)
       AND bucket_start >= %(day_from)s AND bucket_start < %(day_to)s
    UNION ALL
    SELECT meter_code, dimension, provider, quantity FROM usage_rollups_hourly
     WHERE account_id = %(account)s AND meter_code = ANY(%(meters)s)
       AND bucket_start >= %(start)s AND bucket_start < %(day_from)s
    UNION ALL
    SELECT meter_code, dimension, provider, quantity FROM usage_rollups_hourly
     WHERE account_id = %(account)s AND meter_code = ANY(%(meters)s)
       AND bucket_start >= %(day_to)s AND bucket_start < %(end)s
    UNION ALL
    SELECT meter_code, dimension, provider, quantity FROM usage_rollup_deltas
     WHERE account_id = %(account)s AND meter_code = ANY(%(meters)s)
       AND bucket_start >= %(start)s AND bucket_start < %(end)s
) AS buckets
GROUP BY meter_code, dimension, provider
ORDER BY meter_code, dimension, provider
"""

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


def totals_rows(
    conn: psycopg.Connection, account_id: str, start: datetime, end: datetime, day_from: datetime, day_to: datetime
) -> list[tuple[str, str, Decimal, int, list[int]]]:
    """(meter, span plan code, quantity, events, meter versions) of ``account_id`` over [start, end): daily rows
    for the whole days [day_from, day_to), hourly rows for the edges, plus the pending deltas."""
    params = {"account": account_id, "start": start, "end": end, "day_from": day_from, "day_to": day_to}
    return conn.execute(TOTALS, params).fetchall()


def bucket_rows(
    conn: psycopg.Connection,
    account_id: str,
    meter_code: str,
    start: datetime,
    end: datetime,
    day_from: datetime,
    day_to: datetime,
) -> list[tuple[str, Decimal, int, Decimal, datetime, Decimal]]:
    """(dimension, quantity, events, max quantity, latest at, latest quantity) per bucket of one meter."""
    params = {
        "account": account_id,
        "meter": meter_code,
        "start": start,
        "end": end,
        "day_from": day_from,
        "day_to": day_to,
    }
    return conn.execute(_BUCKETS, params).fetchall()


def dimension_rows(
    conn: psycopg.Connection,
    account_id: str,
    meters: Sequence[str],
    start: datetime,
    end: datetime,
    day_from: datetime,
    day_to: datetime,
) -> list[tuple[str, str, str, Decimal]]:
    """(meter, dimension, provider, quantity) of ``account_id`` over [start, end) for ``meters``: the dimension
    is the row's ``gen_ai.model`` or ``gpu.model``, the provider its ``gen_ai.provider.name`` ('' for none)."""
    params = {"account": account_id, "meters": list(meters), "start": start, "end": end, "day_from": day_from,
              "day_to": day_to}  # fmt: skip
    return conn.execute(_DIMENSIONS, params).fetchall()


def distinct_jobs(conn: psycopg.Connection, account_id: str, meter_code: str, start: datetime, end: datetime) -> int:
    """Distinct job ids of the months starting in [start, end): folded sets ∪ pending arrays."""
    row = conn.execute(_JOBS, {"account": account_id, "meter": meter_code, "start": start, "end": end}).fetchone()
    return int(row[0]) if row and row[0] else 0


def accounts_with_usage(
    conn: psycopg.Connection, start: datetime, end: datetime, *, with_invoices_of: datetime | None = None
) -> list[str]:
    """Accounts with rollups, pending deltas or corrections in [start, end) (and, given a period start, a
    finalized invoice of that period), sorted."""
    invoices = "UNION SELECT account_id FROM invoices WHERE period_start = %(period)s " if with_invoices_of else ""
    rows = conn.execute(
        "SELECT account_id FROM usage_rollups_daily WHERE bucket_start >= %(start)s AND bucket_start < %(end)s "
        "UNION SELECT account_id FROM usage_rollup_deltas WHERE bucket_start >= %(start)s AND bucket_start < %(end)s "
        + invoices
        + "UNION SELECT account_id FROM usage_adjustments WHERE occurred_at >= %(start)s AND occurred_at < %(end)s "
        "ORDER BY 1",
        {"start": start, "end": end, "period": with_invoices_of},
    )
    return [account for (account,) in rows]


def _recompute_select(unit: str) -> str:
    return f"""
    SELECT account_id, date_trunc('{unit}', occurred_at, 'UTC') AS bucket_start, meter_code, meter_version,
           coalesce(plan_code, '') AS plan_code,
           coalesce(metadata->>'gen_ai.model', metadata->>'gpu.model', '') AS dimension,
           coalesce(metadata->>'gen_ai.provider.name', '') AS provider,
           sum(quantity) AS quantity, count(*) AS events, max(quantity) AS max_quantity,
           max(occurred_at) AS latest_at,
           (array_agg(quantity ORDER BY occurred_at DESC, quantity DESC))[1] AS latest_quantity
      FROM usage_events {{where}}
     GROUP BY 1, 2, 3, 4, 5, 6, 7
    """


_JOBS_SELECT = """
SELECT DISTINCT account_id, date_trunc('month', occurred_at, 'UTC') AS month_start, meter_code, job_id
  FROM usage_events WHERE job_id IS NOT NULL AND meter_code = 'worker_seconds' {and_where}
"""
_COLUMNS = (
    "account_id, bucket_start, meter_code, meter_version, plan_code, dimension, provider, quantity, events,"
    " max_quantity, latest_at, latest_quantity"
)


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
           coalesce(m.plan_code, r.plan_code), coalesce(m.dimension, r.dimension), coalesce(m.provider, r.provider),
           m.quantity || '/' || m.events, r.quantity || '/' || r.events
      FROM maintained m
      FULL JOIN recomputed r USING (account_id, bucket_start, meter_code, meter_version, plan_code, dimension, provider)
     WHERE m.quantity IS DISTINCT FROM r.quantity OR m.events IS DISTINCT FROM r.events
        OR m.max_quantity IS DISTINCT FROM r.max_quantity OR m.latest_at IS DISTINCT FROM r.latest_at
        OR m.latest_quantity IS DISTINCT FROM r.latest_quantity
     ORDER BY 1, 2, 3, 4, 5, 6, 7
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
FOLD = "SELECT * FROM spanmeter_fold_rollups(%(limit)s)"


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
        row = conn.execute(FOLD, {"limit": max_deltas}).fetchone()
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
    row = conn.execute(
        "SELECT count(*), coalesce(extract(epoch FROM clock_timestamp() - min(created_at)), 0) FROM usage_rollup_deltas"
    ).fetchone()
    assert row is not None  # an aggregate always returns one row
    count, age = row
    return PendingDeltas(int(count), max(0.0, float(age)))
