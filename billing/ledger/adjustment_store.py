"""Usage corrections in the ledger: the queries behind :mod:`spanmeter.billing.adjustments`.

``usage_adjustments`` is append-only (migration 0004): a row is inserted once under its idempotency key and
never changed. Each function takes the caller's connection and never commits. Rows come back as
:data:`AdjustmentRow` tuples in :data:`COLUMNS` order; the domain module turns them into ``Adjustment``.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

import psycopg

__all__ = ["COLUMNS", "AdjustmentRow", "by_key", "in_window", "insert"]

COLUMNS = ("idempotency_key", "account_id", "meter_code", "quantity", "occurred_at", "reason", "created_by",
           "created_at", "reference")  # fmt: skip
_COLUMNS = ", ".join(COLUMNS)

# (idempotency_key, account_id, meter_code, quantity, occurred_at, reason, created_by, created_at, reference)
AdjustmentRow = tuple[str, str, str, Decimal, datetime, str, str, datetime, str | None]


def insert(
    conn: psycopg.Connection,
    *,
    idempotency_key: str,
    account_id: str,
    meter_code: str,
    quantity: Decimal,
    occurred_at: datetime,
    reason: str,
    created_by: str,
    reference: str | None,
) -> AdjustmentRow | None:
    """Insert a correction; the stored row, or None when its idempotency key already exists."""
    return conn.execute(
        f"INSERT INTO usage_adjustments (idempotency_key, account_id, meter_code, quantity, occurred_at, reason,"
        f" created_by, reference) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING RETURNING {_COLUMNS}",
        (idempotency_key, account_id, meter_code, quantity, occurred_at, reason, created_by, reference),
    ).fetchone()


def by_key(conn: psycopg.Connection, idempotency_key: str) -> AdjustmentRow | None:
    """The correction stored under ``idempotency_key``, or None."""
    return conn.execute(
        f"SELECT {_COLUMNS} FROM usage_adjustments WHERE idempotency_key = %s", (idempotency_key,)
    ).fetchone()


def exists(conn: psycopg.Connection, idempotency_key: str) -> bool:
    """Whether a correction is stored under ``idempotency_key``."""
    return (
        conn.execute("SELECT 1 FROM usage_adjustments WHERE idempotency_key = %s", (idempotency_key,)).fetchone()
        is not None
    )


def in_window(conn: psycopg.Connection, account_id: str, start: datetime, end: datetime) -> list[AdjustmentRow]:
    """The account's corrections dated in [start, end), oldest first."""
    return conn.execute(
        f"SELECT {_COLUMNS} FROM usage_adjustments WHERE account_id = %s AND occurred_at >= %s AND occurred_at < %s"
        " ORDER BY occurred_at, idempotency_key",
        (account_id, start, end),
    ).fetchall()
