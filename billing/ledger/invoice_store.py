"""Finalized invoices in the ledger: the queries behind :mod:`spanmeter.billing.invoices`.

Typed query functions over ``invoices`` and ``invoice_lines`` (append-only tables, migration 0003); the
invoice logic (building, numbering, what a finalized document holds) stays in ``billing/invoices/`` (a package, one module per job), which
speaks no SQL. psycopg with SQL text, like the rest of the write path: each function takes the caller's
connection and never commits.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

import psycopg

__all__ = [
    "InvoiceLineRow",
    "count_in_period",
    "insert_invoice",
    "lock_period",
    "stored_document",
    "stored_documents",
]

# (line_no, kind, meter_code, description, quantity, amount, currency, reference period start)
InvoiceLineRow = tuple[int, str, str | None, str, Decimal, Decimal, str, datetime | None]


def stored_document(conn: psycopg.Connection, account_id: str, period_start: datetime) -> dict[str, Any] | None:
    """The finalized invoice document of ``account_id`` for the period starting then, or None."""
    row = conn.execute(
        "SELECT document FROM invoices WHERE account_id = %s AND period_start = %s", (account_id, period_start)
    ).fetchone()
    return row[0] if row else None


def stored_documents(conn: psycopg.Connection, account_id: str) -> list[tuple[datetime, dict[str, Any]]]:
    """Every finalized invoice document of ``account_id``, oldest period first."""
    rows = conn.execute(
        "SELECT period_start, document FROM invoices WHERE account_id = %s ORDER BY period_start", (account_id,)
    )
    return [(start, document) for start, document in rows]


def lock_period(conn: psycopg.Connection, period_label: str) -> None:
    """Serialise finalizing within one period (numbers are per period), until the transaction ends."""
    conn.execute("SELECT pg_advisory_xact_lock(hashtext('spanmeter invoices ' || %s))", (period_label,))


def count_in_period(conn: psycopg.Connection, period_start: datetime) -> int:
    """Finalized invoices of the period starting then (every account)."""
    row = conn.execute("SELECT count(*) FROM invoices WHERE period_start = %s", (period_start,)).fetchone()
    return int(row[0]) if row else 0


def insert_invoice(
    conn: psycopg.Connection,
    *,
    number: str,
    account_id: str,
    period_start: datetime,
    pricing_version: str,
    currency: str,
    total: Decimal,
    document: dict[str, Any],
    finalized_at: datetime,
    finalized_by: str,
    lines: Sequence[InvoiceLineRow],
) -> None:
    """Store a finalized invoice and its lines (the tables refuse any later change)."""
    conn.execute(
        "INSERT INTO invoices (invoice_number, account_id, period_start, pricing_version, currency, total, document,"
        " finalized_at, finalized_by) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
        (number, account_id, period_start, pricing_version, currency, total, json.dumps(document), finalized_at,
         finalized_by),
    )  # fmt: skip
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO invoice_lines (invoice_number, line_no, kind, meter_code, description, quantity, amount,"
            " currency, reference_period) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
            [(number, *line) for line in lines],
        )
