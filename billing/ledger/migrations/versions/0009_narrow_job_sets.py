"""Distinct jobs in a narrow set: one small row per (set, job) instead of a wide row per (account, month, meter, job).

Measured before (``bench/README.md``, "The distinct-job set"): when every span is its own job, the fold's
insert into ``usage_rollup_jobs`` was the largest part of the rollup upkeep. Its primary key carried the
account, the month, the meter and the job (~64 bytes per index entry), and every new job lands on a random
leaf page of that index. Now:

- ``usage_job_sets``: one row per (account, UTC month, meter) that has jobs, numbered by ``set_id``
  (``integer``); a handful of rows per account and month.
- ``usage_job_set_members``: ``(set_id, job_id)``, the primary key and nothing else: half the index width,
  so the index a fold walks is half the size and stays cached twice as long. No foreign key (the fold is
  the only writer and creates the set in the same statement; a key check per job would cost what we saved).
- ``usage_rollup_jobs`` is now a view with the old columns (account_id, month_start, meter_code, job_id), so
  every reader, ``usage_rollup_jobs_live``, Grafana's grant and ad-hoc SQL read what they read before.

The fold (``spanmeter_fold_rollups``) creates missing sets and adds members in the same statement that
consumes the deltas, under the fold lock, as before; ``rollups rebuild`` recomputes both tables. Existing
job sets are copied over. Downgrading copies them back into the wide table.

Revision ID: 0009_narrow_job_sets
Revises: 0008_usage_producer
Create Date: 2026-12-04
"""

from __future__ import annotations

import importlib

from alembic import op

revision = "0009_narrow_job_sets"
down_revision = "0008_usage_producer"
branch_labels = None
depends_on = None

READER_ROLE = "spanmeter_grafana"
WRITER_ROLE = "spanmeter_writer"
FOLD_LOCK_ID = 0x726F6C6C75707366  # billing.rollup_store.FOLD_LOCK_ID

_least_privilege = importlib.import_module("spanmeter.billing.ledger.migrations.versions.0006_least_privilege")
_fold_upsert = _least_privilege._fold_upsert

# The fold, as in 0006, with the job sets narrowed. One statement: sibling CTEs do not see each other's
# writes, so the members join the sets that existed (``known``) and the ones this statement creates
# (``created``, by RETURNING). Only the fold and a rebuild write the sets, both under the fold lock, so no
# set can appear between the snapshot and the insert.
FOLD_FUNCTION = f"""
CREATE OR REPLACE FUNCTION spanmeter_fold_rollups(max_deltas integer)
RETURNS TABLE (folded_deltas bigint, folded_events bigint, hourly_upserts bigint, daily_upserts bigint,
               jobs_added bigint)
LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN
    IF NOT pg_try_advisory_xact_lock({FOLD_LOCK_ID}) THEN
        RETURN;  -- no row: another folder or a rebuild holds the lock
    END IF;
    RETURN QUERY
    WITH taken AS (
        DELETE FROM usage_rollup_deltas
         WHERE delta_id < (SELECT min(delta_id) FROM usage_rollup_deltas) + max_deltas
        RETURNING *
    ),
    hourly AS ({_fold_upsert("usage_rollups_hourly", "hour")}),
    daily AS ({_fold_upsert("usage_rollups_daily", "day")}),
    wanted AS (
        SELECT DISTINCT t.account_id, date_trunc('month', t.bucket_start, 'UTC') AS month_start, t.meter_code
          FROM taken AS t WHERE t.job_ids IS NOT NULL
    ),
    created AS (
        INSERT INTO usage_job_sets (account_id, month_start, meter_code)
        SELECT w.account_id, w.month_start, w.meter_code FROM wanted AS w
         WHERE NOT EXISTS (  -- an attempted insert draws a set_id even when it conflicts: only new sets
            SELECT FROM usage_job_sets AS e
             WHERE e.account_id = w.account_id AND e.month_start = w.month_start AND e.meter_code = w.meter_code)
        ON CONFLICT DO NOTHING
        RETURNING usage_job_sets.set_id, usage_job_sets.account_id, usage_job_sets.month_start,
                  usage_job_sets.meter_code
    ),
    sets AS (
        SELECT s.set_id, s.account_id, s.month_start, s.meter_code
          FROM usage_job_sets AS s JOIN wanted AS w USING (account_id, month_start, meter_code)
        UNION ALL
        SELECT c.set_id, c.account_id, c.month_start, c.meter_code FROM created AS c
    ),
    jobs AS (
        INSERT INTO usage_job_set_members (set_id, job_id)
        -- sorted in byte order: no strcoll per comparison (-9 % per job, bench/README); the same set, and
        -- the index's own order under the C and C.UTF-8 collations
        SELECT DISTINCT s.set_id, j.job_id COLLATE "C"
          FROM taken AS t
         CROSS JOIN LATERAL unnest(t.job_ids) AS j(job_id)
          JOIN sets AS s ON s.account_id = t.account_id
                        AND s.month_start = date_trunc('month', t.bucket_start, 'UTC')
                        AND s.meter_code = t.meter_code
         WHERE t.job_ids IS NOT NULL
         ORDER BY 1, 2
        ON CONFLICT DO NOTHING
        RETURNING 1
    )
    SELECT (SELECT count(*) FROM taken)::bigint, (SELECT coalesce(sum(t.events), 0) FROM taken AS t)::bigint,
           (SELECT count(*) FROM hourly)::bigint, (SELECT count(*) FROM daily)::bigint,
           (SELECT count(*) FROM jobs)::bigint;
END
$$
"""

_JOBS_VIEW = """
CREATE VIEW usage_rollup_jobs AS
SELECT s.account_id, s.month_start, s.meter_code, m.job_id
  FROM usage_job_set_members AS m JOIN usage_job_sets AS s USING (set_id)
"""
_JOBS_LIVE = """
CREATE VIEW usage_rollup_jobs_live AS
SELECT account_id, month_start, meter_code, job_id FROM usage_rollup_jobs
UNION
SELECT account_id, date_trunc('month', bucket_start, 'UTC'), meter_code, unnest(job_ids)
  FROM usage_rollup_deltas WHERE job_ids IS NOT NULL
"""


def _grant(statements: str) -> None:
    op.execute(f"""
        DO $$
        BEGIN
            {statements}
        END
        $$
    """)


def _pin_fold_function() -> None:
    # CREATE OR REPLACE resets what the statement does not say: pin search_path again (0006 did the same).
    op.execute("""
        DO $$
        BEGIN
            EXECUTE format('ALTER FUNCTION spanmeter_fold_rollups(integer) SECURITY DEFINER '
                           'SET search_path = %I, pg_temp', current_schema());
        END
        $$
    """)


def upgrade() -> None:
    op.execute(f"SELECT pg_advisory_xact_lock({FOLD_LOCK_ID})")  # no fold while the sets move
    op.execute("LOCK TABLE usage_rollup_jobs IN ACCESS EXCLUSIVE MODE")
    op.execute("""
        CREATE TABLE usage_job_sets (
            set_id integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            account_id text NOT NULL,
            month_start timestamptz NOT NULL,
            meter_code text NOT NULL,
            CONSTRAINT usage_job_sets_key UNIQUE (account_id, month_start, meter_code)
        )
    """)
    op.execute("""
        CREATE TABLE usage_job_set_members (
            set_id integer NOT NULL,
            job_id text NOT NULL,
            CONSTRAINT usage_job_set_members_pkey PRIMARY KEY (set_id, job_id)
        )
    """)
    op.execute(
        "COMMENT ON TABLE usage_job_sets IS 'One distinct-job set per (account, UTC month, meter); derived, "
        "written by the fold and rollups rebuild. Read usage_rollup_jobs_live'"
    )
    op.execute(
        "COMMENT ON TABLE usage_job_set_members IS 'The jobs of each usage_job_sets set; derived, written by the "
        "fold and rollups rebuild. Read usage_rollup_jobs_live'"
    )
    op.execute("""
        INSERT INTO usage_job_sets (account_id, month_start, meter_code)
        SELECT DISTINCT account_id, month_start, meter_code FROM usage_rollup_jobs ORDER BY 1, 2, 3
    """)
    op.execute("""
        INSERT INTO usage_job_set_members (set_id, job_id)
        SELECT s.set_id, j.job_id FROM usage_rollup_jobs AS j
          JOIN usage_job_sets AS s USING (account_id, month_start, meter_code)
         ORDER BY 1, 2
    """)
    op.execute("DROP VIEW usage_rollup_jobs_live")
    op.execute("DROP TABLE usage_rollup_jobs")
    op.execute(_JOBS_VIEW)
    op.execute(_JOBS_LIVE)
    op.execute(FOLD_FUNCTION)
    _pin_fold_function()
    _grant(f"""
            IF EXISTS (SELECT FROM pg_roles WHERE rolname = '{READER_ROLE}') THEN
                GRANT SELECT ON usage_rollup_jobs, usage_rollup_jobs_live TO {READER_ROLE};
            END IF;
            IF EXISTS (SELECT FROM pg_roles WHERE rolname = '{WRITER_ROLE}') THEN
                GRANT SELECT ON usage_job_sets, usage_job_set_members, usage_rollup_jobs, usage_rollup_jobs_live
                    TO {WRITER_ROLE};
            END IF;
    """)


def downgrade() -> None:
    op.execute(f"SELECT pg_advisory_xact_lock({FOLD_LOCK_ID})")
    op.execute("DROP VIEW usage_rollup_jobs_live")
    op.execute("ALTER VIEW usage_rollup_jobs RENAME TO usage_rollup_jobs_narrow")
    op.execute("""
        CREATE TABLE usage_rollup_jobs (
            account_id text NOT NULL,
            month_start timestamptz NOT NULL,
            meter_code text NOT NULL,
            job_id text NOT NULL,
            CONSTRAINT usage_rollup_jobs_pkey PRIMARY KEY (account_id, month_start, meter_code, job_id)
        )
    """)
    op.execute("INSERT INTO usage_rollup_jobs SELECT * FROM usage_rollup_jobs_narrow ORDER BY 1, 2, 3, 4")
    op.execute("DROP VIEW usage_rollup_jobs_narrow")
    op.execute("DROP TABLE usage_job_set_members")
    op.execute("DROP TABLE usage_job_sets")
    op.execute(_JOBS_LIVE)
    op.execute(_least_privilege.FOLD_FUNCTION.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1))
    _pin_fold_function()
    _grant(f"""
            IF EXISTS (SELECT FROM pg_roles WHERE rolname = '{READER_ROLE}') THEN
                GRANT SELECT ON usage_rollup_jobs, usage_rollup_jobs_live TO {READER_ROLE};
            END IF;
            IF EXISTS (SELECT FROM pg_roles WHERE rolname = '{WRITER_ROLE}') THEN
                GRANT SELECT ON usage_rollup_jobs, usage_rollup_jobs_live TO {WRITER_ROLE};
            END IF;
    """)
