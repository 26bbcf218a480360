"""The ledger: usage_events (append-only), rejected_spans, rejected_requests.

Revision ID: 0001_ledger
Revises:
Create Date: 2026-11-21
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001_ledger"
down_revision = None
branch_labels = None
depends_on = None

TSTZ = postgresql.TIMESTAMP(timezone=True)


def upgrade() -> None:
    op.create_table(
        "usage_events",
        sa.Column("occurred_at", TSTZ, nullable=False),
        sa.Column("idempotency_key", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("account_id", sa.Text, nullable=False),
        sa.Column("meter_code", sa.Text, nullable=False),
        sa.Column("meter_version", sa.SmallInteger, nullable=False),
        sa.Column("quantity", sa.Numeric, nullable=False),
        sa.Column("unit", sa.Text, nullable=False),
        sa.Column("job_id", sa.Text),
        sa.Column("plan_code", sa.Text),
        sa.Column("trace_id", sa.Text, nullable=False),
        sa.Column("span_id", sa.Text, nullable=False),
        sa.Column("received_at", TSTZ, nullable=False, server_default=sa.func.now()),
        sa.Column("metadata", postgresql.JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.PrimaryKeyConstraint("occurred_at", "idempotency_key", name="usage_events_pkey"),
    )
    op.create_index("usage_events_account_time_idx", "usage_events", ["account_id", "occurred_at"])
    op.execute(
        """
        CREATE FUNCTION spanmeter_refuse_ledger_change() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'usage_events is append-only: % is refused; record a correction as a new row',
                TG_OP USING ERRCODE = 'insufficient_privilege';
        END
        $$
        """
    )
    op.execute(
        "CREATE TRIGGER usage_events_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON usage_events "
        "FOR EACH STATEMENT EXECUTE FUNCTION spanmeter_refuse_ledger_change()"
    )
    op.create_table(
        "rejected_spans",
        sa.Column("rejection_key", postgresql.UUID(as_uuid=True), primary_key=True),
        sa.Column("rejected_at", TSTZ, nullable=False, server_default=sa.func.now()),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("error_message", sa.Text, nullable=False),
        sa.Column("trace_id", sa.Text, nullable=False),
        sa.Column("span_id", sa.Text, nullable=False),
        sa.Column("meter_codes", postgresql.ARRAY(sa.Text), nullable=False),
        sa.Column("account_id", sa.Text),
        sa.Column("service_name", sa.Text),
        sa.Column("span_ended_at", TSTZ),
        sa.Column("payload", sa.LargeBinary, nullable=False),
    )
    op.create_index("rejected_spans_reason_time_idx", "rejected_spans", ["reason", "rejected_at"])
    op.create_table(
        "rejected_requests",
        sa.Column("request_key", postgresql.UUID(as_uuid=True), primary_key=True),
        sa.Column("received_at", TSTZ, nullable=False, server_default=sa.func.now()),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("error_message", sa.Text, nullable=False),
        sa.Column("size_bytes", sa.BigInteger, nullable=False),
        sa.Column("stored_bytes", sa.Integer, nullable=False),
        sa.Column("peer", sa.Text),
        sa.Column("body", sa.LargeBinary, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("rejected_requests")
    op.drop_table("rejected_spans")
    op.execute("DROP TRIGGER usage_events_append_only ON usage_events")
    op.drop_table("usage_events")
    op.execute("DROP FUNCTION spanmeter_refuse_ledger_change()")
