"""Reconciliation in the ledger: the queries behind :mod:`spanmeter.billing.reconcile`.

``reconciliation_runs`` is append-only: each run is one row (its delta and the whole result as JSON), and
``spanmeter serve`` exports the latest delta. The check of keys billed at two end times is one join of the
period's rows with the whole attached ledger by key. Each function takes the caller's connection and never
commits.
"""

from __future__ import annotations

import json
from datetime import datetime
from decimal import Decimal
from typing import Any

import psycopg

__all__ = ["BilledTwiceRow", "billed_twice_rows", "insert_run", "latest_run"]

# A row of the period whose key an earlier-received row holds at another end time, and no correction
# references it yet (usage_adjustments.reference = the key as 32 hex digits).
_BILLED_TWICE = """
SELECT replace(d.idempotency_key::text, '-', ''), d.meter_code, d.quantity::text, d.account_id, d.occurred_at,
       d.producer, f.account_id, f.occurred_at, f.producer
  FROM usage_events d
  JOIN usage_events f
    ON f.idempotency_key = d.idempotency_key AND f.occurred_at <> d.occurred_at
   AND (f.received_at, f.occurred_at) < (d.received_at, d.occurred_at)
 WHERE d.occurred_at >= %(start)s AND d.occurred_at < %(end)s
   AND NOT EXISTS (SELECT FROM usage_adjustments a WHERE a.reference = replace(d.idempotency_key::text, '-', ''))
 ORDER BY d.occurred_at, 1
"""

# (key as 32 hex digits, meter, quantity as text, account, occurred_at, producer,
#  first row's account, first row's occurred_at, first row's producer)
BilledTwiceRow = tuple[str, str, str, str, datetime, str | None, str, datetime, str | None]


def billed_twice_rows(conn: psycopg.Connection, start: datetime, end: datetime) -> list[BilledTwiceRow]:
    """Rows ending in [start, end) whose key the ledger already held at another end time, not yet corrected."""
    return conn.execute(_BILLED_TWICE, {"start": start, "end": end}).fetchall()


def insert_run(conn: psycopg.Connection, period_start: datetime, delta: Decimal, details: dict[str, Any]) -> None:
    """Store one reconciliation run."""
    conn.execute(
        "INSERT INTO reconciliation_runs (period_start, delta, details) VALUES (%s, %s, %s)",
        (period_start, delta, json.dumps(details)),
    )


def latest_run(conn: psycopg.Connection) -> tuple[Decimal, datetime] | None:
    """(delta, when it ran) of the most recent run over all periods, None when reconciliation never ran."""
    row = conn.execute("SELECT delta, ran_at FROM reconciliation_runs ORDER BY run_id DESC LIMIT 1").fetchone()
    return (Decimal(row[0]), row[1]) if row else None
