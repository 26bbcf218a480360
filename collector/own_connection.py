"""One PostgreSQL connection a background component owns: opened on first use with a statement timeout,
reopened after it was closed (a failed tick closes it; the next tick reconnects), closed on shutdown.

    self._db = OwnConnection(database, statement_timeout_ms=30_000)
    conn = self._db.get()     # in a tick
    self._db.close()          # after a database error, and in shutdown()
"""

from __future__ import annotations

import contextlib

import psycopg

from spanmeter.billing.ledger.database import Database

__all__ = ["OwnConnection"]


class OwnConnection:
    def __init__(self, database: Database, *, statement_timeout_ms: int, connect_timeout_seconds: int = 5) -> None:
        self._database = database
        self._statement_timeout_ms = statement_timeout_ms
        self._connect_timeout_seconds = connect_timeout_seconds
        self._conn: psycopg.Connection | None = None

    def get(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed:
            self._conn = self._database.connect(connect_timeout=self._connect_timeout_seconds)
            self._conn.execute(f"SET statement_timeout = {int(self._statement_timeout_ms)}")
            self._conn.commit()
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
            self._conn = None
