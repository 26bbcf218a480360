"""The Postgres ledger: the billing source of truth.

- :mod:`.models`: the tables (``usage_events``, ``rejected_spans``, ``rejected_requests``).
- :mod:`.database`: which server (configured URL or the embedded default) and how to connect.
- :mod:`.replica`: the primary and an optional read replica (hot standby): who reads which, retries, lag.
- :mod:`.embedded`: the embedded PostgreSQL from the ``pgserver`` wheel.
- :mod:`.migrate`: Alembic migrations under an advisory lock.
- :mod:`.writer`: the idempotent batch write path the collector uses.
"""

from .database import Database, DatabaseUrlError, normalize_database_url, resolve_database
from .migrate import upgrade

__all__ = ["Database", "DatabaseUrlError", "normalize_database_url", "resolve_database", "upgrade"]
