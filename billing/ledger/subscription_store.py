"""Subscriptions in the ledger: the queries behind :mod:`spanmeter.billing.subscriptions`.

``subscriptions`` is effective-dated and append-only: a change is a new row. Each function takes the caller's
connection and never commits; rows come back as :data:`SubscriptionRow` tuples in :data:`COLUMNS` order.
"""

from __future__ import annotations

from datetime import datetime

import psycopg

__all__ = ["COLUMNS", "SubscriptionRow", "insert", "rows"]

COLUMNS = ("subscription_id", "account_id", "plan_code", "pricing_version", "currency", "valid_from", "valid_to",
           "created_at", "created_by", "note")  # fmt: skip
_COLUMNS = ", ".join(COLUMNS)

# (subscription_id, account_id, plan_code, pricing_version, currency, valid_from, valid_to, created_at,
#  created_by, note)
SubscriptionRow = tuple[int, str, str, str, str, datetime, datetime | None, datetime, str, str | None]


def insert(
    conn: psycopg.Connection,
    *,
    account_id: str,
    plan_code: str,
    pricing_version: str,
    currency: str,
    valid_from: datetime,
    valid_to: datetime | None,
    created_by: str,
    note: str | None,
) -> SubscriptionRow:
    """Append a subscription row; the row as stored."""
    row = conn.execute(
        f"INSERT INTO subscriptions (account_id, plan_code, pricing_version, currency, valid_from, valid_to,"
        f" created_by, note) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) RETURNING {_COLUMNS}",
        (account_id, plan_code, pricing_version, currency, valid_from, valid_to, created_by, note),
    ).fetchone()
    assert row is not None  # INSERT … RETURNING of one row
    return row


def rows(conn: psycopg.Connection, account_id: str | None = None) -> list[SubscriptionRow]:
    """Every subscription row (of one account), by account, then valid_from, then insertion order."""
    where, params = ("WHERE account_id = %s", (account_id,)) if account_id else ("", ())
    return conn.execute(
        f"SELECT {_COLUMNS} FROM subscriptions {where} ORDER BY account_id, valid_from, subscription_id", params
    ).fetchall()
