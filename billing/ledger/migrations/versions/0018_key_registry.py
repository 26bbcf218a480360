"""The key registry: one row per idempotency key, whatever its end time (issue 2/7, "a natural key that cannot
be squatted").

``usage_events``'s primary key is ``(occurred_at, idempotency_key)`` and the table is partitioned by month, so
it cannot hold a unique key on the idempotency key alone (every unique key of a partitioned table contains the
partition key). Until this migration the same key re-sent with another end time was a second row, billed
twice, and only ``spanmeter reconcile`` found it. ``usage_event_keys`` holds each key once, with the end time
of the row that holds it:

- ``LedgerWriter`` registers every staged row's key first (``INSERT … ON CONFLICT DO NOTHING`` on the registry's
  primary key), then inserts every row when all keys were new (the usual case), or only the rows registered at
  their own end time, in the same transaction; a row whose key is registered at another end time is a
  ``key_conflict`` (kept, counted, alerted, answered in ``partial_success``), like a row whose key is held with
  other content at the same end time.
- Append-only (``spanmeter_refuse_change``); ``spanmeter_writer`` may INSERT and SELECT.
  Not partitioned and never archived: a key stays registered after ``spanmeter db archive`` takes its month
  away, so the span cannot come back at another end time either. A month archived before this migration has
  no keys here until ``db restore`` brings it back (which registers them).
- The upgrade fills it from the attached ledger: per key, the end time of the row received first (the one
  ``reconcile`` keeps; rows already billed twice stay listed by ``reconcile``). Built unindexed, then the
  primary key in one sort: 42 s for 21M ledger rows on the bench machine. The ledger is locked against writes
  meanwhile (SHARE). **Stop every ``spanmeter
  serve`` before this upgrade** (as for any upgrade: a receiver checks the schema only at start): one still
  running the previous version would go on inserting rows without registering their keys. Spans wait in the
  Collector's persistent queue meanwhile.

Also: ``usage_events.producer``'s comment says that a replay records the rejected span's producer (since this
revision ``spanmeter dead-letter replay`` writes it, so a replayed row meets the registry's conflict check as
its producer's live row would).

What it costs (``bench/README.md``, "The key registry on the write path"): one random-page B-tree insert per
row and ~126 B per key on disk; side by side in the ingest bench, serve commits 0.78 of what it does without.

Revision ID: 0018_key_registry
Revises: 0017_trace_links
"""

from __future__ import annotations

from alembic import op

revision = "0018_key_registry"
down_revision = "0017_trace_links"
branch_labels = None
depends_on = None

WRITER_ROLE = "spanmeter_writer"


PRODUCER_COMMENT = (
    "The authenticated producer whose Export carried the row (for a replay, that of the rejected span); NULL without "
    "producer authentication, for file backfills and rows older than the column"
)
OLD_PRODUCER_COMMENT = (
    "The authenticated producer whose Export carried the row; NULL without producer authentication, for backfills, "
    "replays and rows older than the column"
)


def upgrade() -> None:
    op.execute("LOCK TABLE usage_events IN SHARE MODE")
    # replays record the rejected span's producer since this revision (their rows meet the registry as it did)
    op.execute(f"COMMENT ON COLUMN usage_events.producer IS '{PRODUCER_COMMENT}'")
    op.execute("""
        CREATE TABLE usage_event_keys (
            idempotency_key uuid NOT NULL,
            occurred_at timestamptz NOT NULL
        )
    """)
    op.execute("""
        INSERT INTO usage_event_keys (idempotency_key, occurred_at)
        SELECT DISTINCT ON (idempotency_key) idempotency_key, occurred_at
          FROM usage_events
         ORDER BY idempotency_key, received_at, occurred_at
    """)
    op.execute("ALTER TABLE usage_event_keys ADD CONSTRAINT usage_event_keys_pkey PRIMARY KEY (idempotency_key)")
    op.execute(
        "CREATE TRIGGER usage_event_keys_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON usage_event_keys "
        "FOR EACH STATEMENT EXECUTE FUNCTION spanmeter_refuse_change()"
    )
    op.execute(
        "COMMENT ON TABLE usage_event_keys IS "
        "'spanmeter key registry: each idempotency key once, with the end time of the row that holds it'"
    )
    op.execute(f"""
        DO $$
        BEGIN
            IF EXISTS (SELECT FROM pg_roles WHERE rolname = '{WRITER_ROLE}') THEN
                GRANT SELECT, INSERT ON usage_event_keys TO {WRITER_ROLE};
            END IF;
        END
        $$
    """)


def downgrade() -> None:
    op.execute(f"COMMENT ON COLUMN usage_events.producer IS '{OLD_PRODUCER_COMMENT}'")
    op.execute("DROP TRIGGER usage_event_keys_append_only ON usage_event_keys")
    op.execute("DROP TABLE usage_event_keys")
