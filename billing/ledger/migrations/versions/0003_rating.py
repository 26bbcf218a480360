"""Rating: subscriptions, usage rollups, usage adjustments, finalized invoices, reconciliation runs.

- ``subscriptions``: effective-dated, append-only. The subscription in force at time *t* is the row with the
  latest ``valid_from <= t`` (ties: the latest ``subscription_id``), unless its ``valid_to`` has passed.
- ``usage_rollups_hourly`` / ``usage_rollups_daily``: per account, meter and meter version, span plan code, dimension (the
  model of a token or GPU row) and UTC bucket of ``occurred_at``: sum, count, max and latest quantity.
  ``usage_rollup_jobs``: the distinct job ids per account, meter and UTC month (unique counts).
  All three are maintained by one statement-level trigger on ``usage_events`` that aggregates the
  statement's new rows (a transition table) and upserts them in key order: one upsert per batch, not per
  row, in the inserting transaction, so the rollups commit (or roll back) with the rows they count and stay
  exact whatever order concurrent receivers commit in. Rows skipped by ``ON CONFLICT DO NOTHING`` are not
  in the transition table, so a retried span is never counted twice.
- ``usage_adjustments``: corrections, append-only, each with its own idempotency key.
- ``invoices`` / ``invoice_lines``: finalized invoices, append-only (a finalized invoice is immutable).
- ``reconciliation_runs``: what ``spanmeter reconcile`` found, one row per run.

Revision ID: 0003_rating
Revises: 0002_dead_letter_replays
Create Date: 2026-11-21
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0003_rating"
down_revision = "0002_dead_letter_replays"
branch_labels = None
depends_on = None

TS = postgresql.TIMESTAMP(timezone=True)
APPEND_ONLY = ("subscriptions", "usage_adjustments", "invoices", "invoice_lines")


def _rollup_table(name: str) -> None:
    op.create_table(
        name,
        sa.Column("account_id", sa.Text, nullable=False),
        sa.Column("bucket_start", TS, nullable=False),
        sa.Column("meter_code", sa.Text, nullable=False),
        sa.Column("meter_version", sa.SmallInteger, nullable=False),
        sa.Column("plan_code", sa.Text, nullable=False),  # '' when the spans carried none
        sa.Column("dimension", sa.Text, nullable=False),  # gen_ai.model / gpu.model, '' otherwise
        sa.Column("quantity", sa.Numeric, nullable=False),
        sa.Column("events", sa.BigInteger, nullable=False),
        sa.Column("max_quantity", sa.Numeric, nullable=False),
        sa.Column("latest_at", TS, nullable=False),
        sa.Column("latest_quantity", sa.Numeric, nullable=False),
        sa.PrimaryKeyConstraint("account_id", "bucket_start", "meter_code", "meter_version", "plan_code", "dimension"),
    )


def _rollup_upsert(table: str, unit: str) -> str:
    return f"""
    INSERT INTO {table} AS r (account_id, bucket_start, meter_code, meter_version, plan_code, dimension,
                              quantity, events, max_quantity, latest_at, latest_quantity)
    SELECT account_id, date_trunc('{unit}', occurred_at, 'UTC'), meter_code, meter_version, coalesce(plan_code, ''),
           coalesce(metadata->>'gen_ai.model', metadata->>'gpu.model', ''),
           sum(quantity), count(*), max(quantity), max(occurred_at),
           (array_agg(quantity ORDER BY occurred_at DESC, quantity DESC))[1]
      FROM new_events
     GROUP BY 1, 2, 3, 4, 5, 6
     ORDER BY 1, 2, 3, 4, 5, 6
    ON CONFLICT (account_id, bucket_start, meter_code, meter_version, plan_code, dimension) DO UPDATE SET
        quantity = r.quantity + EXCLUDED.quantity,
        events = r.events + EXCLUDED.events,
        max_quantity = greatest(r.max_quantity, EXCLUDED.max_quantity),
        latest_quantity = CASE
            WHEN (EXCLUDED.latest_at, EXCLUDED.latest_quantity) > (r.latest_at, r.latest_quantity)
            THEN EXCLUDED.latest_quantity ELSE r.latest_quantity END,
        latest_at = greatest(r.latest_at, EXCLUDED.latest_at);
    """


ROLLUP_FUNCTION = f"""
CREATE FUNCTION spanmeter_rollup_new_events() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    {_rollup_upsert("usage_rollups_hourly", "hour")}
    {_rollup_upsert("usage_rollups_daily", "day")}
    INSERT INTO usage_rollup_jobs (account_id, month_start, meter_code, job_id)
    SELECT DISTINCT account_id, date_trunc('month', occurred_at, 'UTC'), meter_code, job_id
      FROM new_events
     WHERE job_id IS NOT NULL AND meter_code = 'worker_seconds'
     ORDER BY 1, 2, 3, 4
    ON CONFLICT DO NOTHING;
    RETURN NULL;
END
$$
"""


def upgrade() -> None:
    op.create_table(
        "subscriptions",
        sa.Column("subscription_id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("account_id", sa.Text, nullable=False),
        sa.Column("plan_code", sa.Text, nullable=False),
        sa.Column("pricing_version", sa.Text, nullable=False),
        sa.Column("currency", sa.Text, nullable=False),
        sa.Column("valid_from", TS, nullable=False),
        sa.Column("valid_to", TS),
        sa.Column("created_at", TS, nullable=False, server_default=sa.func.now()),
        sa.Column("created_by", sa.Text, nullable=False),
        sa.Column("note", sa.Text),
        sa.CheckConstraint("valid_to IS NULL OR valid_to > valid_from", name="subscriptions_valid_range"),
        sa.CheckConstraint("currency ~ '^[A-Z]{3}$'", name="subscriptions_currency_iso4217"),
    )
    op.create_index("subscriptions_account_from_idx", "subscriptions", ["account_id", "valid_from"])

    _rollup_table("usage_rollups_hourly")
    _rollup_table("usage_rollups_daily")
    op.create_table(
        "usage_rollup_jobs",
        sa.Column("account_id", sa.Text, nullable=False),
        sa.Column("month_start", TS, nullable=False),
        sa.Column("meter_code", sa.Text, nullable=False),
        sa.Column("job_id", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("account_id", "month_start", "meter_code", "job_id"),
    )
    op.execute(ROLLUP_FUNCTION)
    op.execute(
        "CREATE TRIGGER usage_events_rollup AFTER INSERT ON usage_events REFERENCING NEW TABLE AS new_events "
        "FOR EACH STATEMENT EXECUTE FUNCTION spanmeter_rollup_new_events()"
    )

    op.create_table(
        "usage_adjustments",
        sa.Column("idempotency_key", sa.Text, primary_key=True),
        sa.Column("account_id", sa.Text, nullable=False),
        sa.Column("meter_code", sa.Text, nullable=False),
        sa.Column("quantity", sa.Numeric, nullable=False),  # signed: negative takes usage away
        sa.Column("occurred_at", TS, nullable=False),  # decides the period it corrects
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("created_by", sa.Text, nullable=False),
        sa.Column("created_at", TS, nullable=False, server_default=sa.func.now()),
        sa.Column("reference", sa.Text),  # a trace id, a ticket, an invoice number
        sa.CheckConstraint("quantity <> 0", name="usage_adjustments_nonzero"),
        sa.CheckConstraint("length(reason) > 0", name="usage_adjustments_reason"),
    )
    op.create_index("usage_adjustments_account_time_idx", "usage_adjustments", ["account_id", "occurred_at"])

    op.create_table(
        "invoices",
        sa.Column("invoice_number", sa.Text, primary_key=True),
        sa.Column("account_id", sa.Text, nullable=False),
        sa.Column("period_start", TS, nullable=False),
        sa.Column("pricing_version", sa.Text, nullable=False),
        sa.Column("currency", sa.Text, nullable=False),
        sa.Column("total", sa.Numeric, nullable=False),
        sa.Column("document", postgresql.JSONB, nullable=False),
        sa.Column("finalized_at", TS, nullable=False, server_default=sa.func.now()),
        sa.Column("finalized_by", sa.Text, nullable=False),
        sa.UniqueConstraint("account_id", "period_start", name="invoices_one_per_account_period"),
    )
    op.create_index("invoices_period_idx", "invoices", ["period_start"])
    op.create_table(
        "invoice_lines",
        sa.Column("invoice_number", sa.Text, sa.ForeignKey("invoices.invoice_number"), nullable=False),
        sa.Column("line_no", sa.SmallInteger, nullable=False),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("meter_code", sa.Text),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("quantity", sa.Numeric, nullable=False),
        sa.Column("amount", sa.Numeric, nullable=False),
        sa.Column("currency", sa.Text, nullable=False),
        sa.Column("reference_period", TS),  # adjustment lines: the earlier period they settle
        sa.PrimaryKeyConstraint("invoice_number", "line_no"),
    )

    op.create_table(
        "reconciliation_runs",
        sa.Column("run_id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("period_start", TS, nullable=False),
        sa.Column("ran_at", TS, nullable=False, server_default=sa.func.now()),
        sa.Column("delta", sa.Numeric, nullable=False),
        sa.Column("details", postgresql.JSONB, nullable=False),
    )

    op.execute(
        """
        CREATE FUNCTION spanmeter_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION '% is append-only: % is refused; record a correction as a new row',
                TG_TABLE_NAME, TG_OP USING ERRCODE = 'insufficient_privilege';
        END
        $$
        """
    )
    for table in APPEND_ONLY:
        op.execute(
            f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON {table} "
            "FOR EACH STATEMENT EXECUTE FUNCTION spanmeter_refuse_change()"
        )


def downgrade() -> None:
    for table in APPEND_ONLY:
        op.execute(f"DROP TRIGGER {table}_append_only ON {table}")
    op.execute("DROP FUNCTION spanmeter_refuse_change()")
    op.drop_table("reconciliation_runs")
    op.drop_table("invoice_lines")
    op.drop_table("invoices")
    op.drop_table("usage_adjustments")
    op.execute("DROP TRIGGER usage_events_rollup ON usage_events")
    op.execute("DROP FUNCTION spanmeter_rollup_new_events()")
    op.drop_table("usage_rollup_jobs")
    op.drop_table("usage_rollups_daily")
    op.drop_table("usage_rollups_hourly")
    op.drop_table("subscriptions")
