"""The ledger's monthly partitions: which exist, which are created ahead, and what a span of another month meets.

``usage_events`` is range-partitioned by UTC month on ``occurred_at`` (migration ``0010_partitioned_ledger``).
A ledger upgraded from an unpartitioned one keeps its old table, unrewritten, as one partition
``usage_events_before_YYYY_MM`` (everything before the cutover); every later month is its own partition,
``usage_events_YYYY_MM``.

- **Ahead.** ``spanmeter serve`` calls :func:`ensure` at start and every ``CHECK_INTERVAL_SECONDS``: the
  current month and the next :data:`MONTHS_AHEAD` exist, so the accepted window (spans up to
  ``SPANMETER_MAX_SPAN_AGE_SECONDS`` old, a few minutes ahead) is always covered. It runs the SECURITY DEFINER
  function ``spanmeter_create_usage_partitions`` (the writer owns nothing; the partitions belong to the
  ledger's owner), under an advisory lock, so several receivers create each month once. The gauge
  ``spanmeter_ledger_partitions_end_timestamp_seconds`` (when the newest partition ends) drives the alert
  ``SpanmeterLedgerPartitionsRunningOut`` long before a span could meet a missing month.
- **Missing.** A row whose month has no partition is never lost and never fails its batch: the writer leaves it
  out of the INSERT and the exporter keeps its span in ``rejected_spans`` as ``no_partition`` (alert
  ``SpanmeterSpansWithoutPartition``); create the month (``spanmeter db partitions --create``) and replay
  (``spanmeter dead-letter replay --reason no_partition``). Months before the first monthly partition belong to
  the legacy partition (``MINVALUE`` to the cutover), so older usage always has a home while it is attached;
  ``ensure(back_to=…)`` only adds months below a lower bound, which exists once the legacy partition is archived
  (and is refused over archived months).
- **Archived.** A month archived by ``spanmeter db archive`` (see :mod:`spanmeter.billing.ledger.archive`) is gone from
  the ledger's unique key: a span of that month would be billed twice if accepted, so it is kept as
  ``archived_period`` instead, and no partition may be created over it again (restore it).

``spanmeter db partitions`` prints :func:`list_partitions`; with ``--create`` it calls :func:`ensure` first.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import psycopg

from .writer import PARTITION_LOCK_ID

__all__ = [
    "CHECK_INTERVAL_SECONDS",
    "MONTHS_AHEAD",
    "PARTITION_LOCK_ID",
    "Coverage",
    "Partition",
    "coverage",
    "ensure",
    "list_partitions",
    "month_start",
    "months_after",
    "months_ahead_for",
]

MONTHS_AHEAD = 2  # besides the current month, at least (see months_ahead_for)
CHECK_INTERVAL_SECONDS = 3600.0


@dataclass(frozen=True)
class Partition:
    """An attached partition: its bounds (``from_at`` None: MINVALUE, the legacy table), its size."""

    name: str
    from_at: datetime | None
    to_at: datetime
    rows_estimate: int
    total_bytes: int


@dataclass(frozen=True)
class Coverage:
    """The months the ledger can take rows for, ``[from_at, to_at)`` (``from_at`` None: no lower bound), and
    the end of the newest archived month (None: nothing archived)."""

    from_at: datetime | None
    to_at: datetime | None
    archived_to: datetime | None

    def horizon_seconds(self, now: datetime) -> float:
        """How long until the newest partition ends (negative: already past; 0 without partitions)."""
        return (self.to_at - now).total_seconds() if self.to_at is not None else 0.0


def months_ahead_for(max_clock_skew_seconds: int) -> int:
    """Months after the current one to keep ready so that a span ending ``max_clock_skew_seconds`` ahead (the
    latest the receiver accepts) has its month: at least :data:`MONTHS_AHEAD`, at most 24."""
    return min(24, max(MONTHS_AHEAD, -(-max_clock_skew_seconds // (28 * 86400)) + 1))


def month_start(moment: datetime) -> datetime:
    """The first instant of ``moment``'s UTC month."""
    moment = moment.astimezone(UTC)
    return datetime(moment.year, moment.month, 1, tzinfo=UTC)


def months_after(start: datetime, months: int) -> datetime:
    """The first instant of the UTC month ``months`` after ``start``'s."""
    index = start.year * 12 + start.month - 1 + months
    return datetime(index // 12, index % 12 + 1, 1, tzinfo=UTC)


def coverage(conn: psycopg.Connection) -> Coverage:
    """What the ledger covers now (one statement)."""
    # the legacy partition starts at -infinity, which Python's datetime cannot hold: "no lower bound"
    row = conn.execute(
        "SELECT CASE WHEN isfinite(from_at) THEN from_at END, to_at, archived_to FROM usage_event_coverage"
    ).fetchone()
    return Coverage(row[0], row[1], row[2])


def ensure(
    conn: psycopg.Connection,
    now: datetime | None = None,
    months_ahead: int = MONTHS_AHEAD,
    back_to: datetime | None = None,
) -> list[str]:
    """Create every missing month up to ``months_ahead`` after ``now``'s (and, with ``back_to``, down to its
    month, below the oldest partition); returns the partitions created. The caller commits."""
    now = now or datetime.now(UTC)
    through = months_after(month_start(now), months_ahead)
    rows = conn.execute(
        "SELECT * FROM spanmeter_create_usage_partitions(%s, %s)",
        (through, month_start(back_to) if back_to is not None else None),
    ).fetchall()
    return [name for (name,) in rows]


def list_partitions(conn: psycopg.Connection) -> list[Partition]:
    """The attached partitions, oldest first, with the planner's row estimate and their size on disk."""
    rows = conn.execute(
        """
        SELECT p.partition_name, CASE WHEN isfinite(p.from_at) THEN p.from_at END, p.to_at,
               greatest(c.reltuples, 0)::bigint, coalesce(pg_total_relation_size(c.oid), 0)
          FROM usage_event_partitions p
          LEFT JOIN pg_class c ON c.oid = to_regclass(p.partition_name)
         ORDER BY p.from_at
        """
    ).fetchall()
    return [Partition(name, start, end, int(estimate), int(size)) for name, start, end, estimate, size in rows]
