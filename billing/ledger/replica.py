"""Reads off the primary: a hot standby for reads that may lag, the primary for whatever must be exact.

``SPANMETER_READ_DATABASE_URL`` (``--read-database-url``) names a streaming replica (hot standby) of the
ledger. :class:`Databases` holds both, and every reader says which it reads:

| reads ``databases.reader()`` (the replica when configured) | reads ``databases.primary``, always |
|---|---|
| ``spanmeter usage`` (totals and month to date) | ``spanmeter invoice --finalize``: the invoice is built and stored in one primary transaction |
| ``spanmeter invoice`` drafts, ``--shadow``, ``shadow-report`` | ``reconcile``, ``rollups check``/``rebuild``, ``subscription``, ``ledger adjust``, ``dead-letter`` |
| ``spanmeter export usage``/``invoices``/``focus`` | ``serve``: writes, duplicate and key-conflict checks, readiness, folds, billing metrics (it writes ``account_month_to_date``) |
| Grafana's ledger datasource (a deployment setting) | ``db upgrade``, ``db partitions``, ``db archive``/``restore`` |

What a replica can do to a read, and what spanmeter does about it:

- **Lag.** A standby shows the ledger as of its last replayed commit. :func:`measure_lag` compares the
  primary's ``pg_current_wal_lsn()`` with the standby's ``pg_last_wal_replay_lsn()`` (bytes behind) and,
  when it is behind, ``now() - pg_last_xact_replay_timestamp()`` (seconds behind; 0 when caught up, so
  an idle primary is not "lagging"). ``serve`` exports both (``spanmeter_read_replica_*``); commands that
  read the replica say on stderr when its replay is paused or further behind than
  ``SPANMETER_READ_STALE_AFTER_SECONDS``.
- **Recovery conflicts.** Replay cancels a standby query whose snapshot still needs rows that the
  primary's vacuum removed (SQLSTATE ``40001``, "canceling statement due to conflict with recovery", or
  ``40P01``; FATAL for a session idle in a transaction). :meth:`Databases.read` runs the whole read again
  on a new connection, up to ``attempts`` times, then raises :class:`ReplicaConflict` with what to change.
- **Unreachable.** A replica that refuses connections is :class:`ReplicaUnreachable`, naming the setting.

Each read runs in one ``READ ONLY`` ``REPEATABLE READ`` transaction: every statement of an invoice sees the
same snapshot, and a read path that tried to write would fail loudly, on the primary too.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import psycopg
from psycopg import IsolationLevel

from .database import Database, describe, normalize_database_url, resolve_database

__all__ = [
    "READ_ATTEMPTS",
    "Databases",
    "ReadReplicaError",
    "ReplicaConflict",
    "ReplicaLag",
    "ReplicaUnreachable",
    "check_replica_schema",
    "is_recovery_conflict",
    "measure_lag",
    "read_connection",
    "replica_database",
    "resolve_databases",
]

log = logging.getLogger(__name__)
T = TypeVar("T")

READ_ATTEMPTS = 3
READ_SETTING = "--read-database-url / SPANMETER_READ_DATABASE_URL"


class ReadReplicaError(RuntimeError):
    """A read of the replica that cannot be answered; the message says what to change."""


class ReplicaUnreachable(ReadReplicaError):
    pass


class ReplicaConflict(ReadReplicaError):
    pass


@dataclass(frozen=True)
class Databases:
    """The primary (writes, and reads that must be exact at commit) and, when configured, a read replica."""

    primary: Database
    replica: Database | None = None

    def reader(self) -> Database:
        """Where reads that may lag go: the replica when configured, else the primary."""
        return self.replica if self.replica is not None else self.primary

    def read(self, work: Callable[[Database], T], *, attempts: int = READ_ATTEMPTS, pause_seconds: float = 0.2) -> T:
        """``work(self.reader())``, run again from the start after a recovery conflict, at most ``attempts``
        times. ``work`` opens its own connection (see :func:`read_connection`) and neither prints nor
        writes: it may run more than once."""
        database = self.reader()
        for attempt in range(1, attempts + 1):
            try:
                return work(database)
            except Exception as exc:
                if is_recovery_conflict(exc):
                    if attempt < attempts:
                        log.info("%s cancelled a read (%s); reading again", database.description, _first_line(exc))
                        time.sleep(pause_seconds * attempt)
                        continue
                    raise ReplicaConflict(
                        f"the {database.description} cancelled the read {attempts} times ({_first_line(exc)}): "
                        "replay removed rows the query still needed. Retry; on the replica raise "
                        "max_standby_streaming_delay or set hot_standby_feedback = on; or read the primary "
                        f"({READ_SETTING} unset, or '')"
                    ) from None
                if self.replica is not None and _unreachable(exc):
                    raise ReplicaUnreachable(
                        f"cannot read the {database.description} ({_first_line(exc)}): check {READ_SETTING}, that "
                        "the standby is running and reachable, and its user and password; or unset it to read the "
                        "primary"
                    ) from None
                raise
        raise AssertionError("unreachable")  # the loop returns or raises


def resolve_databases(
    database_url: str | None, read_database_url: str | None, data_dir: Path, create: bool = True
) -> Databases:
    primary = resolve_database(database_url, data_dir, create=create)
    return Databases(primary, replica_database(read_database_url) if read_database_url else None)


def check_replica_schema(databases: Databases) -> None:
    """A configured replica is only checked, never migrated: its schema is the primary's as replayed."""
    from . import migrate

    if databases.replica is None:
        return

    def current(database: Database) -> str | None:
        engine = database.engine()
        try:
            with engine.connect() as connection:
                return migrate.current_revision(connection)
        finally:
            engine.dispose()

    found, head = databases.read(current), migrate.head_revision()
    if found != head:
        raise ReadReplicaError(
            f"the {databases.replica.description} has schema {found or 'none'}, this spanmeter needs {head}: its "
            "replay has not reached that migration yet (see spanmeter_read_replica_lag_bytes), the primary needs "
            f"`spanmeter db upgrade`, or {READ_SETTING} is not a replica of this ledger"
        )


def replica_database(read_database_url: str) -> Database:
    conninfo = normalize_database_url(read_database_url)
    return Database(conninfo=conninfo, embedded=False, description=f"read replica {describe(conninfo)}")


def is_recovery_conflict(exc: BaseException) -> bool:
    """A standby cancelled (or terminated) the query so that replay could go on."""
    cause = getattr(exc, "orig", None) or exc  # a SQLAlchemy DBAPIError wraps psycopg's
    sqlstate = getattr(cause, "sqlstate", None)
    return sqlstate in ("40001", "40P01") and "conflict with recovery" in str(cause)


def _unreachable(exc: BaseException) -> bool:
    cause = getattr(exc, "orig", None) or exc
    if not isinstance(cause, psycopg.OperationalError):
        return False
    sqlstate = cause.sqlstate or ""
    return not sqlstate or sqlstate[:2] in ("08", "28", "3D", "57")


def _first_line(exc: BaseException) -> str:
    cause = getattr(exc, "orig", None) or exc
    return (str(cause).strip().splitlines() or [type(cause).__name__])[0]


@contextmanager
def read_connection(database: Database, connect_timeout_seconds: int = 10) -> Iterator[psycopg.Connection]:
    """One read-only, repeatable-read transaction on ``database`` (rolled back at the end: it wrote nothing)."""
    with psycopg.connect(database.conninfo, connect_timeout=connect_timeout_seconds) as conn:
        conn.read_only = True
        conn.isolation_level = IsolationLevel.REPEATABLE_READ
        try:
            yield conn
        finally:
            if not conn.closed:
                conn.rollback()


# ----------------------------------------------------------------------------------------------- lag


@dataclass(frozen=True)
class ReplicaLag:
    """How far a standby is behind its primary, as measured now.

    ``lag_bytes``: WAL the primary wrote that the standby has not replayed. ``replay_delay_seconds``: 0 when
    it has replayed everything, else the age of the last transaction it replayed (after a long idle spell
    of the primary, the first write makes this jump until replay catches up: the alert's ``for`` absorbs
    it). ``standby`` False: the read URL is not in recovery (a primary, or a promoted standby): no lag."""

    lag_bytes: int
    replay_delay_seconds: float
    replay_paused: bool
    standby: bool

    def stale_note(self, stale_after_seconds: float) -> str | None:
        """One line for a person who just read the replica, or None when it was close enough."""
        if self.replay_paused and self.lag_bytes > 0:
            return (
                f"replay on the read replica is paused, {self.lag_bytes:,} bytes of WAL behind the primary: these "
                "figures miss the newest usage (SELECT pg_wal_replay_resume() on the replica)"
            )
        if self.replay_delay_seconds > stale_after_seconds:
            return (
                f"the read replica is {self.replay_delay_seconds:,.0f} s ({self.lag_bytes:,} bytes of WAL) behind the "
                "primary: these figures miss the newest usage (SPANMETER_READ_STALE_AFTER_SECONDS="
                f"{stale_after_seconds:g})"
            )
        return None


_STANDBY_STATE = """
SELECT pg_is_in_recovery(),
       greatest(pg_wal_lsn_diff(%(primary_lsn)s::pg_lsn, pg_last_wal_replay_lsn()), 0)::bigint,
       extract(epoch FROM now() - coalesce(pg_last_xact_replay_timestamp(), pg_postmaster_start_time()))::float8,
       CASE WHEN pg_is_in_recovery() THEN pg_is_wal_replay_paused() ELSE false END
"""


def measure_lag(primary: Database, replica: Database, connect_timeout_seconds: int = 5) -> ReplicaLag:
    """One measurement: the primary's WAL position first, then how much of it the standby has replayed
    (WAL the primary writes in between counts as caught up, never as negative lag)."""
    with psycopg.connect(primary.conninfo, connect_timeout=connect_timeout_seconds, autocommit=True) as conn:
        (primary_lsn,) = conn.execute(  # type: ignore[misc]
            "SELECT CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END"
        ).fetchone()
    with psycopg.connect(replica.conninfo, connect_timeout=connect_timeout_seconds, autocommit=True) as conn:
        standby, behind, age, paused = conn.execute(_STANDBY_STATE, {"primary_lsn": str(primary_lsn)}).fetchone()  # type: ignore[misc]
    if not standby:
        return ReplicaLag(0, 0.0, False, False)
    lag_bytes = int(behind or 0)
    return ReplicaLag(lag_bytes, max(float(age), 0.0) if lag_bytes > 0 else 0.0, bool(paused), True)
