"""API tokens: ``spanmeter api token new --account ID | --operator``, ``spanmeter api token revoke ID``.

A token is ``spm_`` and 43 URL-safe characters (256 random bits). It is printed once, when made; the ledger
keeps only its SHA-256 (a token is a random secret, not a password: one fast hash is the right tool, and it
lets a request find its token with one index probe). Each token has an id (``tok_`` and 12 hex digits) that
names it in listings and in ``revoke``, and a scope:

- an **account token** reads that one account's resources; asked about another account, the API answers 404,
  exactly as for an account that does not exist (no existence oracle);
- an **operator token** reads every account.

Revoking is a row of its own (``api_token_revocations``): tokens are never edited or deleted, so who made and
who revoked each one stays on record. The API caches a verified token for a few seconds
(:data:`spanmeter.api.reads.CACHE_SECONDS`), so a revocation takes effect within that time.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime

import psycopg

from .ledger import token_store

__all__ = [
    "Principal",
    "TokenInfo",
    "digest",
    "issue",
    "list_tokens",
    "revoke",
    "session",
    "verify",
    "verify_session",
    "well_formed",
]

_TOKEN = re.compile(r"spm_[A-Za-z0-9_-]{43}")
_SESSION = re.compile(r"(tok_[0-9a-f]{12})\.([0-9]{1,12})\.([0-9a-f]{64})")


@dataclass(frozen=True)
class Principal:
    """Who a verified token speaks for: one account, or every account (``account_id`` None: an operator)."""

    token_id: str
    account_id: str | None

    def may_read(self, account_id: str) -> bool:
        return self.account_id is None or self.account_id == account_id


@dataclass(frozen=True)
class TokenInfo:
    token_id: str
    account_id: str | None
    note: str
    created_at: datetime
    created_by: str
    revoked_at: datetime | None


def digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def well_formed(token: str) -> bool:
    return bool(_TOKEN.fullmatch(token))


def _session_mac(sha256: bytes, token_id: str, expires: int) -> str:
    return hmac.new(sha256, f"{token_id}.{expires}".encode(), hashlib.sha256).hexdigest()


def session(token_id: str, sha256: bytes, expires: int) -> str:
    """The billing page's session cookie for a verified token: ``tok_….<expiry>.<HMAC>``, keyed by the token's
    stored SHA-256 (so the server needs no secret of its own, the cookie never holds the token, and revoking
    the token ends its sessions)."""
    return f"{token_id}.{expires}.{_session_mac(sha256, token_id, expires)}"


def verify_session(conn: psycopg.Connection, value: str, now: float) -> Principal | None:
    """The principal of an unexpired session cookie whose token is not revoked; None otherwise."""
    match = _SESSION.fullmatch(value)
    if match is None or int(match.group(2)) <= now:
        return None
    token_id, expires = match.group(1), int(match.group(2))
    found = token_store.by_id(conn, token_id)
    if found is None or found[2] is not None:
        return None
    if not hmac.compare_digest(_session_mac(found[1], token_id, expires), match.group(3)):
        return None
    return Principal(token_id, found[0])


def issue(conn: psycopg.Connection, *, account_id: str | None, note: str, created_by: str) -> tuple[str, str]:
    """A new token: (token id, the token). The caller commits and prints the token once. An account id must be
    one the API can address (letters, digits and ``._:@-``, at most 128 characters)."""
    if account_id is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}", account_id):
        raise ValueError(f"--account {account_id!r}: an account id is letters, digits and ._:@- (at most 128)")
    token = "spm_" + secrets.token_urlsafe(32)
    token_id = "tok_" + secrets.token_hex(6)
    token_store.insert_token(
        conn, token_id=token_id, sha256=digest(token), account_id=account_id, note=note, created_by=created_by
    )
    return token_id, token


def verify(conn: psycopg.Connection, token: str) -> Principal | None:
    """The principal of a valid, unrevoked token; None otherwise."""
    if not well_formed(token):
        return None
    row = token_store.lookup(conn, digest(token))
    if row is None or row[5] is not None:
        return None
    return Principal(row[0], row[1])


def revoke(conn: psycopg.Connection, token_id: str, revoked_by: str) -> bool | None:
    return token_store.revoke(conn, token_id, revoked_by)


def list_tokens(conn: psycopg.Connection, account_id: str | None = None) -> list[TokenInfo]:
    return [TokenInfo(*row) for row in token_store.tokens(conn, account_id)]
