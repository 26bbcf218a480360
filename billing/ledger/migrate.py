"""Schema migrations (Alembic), applied under a PostgreSQL advisory lock.

``upgrade(database)`` takes a session-level advisory lock before running Alembic, so two processes that
start at once (two receivers, a receiver and ``spanmeter db upgrade``) apply each migration exactly once:
the second waits, then finds nothing left to do. ``current_revision`` and ``head_revision`` tell whether a
database is up to date (used by readiness checks).
"""

from __future__ import annotations

from pathlib import Path

import psycopg
import sqlalchemy.exc
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, text

from .database import Database

__all__ = ["MIGRATION_LOCK_ID", "SchemaNotCurrent", "current_revision", "head_revision", "prepare", "upgrade"]

# An arbitrary constant, the same in every spanmeter process ("spanmetr" in ASCII).
MIGRATION_LOCK_ID = 0x7370616E6D657472
MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def _config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(_config()).get_current_head()
    assert head is not None
    return head


def current_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def upgrade(database: Database, revision: str = "head") -> tuple[str | None, str | None]:
    """Apply migrations up to ``revision``; return (revision before, revision after)."""
    engine = database.engine()
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT pg_advisory_lock(:id)"), {"id": MIGRATION_LOCK_ID})
            connection.commit()
            try:
                before = current_revision(connection)
                connection.commit()
                command.upgrade(_config(connection), revision)
                connection.commit()
                after = current_revision(connection)
                connection.commit()
            finally:
                connection.execute(text("SELECT pg_advisory_unlock(:id)"), {"id": MIGRATION_LOCK_ID})
                connection.commit()
        return before, after
    finally:
        engine.dispose()


class SchemaNotCurrent(RuntimeError):
    """The ledger's schema is not at this spanmeter's head revision, and this command does not migrate."""


def prepare(database: Database, migrate_configured: bool = False) -> None:
    """Make the ledger usable for a command: migrate the embedded database (spanmeter owns it); a configured
    server is only checked (migrations are the owner's, ``spanmeter db upgrade``): :class:`SchemaNotCurrent`.
    ``migrate_configured`` (``ingest``, an operator's backfill): migrate a configured server too when the
    credential may, else check."""
    if database.embedded:
        upgrade(database)
        return
    if migrate_configured:
        try:
            upgrade(database)
            return
        except sqlalchemy.exc.DBAPIError as exc:
            if not isinstance(exc.orig, psycopg.errors.InsufficientPrivilege):
                raise
    engine = database.engine()
    try:
        with engine.connect() as connection:
            current = current_revision(connection)
    finally:
        engine.dispose()
    head = head_revision()
    if current != head:
        raise SchemaNotCurrent(
            f"the ledger at {database.description} has schema {current or 'none (empty database)'}, this spanmeter "
            f"needs {head}: run `spanmeter db upgrade --database-url …` as the ledger's owner"
        )
