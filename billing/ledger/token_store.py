"""API tokens in the ledger: the queries behind :mod:`spanmeter.billing.tokens` (tables of migration 0015).

Only a token's SHA-256 is stored; a revocation is a row of its own. Each function takes the caller's
connection and never commits.
"""

from __future__ import annotations

from datetime import datetime

import psycopg

__all__ = ["TokenRow", "by_id", "insert_token", "lookup", "revoke", "tokens"]

# (token_id, account_id or None for an operator token, note, created_at, created_by, revoked_at or None)
TokenRow = tuple[str, str | None, str, datetime, str, datetime | None]

_SELECT = (
    "SELECT t.token_id, t.account_id, t.note, t.created_at, t.created_by, r.revoked_at"
    " FROM api_tokens AS t LEFT JOIN api_token_revocations AS r USING (token_id)"
)


def insert_token(
    conn: psycopg.Connection, *, token_id: str, sha256: bytes, account_id: str | None, note: str, created_by: str
) -> None:
    conn.execute(
        "INSERT INTO api_tokens (token_id, sha256, account_id, note, created_by) VALUES (%s, %s, %s, %s, %s)",
        (token_id, sha256, account_id, note, created_by),
    )


def revoke(conn: psycopg.Connection, token_id: str, revoked_by: str) -> bool | None:
    """True when revoked now, False when it already was, None when there is no such token."""
    if conn.execute("SELECT 1 FROM api_tokens WHERE token_id = %s", (token_id,)).fetchone() is None:
        return None
    row = conn.execute(
        "INSERT INTO api_token_revocations (token_id, revoked_by) VALUES (%s, %s) ON CONFLICT DO NOTHING RETURNING 1",
        (token_id, revoked_by),
    ).fetchone()
    return row is not None


def lookup(conn: psycopg.Connection, sha256: bytes) -> TokenRow | None:
    """The token with this SHA-256 (revoked or not), or None."""
    row = conn.execute(_SELECT + " WHERE t.sha256 = %s", (sha256,)).fetchone()
    return None if row is None else (row[0], row[1], row[2], row[3], row[4], row[5])


def by_id(conn: psycopg.Connection, token_id: str) -> tuple[str | None, bytes, datetime | None] | None:
    """(account_id, SHA-256, revoked_at) of the token with this id, or None."""
    row = conn.execute(
        "SELECT t.account_id, t.sha256, r.revoked_at FROM api_tokens AS t"
        " LEFT JOIN api_token_revocations AS r USING (token_id) WHERE t.token_id = %s",
        (token_id,),
    ).fetchone()
    return None if row is None else (row[0], bytes(row[1]), row[2])


def tokens(conn: psycopg.Connection, account_id: str | None = None) -> list[TokenRow]:
    """Every token (or an account's), oldest first."""
    where, params = (" WHERE t.account_id = %s", (account_id,)) if account_id else ("", ())
    rows = conn.execute(_SELECT + where + " ORDER BY t.created_at, t.token_id", params).fetchall()
    return [(r[0], r[1], r[2], r[3], r[4], r[5]) for r in rows]
