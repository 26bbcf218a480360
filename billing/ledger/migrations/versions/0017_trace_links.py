"""Trace links in the billing dashboard: ``spanmeter_top_jobs``, the one door from Grafana to job and trace ids.

The dashboard's role, ``spanmeter_grafana``, cannot read ``usage_events`` (migration 0004): a dashboard must read
the rollups, and raw rows carry whatever a producer put in a span. To link the dashboard to a trace viewer
(issue 6/7: "a configurable trace-viewer URL template … in the billing dashboard"), this adds a SECURITY DEFINER
function that returns, per meter, an account's top jobs by quantity in a time range, each with its row count,
quantity, one trace id and first and last time: job and trace ids only, never the rows' metadata.

    SELECT * FROM spanmeter_top_jobs(ARRAY['acme'], '2026-12-01', '2027-01-01', 10)

- ``accounts``: the accounts to rank; ``'*'`` among them means the dashboard's All: the 5 accounts with the
  most rows in the range (found in the rollups), so a refresh never ranks every account's raw rows.
- SECURITY DEFINER with ``search_path`` pinned to the ledger's schema and ``pg_temp`` last (a caller's
  temporary table cannot stand in for ``usage_events``), like the functions of 0006.
- The range may span at most 93 days (a larger one is refused with a message naming the fix): the function
  reads raw rows, bounded by account and time (``usage_events_account_time_idx``, partition pruning).
- ``top``: 1 to 100 jobs per (account, meter).

Executable by ``spanmeter_grafana`` only (and the owner). Downgrade drops it.

Revision ID: 0017_trace_links
Revises: 0016_webhooks
"""

from __future__ import annotations

from alembic import op

revision = "0017_trace_links"
down_revision = "0016_webhooks"
branch_labels = None
depends_on = None

READER_ROLE = "spanmeter_grafana"
SIGNATURE = "spanmeter_top_jobs(text[], timestamptz, timestamptz, integer)"

FUNCTION = """
CREATE FUNCTION spanmeter_top_jobs(accounts text[], range_from timestamptz, range_to timestamptz, top integer)
RETURNS TABLE (account_id text, meter_code text, job_id text, rows bigint, quantity numeric, trace_id text,
               first_at timestamptz, last_at timestamptz)
LANGUAGE plpgsql STABLE AS $fn$
DECLARE
    chosen text[] := accounts;
BEGIN
    IF range_to - range_from > interval '93 days' THEN
        RAISE EXCEPTION 'spanmeter_top_jobs reads at most 93 days of raw rows: narrow the time range'
            USING ERRCODE = '22023';
    END IF;
    IF '*' = ANY(accounts) THEN  -- every account: the 5 with the most rows in the range (from the rollups)
        SELECT coalesce(array_agg(x.account_id), '{}') INTO chosen FROM (
            SELECT r.account_id FROM usage_rollups_hourly_live AS r
             WHERE r.bucket_start >= date_trunc('hour', range_from) AND r.bucket_start < range_to
             GROUP BY r.account_id ORDER BY sum(r.events) DESC, r.account_id LIMIT 5) AS x;
    END IF;
    RETURN QUERY
    SELECT j.account_id, j.meter_code, j.job, j.n, j.q, j.trace, j.a, j.b
      FROM (
        SELECT g.*, row_number() OVER (PARTITION BY g.account_id, g.meter_code ORDER BY g.q DESC, g.job) AS r
          FROM (
            SELECT e.account_id, e.meter_code, coalesce(e.job_id, '') AS job, count(*) AS n, sum(e.quantity) AS q,
                   min(e.trace_id) AS trace, min(e.occurred_at) AS a, max(e.occurred_at) AS b
              FROM usage_events AS e
             WHERE e.account_id = ANY(chosen)
               AND e.occurred_at >= range_from AND e.occurred_at < range_to
             GROUP BY 1, 2, 3
          ) AS g
      ) AS j
     WHERE j.r <= least(greatest(top, 1), 100)
     ORDER BY j.account_id, j.meter_code, j.q DESC, j.job;
END
$fn$
"""


def upgrade() -> None:
    op.execute(FUNCTION)
    op.execute(f"""
        DO $$
        BEGIN
            EXECUTE format('ALTER FUNCTION {SIGNATURE} SECURITY DEFINER SET search_path = %I, pg_temp',
                           current_schema());
        END
        $$
    """)
    op.execute(f"REVOKE ALL ON FUNCTION {SIGNATURE} FROM PUBLIC")
    op.execute(f"""
        DO $$
        BEGIN
            IF EXISTS (SELECT FROM pg_roles WHERE rolname = '{READER_ROLE}') THEN
                GRANT EXECUTE ON FUNCTION {SIGNATURE} TO {READER_ROLE};
            END IF;
        END
        $$
    """)
    op.execute(
        f"COMMENT ON FUNCTION {SIGNATURE} IS 'Per (account, meter): the top jobs by quantity in a range, with a "
        "trace id each (the billing dashboard''s trace links); at most 93 days'"
    )


def downgrade() -> None:
    op.execute(f"DROP FUNCTION {SIGNATURE}")
