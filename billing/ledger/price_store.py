"""Price books and pricing versions in the ledger: the queries behind :mod:`spanmeter.billing.prices`.

Both tables are append-only (migration 0012): rows are inserted once under their key and never changed. Each
function takes the caller's connection and never commits.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import psycopg

__all__ = [
    "BookRow",
    "book_documents",
    "book_rows",
    "finalized_periods_by_version",
    "fingerprint",
    "insert_book",
    "insert_pricing_version",
    "pricing_documents",
    "stored_book",
    "stored_pricing_version",
]

# (book_code, version, effective_from, currency, sha256, imported_at, imported_by)
BookRow = tuple[str, str, datetime, str, str, datetime, str]


def fingerprint(conn: psycopg.Connection) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(book versions' SHA-256 in import order, pricing versions' SHA-256 in code order): one small row that
    changes whenever anything is imported, so a parsed catalog can be reused until then."""
    row = conn.execute(
        "SELECT (SELECT coalesce(array_agg(sha256 ORDER BY import_id), '{}') FROM price_books),"
        " (SELECT coalesce(array_agg(sha256 ORDER BY code), '{}') FROM pricing_versions)"
    ).fetchone()
    assert row is not None
    return tuple(row[0]), tuple(row[1])


def insert_book(
    conn: psycopg.Connection,
    *,
    code: str,
    version: str,
    effective_from: datetime,
    currency: str,
    document: dict[str, Any],
    sha256: str,
    imported_by: str,
) -> bool:
    """Store a book version; False when (code, version) is already stored (nothing written)."""
    row = conn.execute(
        "INSERT INTO price_books (book_code, version, effective_from, currency, document, sha256, imported_by)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING RETURNING 1",
        (code, version, effective_from, currency, json.dumps(document), sha256, imported_by),
    ).fetchone()
    return row is not None


def stored_book(conn: psycopg.Connection, code: str, version: str) -> tuple[dict[str, Any], str] | None:
    """(document, sha256) of one book version, or None."""
    return conn.execute(
        "SELECT document, sha256 FROM price_books WHERE book_code = %s AND version = %s", (code, version)
    ).fetchone()


def book_documents(conn: psycopg.Connection, code: str | None = None) -> list[dict[str, Any]]:
    """The documents of every version (of one book), in import order."""
    where, params = ("WHERE book_code = %s", (code,)) if code else ("", ())
    return [doc for (doc,) in conn.execute(f"SELECT document FROM price_books {where} ORDER BY import_id", params)]


def book_rows(conn: psycopg.Connection) -> list[BookRow]:
    """Every book version's summary, by book then effective date then import order."""
    return conn.execute(
        "SELECT book_code, version, effective_from, currency, sha256, imported_at, imported_by FROM price_books"
        " ORDER BY book_code, effective_from, import_id"
    ).fetchall()


def insert_pricing_version(
    conn: psycopg.Connection,
    *,
    code: str,
    price_book: str | None,
    document: dict[str, Any],
    sha256: str,
    imported_by: str,
) -> bool:
    """Store a pricing version; False when the code is already stored (nothing written)."""
    row = conn.execute(
        "INSERT INTO pricing_versions (code, price_book, document, sha256, imported_by) VALUES (%s, %s, %s, %s, %s)"
        " ON CONFLICT DO NOTHING RETURNING 1",
        (code, price_book, json.dumps(document), sha256, imported_by),
    ).fetchone()
    return row is not None


def stored_pricing_version(conn: psycopg.Connection, code: str) -> tuple[dict[str, Any], str] | None:
    """(document, sha256) of one stored pricing version, or None."""
    return conn.execute("SELECT document, sha256 FROM pricing_versions WHERE code = %s", (code,)).fetchone()


def pricing_documents(conn: psycopg.Connection) -> list[dict[str, Any]]:
    """Every stored pricing version's document, in code order."""
    return [doc for (doc,) in conn.execute("SELECT document FROM pricing_versions ORDER BY code")]


def finalized_periods_by_version(conn: psycopg.Connection) -> list[tuple[str, datetime]]:
    """(pricing version as stored on invoices, its latest finalized period start) — ``a+b`` for a month billed
    under two versions."""
    return conn.execute("SELECT pricing_version, max(period_start) FROM invoices GROUP BY pricing_version").fetchall()
