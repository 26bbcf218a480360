"""The dead-letter tables in the ledger: the queries behind dead-letter replay and resolve
(:mod:`spanmeter.collector.replay`).

``rejected_spans`` keeps every span the collector could not bill, with its payload; ``dead_letter_replays``
and ``dead_letter_resolutions`` record, once per span and append-only, that it was billed by a replay or
decided by an operator. Selection locks the pending spans it takes (``FOR UPDATE … SKIP LOCKED``), so two
replays running at once never take one span twice. Each function takes the caller's connection and never
commits.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal

import psycopg

__all__ = [
    "ReplayRecord",
    "conflicting_row",
    "lock_rejected",
    "outcome",
    "reason_of",
    "record_replays",
    "record_resolution",
    "select_pending",
]

_SELECT = """
SELECT r.rejection_key, r.reason, r.payload, r.producer
FROM rejected_spans r
WHERE NOT EXISTS (SELECT 1 FROM dead_letter_replays d WHERE d.rejection_key = r.rejection_key)
  AND NOT EXISTS (SELECT 1 FROM dead_letter_resolutions s WHERE s.rejection_key = r.rejection_key)
  AND r.reason <> 'key_conflict'
  AND (%(reason)s::text IS NULL OR r.reason = %(reason)s)
  AND (%(key)s::uuid IS NULL OR r.rejection_key = %(key)s)
ORDER BY r.rejected_at, r.rejection_key
FOR UPDATE OF r SKIP LOCKED
"""
# a replay running at the same time may have recorded the span first: its rows are then duplicates here
_RECORD = """
INSERT INTO dead_letter_replays (rejection_key, replayed_by, reason, patch, usage_rows, idempotency_keys,
                                 authorization_check)
VALUES (%s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (rejection_key) DO NOTHING
"""

# (rejection_key, replayed_by, why, patch as JSON, usage rows, idempotency keys, authorization check)
ReplayRecord = tuple[object, str, str, str, int, list[str], str]


def reason_of(conn: psycopg.Connection, rejection_key: str) -> str | None:
    """The rejection reason of one rejected span, None when there is no such span."""
    row = conn.execute("SELECT reason FROM rejected_spans WHERE rejection_key = %s", (rejection_key,)).fetchone()
    return row[0] if row else None


def select_pending(
    conn: psycopg.Connection, reason: str | None, rejection_key: str | None
) -> list[tuple[object, str, bytes, str | None]]:
    """(rejection key, reason, payload, producer) of the pending spans selected, locked for this transaction;
    ``key_conflict`` spans are resolved, never replayed, so never selected."""
    return conn.execute(_SELECT, {"reason": reason, "key": rejection_key}).fetchall()


def record_replays(conn: psycopg.Connection, records: Sequence[ReplayRecord]) -> None:
    """Record that these spans were billed by a replay (a span recorded already keeps its first record)."""
    with conn.cursor() as cur:
        cur.executemany(_RECORD, records)


def lock_rejected(conn: psycopg.Connection, rejection_key: str) -> tuple[str, bytes, list[str]] | None:
    """(reason, payload, meter codes) of one rejected span, locked for this transaction; None when unknown."""
    return conn.execute(
        "SELECT reason, payload, meter_codes FROM rejected_spans WHERE rejection_key = %s FOR UPDATE",
        (rejection_key,),
    ).fetchone()


def outcome(conn: psycopg.Connection, rejection_key: str) -> str | None:
    """``replayed``, ``resolved (<decision>)``, or None while the span is pending."""
    row = conn.execute(
        "SELECT 'replayed' FROM dead_letter_replays WHERE rejection_key = %(k)s UNION ALL "
        "SELECT 'resolved (' || decision || ')' FROM dead_letter_resolutions WHERE rejection_key = %(k)s",
        {"k": rejection_key},
    ).fetchone()
    return row[0] if row else None


def conflicting_row(conn: psycopg.Connection, idempotency_key: str) -> tuple[str, Decimal, datetime] | None:
    """(account, quantity, occurred_at) of the ledger's row under this key, whatever its end time (the key
    registry says which row holds the key), or None."""
    return conn.execute(
        "SELECT u.account_id, u.quantity, u.occurred_at FROM usage_event_keys k"
        " JOIN usage_events u ON u.occurred_at = k.occurred_at AND u.idempotency_key = k.idempotency_key"
        " WHERE k.idempotency_key = %s",
        (idempotency_key,),
    ).fetchone()


def record_resolution(
    conn: psycopg.Connection,
    rejection_key: str,
    *,
    resolved_by: str,
    decision: str,
    why: str,
    adjustment_keys: Sequence[str],
) -> None:
    """Record an operator's decision on a rejected span (once per span)."""
    conn.execute(
        "INSERT INTO dead_letter_resolutions (rejection_key, resolved_by, decision, reason, adjustment_keys)"
        " VALUES (%s, %s, %s, %s, %s)",
        (rejection_key, resolved_by, decision, why, list(adjustment_keys)),
    )
