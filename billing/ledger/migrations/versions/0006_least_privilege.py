"""Least privilege: the role ``spanmeter serve`` writes as, and the functions that change derived tables.

``serve`` used to connect as the tables' owner (the superuser, embedded and in compose), so the append-only
guarantee did not bind its own credential: ``ALTER TABLE usage_events DISABLE TRIGGER ALL`` or
``SET session_replication_role = replica``, then ``DELETE``, succeeded. Three roles now:

- the **owner** (whoever runs ``spanmeter db upgrade``): migrations, ``rollups rebuild``, corrections;
- ``spanmeter_writer`` (LOGIN, created here if missing; give it a password, or trust it on a socket):
  ``INSERT`` on ``usage_events``, ``rejected_spans`` and ``rejected_requests`` only, ``SELECT`` on the
  ledger's tables (duplicates, readiness, billing metrics), ``EXECUTE`` on the two functions below; no
  ``UPDATE``, ``DELETE``, ``TRUNCATE``, ``TRIGGER`` or ownership anywhere, so it cannot disable a trigger
  or change a row by any route (``session_replication_role`` needs a superuser);
- ``spanmeter_grafana``: the SELECT-only reader (migration 0004).

The derived tables change only through ``SECURITY DEFINER`` functions owned by the owner, with
``search_path`` pinned to the ledger's schema: the delta trigger ``spanmeter_rollup_deltas()`` (now
definer), ``spanmeter_fold_rollups(max_deltas)`` (the compactor's fold, under the fold lock: no rows when
another folder or a rebuild holds it) and ``spanmeter_put_month_to_date(…)`` (the billing-metrics refresh).
``EXECUTE`` is revoked from PUBLIC and granted to the writer only.

A migrating user that may not create roles gets a warning naming the statements to run by hand.
Downgrading drops the functions, makes the trigger an invoker again and revokes the grants; the role is
kept (other ledgers on the cluster may use it).
"""

from __future__ import annotations

from alembic import op

revision = "0006_least_privilege"
down_revision = "0005_rollup_deltas"
branch_labels = None
depends_on = None

WRITER_ROLE = "spanmeter_writer"
INSERT_TABLES = ("usage_events", "rejected_spans", "rejected_requests")
FOLD_LOCK_ID = 0x726F6C6C75707366  # billing.rollup_store.FOLD_LOCK_ID

_COLUMNS = (
    "account_id, bucket_start, meter_code, meter_version, plan_code, dimension, quantity, events, max_quantity,"
    " latest_at, latest_quantity"
)


def _fold_upsert(table: str, unit: str) -> str:
    return f"""
    INSERT INTO {table} AS r ({_COLUMNS})
    SELECT account_id, date_trunc('{unit}', bucket_start, 'UTC'), meter_code, meter_version, plan_code, dimension,
           sum(quantity), sum(events), max(max_quantity), max(latest_at),
           (max(ARRAY[extract(epoch FROM latest_at), latest_quantity]))[2]
      FROM taken
     GROUP BY 1, 2, 3, 4, 5, 6
    ON CONFLICT (account_id, bucket_start, meter_code, meter_version, plan_code, dimension) DO UPDATE SET
        quantity = r.quantity + EXCLUDED.quantity,
        events = r.events + EXCLUDED.events,
        max_quantity = greatest(r.max_quantity, EXCLUDED.max_quantity),
        latest_quantity = CASE
            WHEN (EXCLUDED.latest_at, EXCLUDED.latest_quantity) > (r.latest_at, r.latest_quantity)
            THEN EXCLUDED.latest_quantity ELSE r.latest_quantity END,
        latest_at = greatest(r.latest_at, EXCLUDED.latest_at)
    RETURNING 1
    """


# The fold (see billing.rollups): consume at most max_deltas of the oldest deltas with DELETE … RETURNING and
# add them to both rollup tables and the job sets, in one statement, under the fold lock.
FOLD_FUNCTION = f"""
CREATE FUNCTION spanmeter_fold_rollups(max_deltas integer)
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
    jobs AS (
        INSERT INTO usage_rollup_jobs (account_id, month_start, meter_code, job_id)
        SELECT DISTINCT account_id, date_trunc('month', bucket_start, 'UTC'), meter_code, unnest(job_ids)
          FROM taken WHERE job_ids IS NOT NULL
        ON CONFLICT DO NOTHING
        RETURNING 1
    )
    SELECT (SELECT count(*) FROM taken)::bigint, (SELECT coalesce(sum(t.events), 0) FROM taken AS t)::bigint,
           (SELECT count(*) FROM hourly)::bigint, (SELECT count(*) FROM daily)::bigint,
           (SELECT count(*) FROM jobs)::bigint;
END
$$
"""

MONTH_TO_DATE_FUNCTION = """
CREATE FUNCTION spanmeter_put_month_to_date(
    p_account_id text, p_period_start timestamptz, p_plan_code text, p_pricing_version text, p_currency text,
    p_invoice_so_far numeric, p_projected_total numeric, p_computed_at timestamptz
) RETURNS void LANGUAGE sql SECURITY DEFINER AS $$
    INSERT INTO account_month_to_date AS m (account_id, period_start, plan_code, pricing_version, currency,
                                             invoice_so_far, projected_total, computed_at)
    VALUES (p_account_id, p_period_start, p_plan_code, p_pricing_version, p_currency, p_invoice_so_far,
            p_projected_total, p_computed_at)
    ON CONFLICT (account_id, period_start) DO UPDATE SET
        plan_code = excluded.plan_code, pricing_version = excluded.pricing_version, currency = excluded.currency,
        invoice_so_far = excluded.invoice_so_far, projected_total = excluded.projected_total,
        computed_at = excluded.computed_at
$$
"""

FUNCTIONS = (
    "spanmeter_fold_rollups(integer)",
    "spanmeter_put_month_to_date(text, timestamptz, text, text, text, numeric, numeric, timestamptz)",
)


def upgrade() -> None:
    op.execute(FOLD_FUNCTION)
    op.execute(MONTH_TO_DATE_FUNCTION)
    for function in (*FUNCTIONS, "spanmeter_rollup_deltas()"):
        op.execute(f"""
            DO $$
            BEGIN
                EXECUTE format('ALTER FUNCTION {function} SECURITY DEFINER SET search_path = %I, pg_temp',
                               current_schema());
            END
            $$
        """)
        op.execute(f"REVOKE ALL ON FUNCTION {function} FROM PUBLIC")
    inserts = ", ".join(INSERT_TABLES)
    functions = ", ".join(FUNCTIONS)
    op.execute(f"""
        DO $$
        BEGIN
            IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{WRITER_ROLE}') THEN
                BEGIN
                    CREATE ROLE {WRITER_ROLE} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT NOREPLICATION
                        NOBYPASSRLS;
                EXCEPTION
                    WHEN duplicate_object OR unique_violation THEN NULL;  -- created concurrently: fine
                    WHEN insufficient_privilege THEN
                        RAISE WARNING 'cannot create role {WRITER_ROLE} (no CREATEROLE): create it (LOGIN), then '
                            'run GRANT USAGE ON SCHEMA % TO {WRITER_ROLE}; GRANT SELECT ON ALL TABLES IN SCHEMA % '
                            'TO {WRITER_ROLE}; GRANT INSERT ON {inserts} TO {WRITER_ROLE}; '
                            'GRANT EXECUTE ON FUNCTION {functions} TO {WRITER_ROLE}',
                            current_schema(), current_schema();
                        RETURN;
                END;
            END IF;
            EXECUTE format('GRANT USAGE ON SCHEMA %I TO {WRITER_ROLE}', current_schema());
            EXECUTE format('GRANT SELECT ON ALL TABLES IN SCHEMA %I TO {WRITER_ROLE}', current_schema());
            GRANT INSERT ON {inserts} TO {WRITER_ROLE};
            GRANT EXECUTE ON FUNCTION {functions} TO {WRITER_ROLE};
            -- tables later migrations create (as this owner) are readable too
            EXECUTE format('ALTER DEFAULT PRIVILEGES IN SCHEMA %I GRANT SELECT ON TABLES TO {WRITER_ROLE}',
                           current_schema());
        END
        $$
    """)


def downgrade() -> None:
    op.execute(f"""
        DO $$
        BEGIN
            IF EXISTS (SELECT FROM pg_roles WHERE rolname = '{WRITER_ROLE}') THEN
                REVOKE INSERT ON {", ".join(INSERT_TABLES)} FROM {WRITER_ROLE};
                EXECUTE format('ALTER DEFAULT PRIVILEGES IN SCHEMA %I REVOKE SELECT ON TABLES FROM {WRITER_ROLE}',
                               current_schema());
                EXECUTE format('REVOKE SELECT ON ALL TABLES IN SCHEMA %I FROM {WRITER_ROLE}', current_schema());
                EXECUTE format('REVOKE USAGE ON SCHEMA %I FROM {WRITER_ROLE}', current_schema());
            END IF;
        END
        $$
    """)
    for function in FUNCTIONS:
        op.execute(f"DROP FUNCTION {function}")
    op.execute("ALTER FUNCTION spanmeter_rollup_deltas() SECURITY INVOKER RESET search_path")
    op.execute("GRANT EXECUTE ON FUNCTION spanmeter_rollup_deltas() TO PUBLIC")
