"""The ledger's write path: many usage rows and rejections in one transaction, idempotently.

This is the hot path, so it speaks psycopg 3 directly (SQLAlchemy has no COPY):

1. ``COPY`` the rows into a per-connection temporary staging table (``ON COMMIT DELETE ROWS``), as COPY
   text built here in one piece (the columns' formats are known, so only text values need escaping);
2. ``INSERT INTO usage_event_keys SELECT … FROM staging ON CONFLICT DO NOTHING``: each staged row's key into
   the key registry (migration 0018: every idempotency key once, with its end time). When it registered every
   staged row (the usual case), every row is new and ``INSERT INTO usage_events SELECT … FROM staging`` takes
   them all; otherwise that INSERT takes only the rows whose key is registered at their own end time, so a
   retried or replayed row is skipped by the primary key ``(occurred_at, idempotency_key)`` and a key held at
   another end time is not inserted at all; that INSERT returns the new rows' keys. Then the rows whose key
   is held with other content (another end time, account, job, plan,
   meter version, quantity or producer) come back as :class:`KeyConflict`: retries cost more queries only
   when they happen.

``usage_events`` is partitioned by UTC month (migration 0010). The INSERT takes only rows whose month has a
partition (``usage_event_coverage``, read in the same statement), so a row of a month without one never
fails the batch: it comes back in :attr:`UsageWrite.outside`, ``no_partition`` or ``archived_period``, and
the caller keeps it as a rejected span. Each transaction holds the advisory lock :data:`PARTITION_LOCK_ID`
shared (taken with the first COPY); creating, archiving or restoring a month holds it exclusively, so the
months covered cannot change between the INSERT and the look at what it left out.

The caller owns the transaction: it commits after ``write_batch`` returns, and only then acknowledges.
Span end times travel as integer microseconds since the epoch and become ``timestamptz`` in PostgreSQL,
so the conversion is exact and identical at every receiver (nanoseconds are truncated to microseconds).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

import psycopg

__all__ = [
    "PARTITION_LOCK_ID",
    "KeyConflict",
    "LedgerWriter",
    "RejectedRequestRow",
    "RejectedSpanRow",
    "UsageEventTuple",
    "UsageWrite",
    "encode_copy",
    "iso_utc_us",
]

log = logging.getLogger(__name__)

# A usage event (collector.processors.UsageEvent) in the COPY encoding of usage_events
# (collector.exporters.rows.usage_event_tuple makes it; models.UsageEventRecord reads the row back):
# (occurred_at_us, idempotency_key hex, account_id, job_id, plan_code, meter_code, meter_version,
#  quantity as a decimal string, unit, trace_id hex, span_id hex, metadata JSON text)
UsageEventTuple = tuple[int, str, str, str | None, str | None, str, int, str, str, str, str, str]
# (rejection_key hex, reason, error_message, trace_id, span_id, meter_codes, account_id, service_name,
#  span_end_us or None, payload)
# (..., end time µs, payload, producer): producer is the authenticated sender, None without authentication
RejectedSpanRow = tuple[str, str, str, str, str, list[str], str | None, str | None, int | None, bytes, str | None]


@dataclass(frozen=True, slots=True)
class RejectedRequestRow:
    request_key: str
    reason: str
    error_message: str
    size_bytes: int
    body: bytes
    peer: str | None


_STAGING = """
CREATE TEMP TABLE IF NOT EXISTS usage_staging (
    occurred_at_us bigint NOT NULL,
    idempotency_key uuid NOT NULL,
    account_id text NOT NULL,
    job_id text,
    plan_code text,
    meter_code text NOT NULL,
    meter_version smallint NOT NULL,
    quantity numeric NOT NULL,
    unit text NOT NULL,
    trace_id text NOT NULL,
    span_id text NOT NULL,
    metadata text NOT NULL,
    -- not in the COPY: filled per COPY from the transaction-local setting (see write_copies)
    producer text DEFAULT nullif(current_setting('spanmeter.producer', true), '')
) ON COMMIT DELETE ROWS
"""
_COPY = (
    "COPY usage_staging (occurred_at_us, idempotency_key, account_id, job_id, plan_code, meter_code,"
    " meter_version, quantity, unit, trace_id, span_id, metadata) FROM STDIN"
)
# The staged rows of a covered month: only these are registered and inserted (see _OUTSIDE for the others).
_COVERED = """
  FROM usage_staging s CROSS JOIN usage_event_coverage c
 CROSS JOIN LATERAL (SELECT timestamptz 'epoch' + s.occurred_at_us * interval '1 microsecond' AS at) t
"""
_IS_COVERED = "t.at >= c.from_at AND t.at < c.to_at AND (c.archived_to IS NULL OR t.at >= c.archived_to)"
# First, each covered staged row's key into the registry; its row count says whether every staged row is new.
_REGISTER = f"""
INSERT INTO usage_event_keys (idempotency_key, occurred_at)
SELECT s.idempotency_key, t.at {_COVERED} WHERE {_IS_COVERED}
ON CONFLICT DO NOTHING
"""
_INSERT_COLUMNS = """
INSERT INTO usage_events (occurred_at, idempotency_key, account_id, job_id, plan_code, meter_code,
                          meter_version, quantity, unit, trace_id, span_id, metadata, producer)
SELECT t.at, s.idempotency_key, s.account_id, s.job_id, s.plan_code, s.meter_code, s.meter_version, s.quantity,
       s.unit, s.trace_id, s.span_id, s.metadata::jsonb, s.producer
"""
# When the registry took every staged row (the usual case), every row is new: all of them, no lookup.
_INSERT = f"{_INSERT_COLUMNS} {_COVERED} WHERE {_IS_COVERED} ON CONFLICT DO NOTHING"
# Otherwise only the rows whose key is registered at their own end time (by this batch, or with a row already in
# the ledger, which the primary key then skips as a duplicate): a key registered at another end time is not.
_INSERT_REGISTERED = f"""
{_INSERT_COLUMNS} {_COVERED}
JOIN usage_event_keys k ON k.idempotency_key = s.idempotency_key AND k.occurred_at = t.at
WHERE {_IS_COVERED}
ON CONFLICT DO NOTHING
RETURNING replace(idempotency_key::text, '-', '')
"""
# Only when rows already in the ledger were missing from the key registry (see LedgerWriter._insert): which
# staged rows did this transaction insert? Those received at this transaction's start (``received_at``
# defaults to ``now()``), which also holds under a savepoint, where ``xmin`` is the savepoint's own xid.
# Only the new/duplicate counters depend on it, never the ledger.
_NEW_KEYS = """
SELECT replace(u.idempotency_key::text, '-', '')
FROM usage_staging s
JOIN usage_events u
  ON u.occurred_at = timestamptz 'epoch' + s.occurred_at_us * interval '1 microsecond'
 AND u.idempotency_key = s.idempotency_key
WHERE u.received_at = now()
"""
# Also only then: staged rows of a month without a partition (the INSERT left them out). A month that was
# archived (``spanmeter db archive``) is ``archived_period``: its rows are no longer in the ledger, so the row
# cannot be compared with them.
_OUTSIDE = """
SELECT replace(s.idempotency_key::text, '-', ''),
       CASE WHEN t.at < c.archived_to THEN 'archived_period' ELSE 'no_partition' END
FROM usage_staging s CROSS JOIN usage_event_coverage c
CROSS JOIN LATERAL (SELECT timestamptz 'epoch' + s.occurred_at_us * interval '1 microsecond' AS at) t
WHERE (t.at >= c.from_at AND t.at < c.to_at AND (c.archived_to IS NULL OR t.at >= c.archived_to)) IS NOT TRUE
"""
# Also only then: staged rows (of a covered month) whose key the ledger already holds with other content:
# registered at another end time, or at the same end time with another account, job, plan, meter version or
# quantity (or another producer, when the held row names one). Never silently a duplicate: the exporter keeps
# each as a ``key_conflict`` rejection. Compared with what the registry and the ledger hold, so of two rows
# with one key in one batch, the one that was inserted matches and the other is the conflict. A key whose
# row is in an archived month comes back with no content (NULLs) and its end time.
_CONFLICTS = """
SELECT replace(s.idempotency_key::text, '-', ''), u.account_id, u.job_id, u.plan_code, u.meter_version,
       u.quantity::text, u.producer, (extract(epoch FROM k.occurred_at) * 1000000)::bigint
  FROM usage_staging s
 CROSS JOIN LATERAL (SELECT timestamptz 'epoch' + s.occurred_at_us * interval '1 microsecond' AS at) t
 CROSS JOIN usage_event_coverage c
  JOIN usage_event_keys k ON k.idempotency_key = s.idempotency_key
  LEFT JOIN usage_events u ON u.occurred_at = k.occurred_at AND u.idempotency_key = k.idempotency_key
 WHERE t.at >= c.from_at AND t.at < c.to_at AND (c.archived_to IS NULL OR t.at >= c.archived_to)
   AND (k.occurred_at <> t.at
        OR (u.account_id, u.job_id, u.plan_code, u.meter_code, u.meter_version, u.quantity)
           IS DISTINCT FROM (s.account_id, s.job_id, s.plan_code, s.meter_code, s.meter_version, s.quantity)
        OR (u.producer IS NOT NULL AND u.producer IS DISTINCT FROM s.producer))
"""
_COPY_PIECE_BYTES = 1 << 20
# "partitns": held shared by every writer transaction, exclusively by whatever changes the months covered
PARTITION_LOCK_ID = 0x7061727469746E73
_PIECE_SETUP = "SELECT set_config('spanmeter.producer', %s, true), pg_advisory_xact_lock_shared(%s)"
_NEEDS_ESCAPE = re.compile(r"[\\\t\n\r]").search
_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _text(value: str | None) -> str:
    """A value in COPY text format."""
    if value is None:
        return "\\N"
    return value.translate(_ESCAPES) if _NEEDS_ESCAPE(value) else value


def encode_copy(rows: Iterable[UsageEventTuple]) -> bytes:
    """Rows as the COPY text ``write_copy`` stages: one line per row, tab-separated, UTF-8. The native
    metering core (``native/``) produces these bytes itself; the differential tests hold the two equal."""
    text = _text
    return "".join(
        f"{us}\t{key}\t{text(account)}\t{text(job)}\t{text(plan)}\t{meter}\t{version}\t{quantity}\t{unit}\t"
        f"{trace}\t{span}\t{text(metadata)}\n"
        for us, key, account, job, plan, meter, version, quantity, unit, trace, span, metadata in rows
    ).encode()


def iso_utc_us(us: int) -> str:
    """An end time as the ledger keeps it (microseconds since the epoch, UTC) in ISO 8601, ``…Z``."""
    moment = datetime.fromtimestamp(us // 1_000_000, UTC).replace(microsecond=us % 1_000_000)
    return moment.isoformat().replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class KeyConflict:
    """A staged row whose key the ledger already holds with other content: what the ledger holds. ``account_id``
    None: the holding row is in an archived month (only its end time is known, from the key registry)."""

    idempotency_key: str
    account_id: str | None
    job_id: str | None
    plan_code: str | None
    meter_version: int | None
    quantity: str | None
    producer: str | None = None  # None: the stored row names no producer (then any producer matches)
    occurred_at_us: int | None = None  # the holding row's end time (µs since the epoch); None: not compared

    def differs(
        self,
        account_id: str,
        job_id: str | None,
        plan_code: str | None,
        version: int,
        quantity: str,
        producer: str | None = None,
        occurred_at_us: int | None = None,
    ) -> bool:
        if self.account_id is None:  # held by an archived month's row, so at another end time
            return True
        if self.occurred_at_us is not None and occurred_at_us is not None and self.occurred_at_us != occurred_at_us:
            return True
        mine = (self.account_id, self.job_id, self.plan_code, self.meter_version, Decimal(self.quantity or "NaN"))
        if mine != (account_id, job_id, plan_code, version, Decimal(quantity)):
            return True
        return self.producer is not None and self.producer != producer

    def describe(self) -> str:
        ended = f", ended {iso_utc_us(self.occurred_at_us)}" if self.occurred_at_us is not None else ""
        if self.account_id is None:
            return f"a row of an archived month{ended}"
        return (
            f"account {self.account_id!r}, job {self.job_id!r}, plan {self.plan_code!r}, "
            f"meter version {self.meter_version}, quantity {self.quantity}, producer {self.producer!r}{ended}"
        )


@dataclass(frozen=True, slots=True)
class UsageWrite:
    """What one ``write_usage`` did: how many rows were new, and which (``None``: all of them); the staged
    rows whose key the ledger holds with other content; the staged rows of a month without a partition, as
    (idempotency key, reason) with reason ``no_partition`` or ``archived_period``."""

    staged: int
    inserted: int
    inserted_keys: frozenset[str] | None
    conflicts: tuple[KeyConflict, ...] = ()
    outside: tuple[tuple[str, str], ...] = ()

    def is_new(self, idempotency_key: str) -> bool:
        return self.inserted_keys is None or idempotency_key in self.inserted_keys


_INSERT_REJECTED_SPAN = """
INSERT INTO rejected_spans (rejection_key, reason, error_message, trace_id, span_id, meter_codes, account_id,
                            service_name, span_ended_at, payload, producer)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, timestamptz 'epoch' + %s * interval '1 microsecond', %s, %s)
ON CONFLICT DO NOTHING
"""
_INSERT_REJECTED_REQUEST = """
INSERT INTO rejected_requests (request_key, reason, error_message, size_bytes, stored_bytes, peer, body)
VALUES (%s, %s, %s, %s, %s, %s, %s)
ON CONFLICT DO NOTHING
"""


class LedgerWriter:
    """Writes batches on one connection. Not thread-safe: one writer per connection."""

    def __init__(self, conn: psycopg.Connection) -> None:
        self.conn = conn
        conn.execute(_STAGING)
        conn.commit()

    def write_usage(self, rows: Sequence[UsageEventTuple], producer: str | None = None) -> UsageWrite:
        """Stage and insert rows (the caller commits); say which were new to the ledger."""
        return self.write_copies([(producer, encode_copy(rows))], len(rows))

    def write_copy(self, copy_text: bytes, staged: int) -> UsageWrite:
        """:meth:`write_copies` of one piece with no producer."""
        return self.write_copies([(None, copy_text)], staged)

    def write_copies(self, pieces: Sequence[tuple[str | None, bytes]], staged: int) -> UsageWrite:
        """Stage ``staged`` rows given as COPY text (:func:`encode_copy`'s format, UTF-8; the native core
        writes the same bytes), each piece with the producer its rows record (None: none), and insert them
        (the caller commits); say which were new to the ledger, and which conflict with it."""
        if not staged:
            return UsageWrite(0, 0, None)
        with self.conn.cursor() as cur:
            for producer, copy_text in pieces:
                if not copy_text:
                    continue
                # the staging column's default reads it: the COPY text itself carries no producer
                cur.execute(_PIECE_SETUP, (producer or "", PARTITION_LOCK_ID))
                with cur.copy(_COPY) as copy:
                    # in 1 MiB pieces: libpq's output buffer grows to the largest piece and keeps that size
                    # for the connection's life, so one 16 MiB write would pin 16 MiB per writer connection
                    view = memoryview(copy_text)
                    for start in range(0, len(view), _COPY_PIECE_BYTES):
                        copy.write(view[start : start + _COPY_PIECE_BYTES])
            inserted, new_keys = self._insert(cur, staged)
            if new_keys is None:
                return UsageWrite(staged, inserted, None)
            cur.execute(_CONFLICTS)
            conflicts = tuple(KeyConflict(*row) for row in cur.fetchall())
            cur.execute(_OUTSIDE)
            outside = tuple((key, reason) for key, reason in cur.fetchall())
            return UsageWrite(staged, inserted, new_keys, conflicts, outside)

    @staticmethod
    def _insert(cur: psycopg.Cursor, staged: int) -> tuple[int, frozenset[str] | None]:
        """Register the staged rows' keys, then insert the rows that may go in. Returns how many went in, and
        which (their keys as 32 hex digits), or None when all of them did."""
        cur.execute(_REGISTER)
        if cur.rowcount == staged:
            cur.execute(_INSERT)
            if cur.rowcount == staged:
                return staged, None
            # every key was new to the registry, yet the ledger held some rows: rows written without their
            # keys (a receiver older than migration 0018 still running after the upgrade). Billed once all
            # the same (the primary key); said, and the new ones found by their transaction.
            log.warning(
                "%d of %d staged rows were already in the ledger but not in its key registry: rows written "
                "without registering their keys (stop every older `spanmeter serve` before `db upgrade`)",
                staged - cur.rowcount,
                staged,
            )
            cur.execute(_NEW_KEYS)
            new_keys = frozenset(key for (key,) in cur.fetchall())
            return len(new_keys), new_keys
        cur.execute(_INSERT_REGISTERED)
        new_keys = frozenset(key for (key,) in cur.fetchall())
        return len(new_keys), new_keys

    def discard_staged(self) -> None:
        """Empty the staging table before another ``write_usage`` in the same transaction (staged rows live
        until commit): the rare path that writes a batch in parts, under savepoints."""
        self.conn.execute("DELETE FROM usage_staging")

    def write_rejected_spans(self, rows: Iterable[RejectedSpanRow]) -> None:
        rows = list(rows)
        if rows:
            with self.conn.cursor() as cur:
                cur.executemany(_INSERT_REJECTED_SPAN, rows)

    def write_rejected_request(self, row: RejectedRequestRow) -> None:
        self.conn.execute(
            _INSERT_REJECTED_REQUEST,
            (row.request_key, row.reason, row.error_message, row.size_bytes, len(row.body), row.peer, row.body),
        )
