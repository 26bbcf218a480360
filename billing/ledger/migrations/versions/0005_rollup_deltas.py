"""Rollups off the per-row path: the ingest transaction appends pre-aggregated deltas; a compactor folds them.

Before (``0003_rating``): a statement-level trigger upserted ``usage_rollups_hourly``, ``usage_rollups_daily``
and one ``usage_rollup_jobs`` row per distinct job inside every ingest transaction. That cost PostgreSQL about
60 µs per inserted row, held row locks on hot rollup rows until commit (concurrent writers queued behind each
other) and could deadlock two multi-statement writers.

Now:

- ``usage_rollup_deltas``: one row per (account, UTC hour, meter, meter version, plan code, dimension) that an
  INSERT statement into ``usage_events`` actually added rows to (the transition table holds only new rows:
  a retried span skipped by ``ON CONFLICT DO NOTHING`` adds nothing). It carries what the rollups keep: sum,
  count, max, latest (time and quantity) and, for ``worker_seconds``, the job ids as an array (made distinct
  when folded): no row per job on the hot path. The trigger only *inserts* (no upsert, no lock on a shared row), so
  concurrent writers never wait for each other here, and the deltas commit or roll back with their rows.
- The compactor (:func:`spanmeter.billing.rollup_store.fold`, run by ``spanmeter serve``) consumes deltas with
  ``DELETE … RETURNING`` and upserts them into the hourly and daily rollups and ``usage_rollup_jobs`` in
  the same transaction: a delta is either still pending or folded, never both, never neither.
- Every reader adds the pending deltas to the folded rollups in one statement (one snapshot), so every
  figure is exact at every moment. The ``*_live`` views do that for ad-hoc SQL and Grafana.

Revision ID: 0005_rollup_deltas
Revises: 0004_operations
Create Date: 2026-12-04
"""

import importlib

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0005_rollup_deltas"
down_revision = "0004_operations"
branch_labels = None
depends_on = None

TS = postgresql.TIMESTAMP(timezone=True)
READER_ROLE = "spanmeter_grafana"
LIVE_VIEWS = ("usage_rollups_hourly_live", "usage_rollups_daily_live", "usage_rollup_jobs_live")

DELTA_FUNCTION = """
CREATE FUNCTION spanmeter_rollup_deltas() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO usage_rollup_deltas (account_id, bucket_start, meter_code, meter_version, plan_code, dimension,
                                     quantity, events, max_quantity, latest_at, latest_quantity, job_ids)
    SELECT account_id, date_trunc('hour', occurred_at, 'UTC'), meter_code, meter_version, coalesce(plan_code, ''),
           coalesce(metadata->>'gen_ai.model', metadata->>'gpu.model', ''),
           sum(quantity), count(*), max(quantity), max(occurred_at),
           -- the quantity of the latest (occurred_at, quantity) pair, without a sort per group
           (max(ARRAY[extract(epoch FROM occurred_at), quantity]))[2],
           -- distinct at the fold: no sort per group here
           array_agg(job_id) FILTER (WHERE job_id IS NOT NULL AND meter_code = 'worker_seconds')
      FROM new_events
     GROUP BY 1, 2, 3, 4, 5, 6;
    RETURN NULL;
END
$$
"""

# Folded rollups + pending deltas, merged per key: what a reader must see (one statement, one snapshot).
_LIVE = """
CREATE VIEW {view} AS
SELECT account_id, bucket_start, meter_code, meter_version, plan_code, dimension,
       sum(quantity) AS quantity, sum(events)::bigint AS events, max(max_quantity) AS max_quantity,
       max(latest_at) AS latest_at,
       (max(ARRAY[extract(epoch FROM latest_at), latest_quantity]))[2] AS latest_quantity
  FROM (
    SELECT account_id, bucket_start, meter_code, meter_version, plan_code, dimension, quantity, events,
           max_quantity, latest_at, latest_quantity
      FROM {table}
    UNION ALL
    SELECT account_id, date_trunc('{unit}', bucket_start, 'UTC'), meter_code, meter_version, plan_code, dimension,
           quantity, events, max_quantity, latest_at, latest_quantity
      FROM usage_rollup_deltas
  ) AS parts
 GROUP BY account_id, bucket_start, meter_code, meter_version, plan_code, dimension
"""
_JOBS_LIVE = """
CREATE VIEW usage_rollup_jobs_live AS
SELECT account_id, month_start, meter_code, job_id FROM usage_rollup_jobs
UNION
SELECT account_id, date_trunc('month', bucket_start, 'UTC'), meter_code, unnest(job_ids)
  FROM usage_rollup_deltas WHERE job_ids IS NOT NULL
"""


def upgrade() -> None:
    op.create_table(
        "usage_rollup_deltas",
        sa.Column("delta_id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("account_id", sa.Text, nullable=False),
        sa.Column("bucket_start", TS, nullable=False),  # the UTC hour of occurred_at
        sa.Column("meter_code", sa.Text, nullable=False),
        sa.Column("meter_version", sa.SmallInteger, nullable=False),
        sa.Column("plan_code", sa.Text, nullable=False),
        sa.Column("dimension", sa.Text, nullable=False),
        sa.Column("quantity", sa.Numeric, nullable=False),
        sa.Column("events", sa.BigInteger, nullable=False),
        sa.Column("max_quantity", sa.Numeric, nullable=False),
        sa.Column("latest_at", TS, nullable=False),
        sa.Column("latest_quantity", sa.Numeric, nullable=False),
        sa.Column("job_ids", postgresql.ARRAY(sa.Text)),  # distinct worker_seconds job ids, NULL when none
        sa.Column("created_at", TS, nullable=False, server_default=sa.func.now()),  # the writer's transaction start
    )
    op.create_index("usage_rollup_deltas_account_idx", "usage_rollup_deltas", ["account_id", "bucket_start"])
    op.execute(
        "COMMENT ON TABLE usage_rollup_deltas IS 'Pending rollup deltas written with each ledger insert; folded into "
        "usage_rollups_* by spanmeter serve. Read rollups through the *_live views (rollups + pending deltas)'"
    )
    op.execute("DROP TRIGGER usage_events_rollup ON usage_events")
    op.execute("DROP FUNCTION spanmeter_rollup_new_events()")
    op.execute(DELTA_FUNCTION)
    op.execute(
        "CREATE TRIGGER usage_events_rollup_deltas AFTER INSERT ON usage_events REFERENCING NEW TABLE AS new_events "
        "FOR EACH STATEMENT EXECUTE FUNCTION spanmeter_rollup_deltas()"
    )
    op.execute(_LIVE.format(view="usage_rollups_hourly_live", table="usage_rollups_hourly", unit="hour"))
    op.execute(_LIVE.format(view="usage_rollups_daily_live", table="usage_rollups_daily", unit="day"))
    op.execute(_JOBS_LIVE)
    views = ", ".join(LIVE_VIEWS)
    op.execute(f"""
        DO $$
        BEGIN
            IF EXISTS (SELECT FROM pg_roles WHERE rolname = '{READER_ROLE}') THEN
                GRANT SELECT ON {views} TO {READER_ROLE};
            END IF;
        END
        $$
    """)


# Downgrade only: fold every pending delta (frozen here, as migrations must not depend on code that changes).
_FOLD_ALL = """
WITH taken AS (DELETE FROM usage_rollup_deltas RETURNING *),
hourly AS (
    INSERT INTO usage_rollups_hourly AS r (account_id, bucket_start, meter_code, meter_version, plan_code, dimension,
                                           quantity, events, max_quantity, latest_at, latest_quantity)
    SELECT account_id, bucket_start, meter_code, meter_version, plan_code, dimension, sum(quantity), sum(events),
           max(max_quantity), max(latest_at),
           (max(ARRAY[extract(epoch FROM latest_at), latest_quantity]))[2]
      FROM taken GROUP BY 1, 2, 3, 4, 5, 6
    ON CONFLICT (account_id, bucket_start, meter_code, meter_version, plan_code, dimension) DO UPDATE SET
        quantity = r.quantity + EXCLUDED.quantity, events = r.events + EXCLUDED.events,
        max_quantity = greatest(r.max_quantity, EXCLUDED.max_quantity),
        latest_quantity = CASE WHEN (EXCLUDED.latest_at, EXCLUDED.latest_quantity) > (r.latest_at, r.latest_quantity)
                               THEN EXCLUDED.latest_quantity ELSE r.latest_quantity END,
        latest_at = greatest(r.latest_at, EXCLUDED.latest_at)
),
daily AS (
    INSERT INTO usage_rollups_daily AS r (account_id, bucket_start, meter_code, meter_version, plan_code, dimension,
                                          quantity, events, max_quantity, latest_at, latest_quantity)
    SELECT account_id, date_trunc('day', bucket_start, 'UTC'), meter_code, meter_version, plan_code, dimension,
           sum(quantity), sum(events), max(max_quantity), max(latest_at),
           (max(ARRAY[extract(epoch FROM latest_at), latest_quantity]))[2]
      FROM taken GROUP BY 1, 2, 3, 4, 5, 6
    ON CONFLICT (account_id, bucket_start, meter_code, meter_version, plan_code, dimension) DO UPDATE SET
        quantity = r.quantity + EXCLUDED.quantity, events = r.events + EXCLUDED.events,
        max_quantity = greatest(r.max_quantity, EXCLUDED.max_quantity),
        latest_quantity = CASE WHEN (EXCLUDED.latest_at, EXCLUDED.latest_quantity) > (r.latest_at, r.latest_quantity)
                               THEN EXCLUDED.latest_quantity ELSE r.latest_quantity END,
        latest_at = greatest(r.latest_at, EXCLUDED.latest_at)
)
INSERT INTO usage_rollup_jobs (account_id, month_start, meter_code, job_id)
SELECT DISTINCT account_id, date_trunc('month', bucket_start, 'UTC'), meter_code, unnest(job_ids)
  FROM taken WHERE job_ids IS NOT NULL
ON CONFLICT DO NOTHING
"""


def downgrade() -> None:
    op.execute("LOCK TABLE usage_events IN SHARE MODE")  # no new deltas while they are folded
    op.execute(_FOLD_ALL)
    for view in LIVE_VIEWS:
        op.execute(f"DROP VIEW {view}")
    op.execute("DROP TRIGGER usage_events_rollup_deltas ON usage_events")
    op.execute("DROP FUNCTION spanmeter_rollup_deltas()")
    op.drop_table("usage_rollup_deltas")
    rating = importlib.import_module("spanmeter.billing.ledger.migrations.versions.0003_rating")
    op.execute(rating.ROLLUP_FUNCTION)
    op.execute(
        "CREATE TRIGGER usage_events_rollup AFTER INSERT ON usage_events REFERENCING NEW TABLE AS new_events "
        "FOR EACH STATEMENT EXECUTE FUNCTION spanmeter_rollup_new_events()"
    )
