"""The API's reads: pooled, read-only, one REPEATABLE READ snapshot per request.

Each request borrows a connection from a :class:`psycopg_pool.ConnectionPool` on the read database (the hot
standby of ``SPANMETER_READ_DATABASE_URL`` when configured, else the primary), opens one read-only
REPEATABLE READ transaction and calls the same billing functions as the CLI (:mod:`spanmeter.billing.quotas`,
:mod:`~spanmeter.billing.drivers`, :mod:`~spanmeter.billing.invoices`, :mod:`~spanmeter.billing.explain`,
:mod:`~spanmeter.billing.entitlements`), so an endpoint and its CLI command compute a figure one way. Tokens are
verified on the primary (a revocation must not wait for a replica), cached for :data:`CACHE_SECONDS`.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import psycopg
from psycopg import IsolationLevel
from psycopg_pool import ConnectionPool

from spanmeter.billing import tokens

__all__ = ["CACHE_SECONDS", "Reads"]

T = TypeVar("T")
CACHE_SECONDS = 5.0
CACHE_ENTRIES = 10_000  # least recently used first out
STATEMENT_TIMEOUT_MS = 30_000  # a read the API makes never runs longer (answered 503)


def _configure(conn: psycopg.Connection) -> None:
    conn.read_only = True
    conn.isolation_level = IsolationLevel.REPEATABLE_READ
    conn.commit()


class Reads:
    """Connection pools on the read and primary databases (the same one without a replica)."""

    def __init__(self, read_conninfo: str, primary_conninfo: str, *, max_size: int = 8) -> None:
        kwargs = {"connect_timeout": 5, "application_name": "spanmeter-api",
                  "options": f"-c statement_timeout={STATEMENT_TIMEOUT_MS}"}  # fmt: skip
        self._read = ConnectionPool(
            read_conninfo,
            min_size=1,
            max_size=max_size,
            kwargs=kwargs,
            configure=_configure,
            open=False,
            name="api-read",
        )
        self._primary = (
            self._read
            if primary_conninfo == read_conninfo
            else ConnectionPool(
                primary_conninfo,
                min_size=1,
                max_size=2,
                kwargs=kwargs,
                configure=_configure,
                open=False,
                name="api-primary",
            )
        )
        self._cache: OrderedDict[bytes | str, tuple[float, tokens.Principal | None]] = OrderedDict()
        self._lock = threading.Lock()

    def open(self) -> None:
        self._read.open()
        if self._primary is not self._read:
            self._primary.open()

    def close(self) -> None:
        self._read.close()
        if self._primary is not self._read:
            self._primary.close()

    @contextmanager
    def _snapshot(self, pool: ConnectionPool) -> Iterator[psycopg.Connection]:
        with pool.connection(timeout=10) as conn:
            try:
                yield conn
            finally:
                conn.rollback()  # read-only: nothing to keep

    def read(self, work: Callable[[psycopg.Connection], T]) -> T:
        with self._snapshot(self._read) as conn:
            return work(conn)

    def _cached(
        self, key: bytes | str, verify: Callable[[psycopg.Connection], tokens.Principal | None]
    ) -> tokens.Principal | None:
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None and now - hit[0] < CACHE_SECONDS:
                self._cache.move_to_end(key)
                return hit[1]
        with self._snapshot(self._primary) as conn:
            found = verify(conn)
        with self._lock:
            self._cache[key] = (now, found)
            self._cache.move_to_end(key)
            while len(self._cache) > CACHE_ENTRIES:
                self._cache.popitem(last=False)
        return found

    def principal(self, token: str) -> tokens.Principal | None:
        """The token's principal (cached by its SHA-256 for :data:`CACHE_SECONDS`, misses too); None when not
        valid. A string that is not a token never reaches the cache or the database."""
        if not tokens.well_formed(token):
            return None
        return self._cached(tokens.digest(token), lambda conn: tokens.verify(conn, token))

    def session(self, value: str) -> tokens.Principal | None:
        """The principal of a billing-page session cookie (:func:`spanmeter.billing.tokens.session`), cached
        likewise; None when malformed, expired, forged or its token revoked."""
        if len(value) > 120:
            return None
        return self._cached(value, lambda conn: tokens.verify_session(conn, value, time.time()))

    def token_digest(self, token: str) -> tuple[str, bytes] | None:
        """(token id, SHA-256) of a valid token, to sign a session with."""
        found = self.principal(token)
        return None if found is None else (found.token_id, tokens.digest(token))
