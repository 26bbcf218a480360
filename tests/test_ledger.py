"""The ledger's guarantees at the database level: append-only, migrations race-free, URLs normalised."""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from spanmeter.billing.ledger import migrate
from spanmeter.billing.ledger.database import DatabaseUrlError, normalize_database_url, resolve_database
from spanmeter.billing.ledger.writer import LedgerWriter
from support import SPANMETER

ROW = (
    1_795_000_000_000_000,
    "0" * 31 + "1",
    "acct",
    None,
    "starter",
    "worker_seconds",
    1,
    "1.5",
    "s",
    "ab" * 16,
    "cd" * 8,
    '{"service.name": "x"}',
)


@pytest.fixture
def migrated(fresh_db: str) -> str:
    migrate.upgrade(resolve_database(fresh_db, data_dir=None))  # type: ignore[arg-type]
    return fresh_db


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE usage_events SET quantity = 0",
        "DELETE FROM usage_events",
        "TRUNCATE usage_events",
    ],
)
def test_usage_events_refuses_update_delete_truncate_even_for_a_superuser(migrated, statement):
    with psycopg.connect(migrated) as conn:
        LedgerWriter(conn).write_usage([ROW])
        conn.commit()
        assert conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone() == (True,)
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
            conn.execute(statement)
        conn.rollback()
        assert conn.execute("SELECT count(*), sum(quantity) FROM usage_events").fetchone()[0] == 1


def test_writer_is_idempotent_and_reports_new_keys(migrated):
    with psycopg.connect(migrated) as conn:
        writer = LedgerWriter(conn)
        first = writer.write_usage([ROW])
        assert (first.staged, first.inserted, first.inserted_keys) == (1, 1, None)  # all new: no key query
        conn.commit()
        other = (ROW[0] + 1, "0" * 31 + "2", *ROW[2:])
        again = writer.write_usage([ROW, other, other])
        assert (again.staged, again.inserted, again.inserted_keys) == (3, 1, frozenset({other[1]}))
        assert again.is_new(other[1]) and not again.is_new(ROW[1])
        conn.commit()
        tricky = (ROW[0] + 2, "0" * 31 + "3", "tab\there", "new\nline", "back\\slash", *ROW[5:11], '{"a": "\\n"}')
        assert writer.write_usage([tricky]).inserted == 1
        conn.commit()
        assert conn.execute(
            "SELECT account_id, job_id, plan_code, metadata FROM usage_events WHERE idempotency_key = %s", (tricky[1],)
        ).fetchone() == ("tab\there", "new\nline", "back\\slash", {"a": "\n"})
        rows = conn.execute("SELECT occurred_at, quantity::text, metadata FROM usage_events ORDER BY 1").fetchall()
    assert [r[1] for r in rows] == ["1.5", "1.5", "1.5"]
    assert rows[0][0] == datetime.fromtimestamp(1_795_000_000, UTC)  # microseconds since the epoch, exact
    assert rows[1][0] == datetime.fromtimestamp(1_795_000_000, UTC) + timedelta(microseconds=1)
    assert rows[0][2] == {"service.name": "x"}


def test_two_processes_migrating_at_once_both_succeed(fresh_db):
    procs = [
        subprocess.Popen(
            [SPANMETER, "db", "upgrade", "--database-url", fresh_db],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(3)
    ]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outputs
    assert sum(f"-> {migrate.head_revision()}" in out for out in outputs) == 1  # exactly one applied them
    with psycopg.connect(fresh_db) as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [(migrate.head_revision(),)]


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql+psycopg://u:p@db:5432/x", "postgresql://u:p@db:5432/x"),
        ("postgresql+psycopg2://u@db/x", "postgresql://u@db/x"),
        ("postgres://u@db/x", "postgres://u@db/x"),
        ("host=db dbname=x user=u", "host=db dbname=x user=u"),
    ],
)
def test_database_urls_in_libpq_and_sqlalchemy_forms(url, expected):
    assert normalize_database_url(url) == expected


@pytest.mark.parametrize("url", ["mysql://u@db/x", "", "host=db nonsense"])
def test_bad_database_urls_are_refused_with_a_reason(url):
    with pytest.raises(DatabaseUrlError):
        normalize_database_url(url)


def test_the_typed_models_match_the_migrated_schema(migrated):
    """The SQLAlchemy models are the schema's map: Alembic autogenerate finds nothing to change."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from spanmeter.billing.ledger.models import LEDGER_PARTITION, Base

    def not_a_partition(obj, name, type_, reflected, compare_to):  # the months are created at run time
        return not (type_ == "table" and reflected and compare_to is None and LEDGER_PARTITION.match(name))

    engine = resolve_database(migrated, data_dir=None).engine()
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"include_object": not_a_partition})
            assert compare_metadata(context, Base.metadata) == []
    finally:
        engine.dispose()
