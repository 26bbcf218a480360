"""Webhooks: endpoints, the event outbox, deliveries and the attempt log (see :mod:`spanmeter.billing.webhooks`).

- ``webhook_endpoints``: one row per ``spanmeter webhooks add``: URL, event types, the one account it hears
  about (NULL: every account), the signing secret (stored: signing needs it; printed once), who and when.
  ``webhook_endpoint_removals``: one row per removed endpoint. Both append-only.
- ``webhook_events``: the outbox, append-only: one row per event, its ``event_id`` (the idempotency id every
  delivery sends), type, account, ``dedupe_key`` (UNIQUE: an event is recorded once however often it is
  found) and ``body``, the exact JSON bytes every attempt sends and signs.
- ``webhook_deliveries``: one row per (event, endpoint), the only mutable table here: ``state``
  (``pending``, ``delivered``, ``failed`` after the last attempt, ``cancelled`` when the endpoint is
  removed), ``attempts``, ``next_attempt_at``, the last status or error, ``delivered_at``.
- ``webhook_attempts``: append-only, one row per HTTP attempt: status code or error, duration, when.

``spanmeter_enqueue_webhook(…)`` (SECURITY DEFINER, search path pinned, EXECUTE for ``spanmeter_writer`` only)
records an event unless its dedupe key is known, and a pending delivery for every endpoint subscribed to it,
in the caller's transaction; it returns whether the event is new. ``spanmeter_writer`` (``serve``'s month-to-date
refresh enqueues, its dispatcher delivers) may also ``UPDATE`` the delivery-state columns of
``webhook_deliveries`` (which also lets it lock them, ``FOR UPDATE SKIP LOCKED``) and ``INSERT`` into
``webhook_attempts``; it reads the secrets, because it signs. The Grafana reader gets nothing here.

Revision ID: 0016_webhooks
Revises: 0015_api
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0016_webhooks"
down_revision = "0015_api"
branch_labels = None
depends_on = None

TS = postgresql.TIMESTAMP(timezone=True)
WRITER_ROLE = "spanmeter_writer"
APPEND_ONLY = ("webhook_endpoints", "webhook_endpoint_removals", "webhook_events", "webhook_attempts")
TABLES = ("webhook_endpoints", "webhook_endpoint_removals", "webhook_events", "webhook_deliveries", "webhook_attempts")
DELIVERY_STATE_COLUMNS = "state, attempts, next_attempt_at, last_status, last_error, delivered_at"
ENQUEUE = "spanmeter_enqueue_webhook(text, text, text, text, text, timestamptz)"

ENQUEUE_FUNCTION = """
CREATE FUNCTION spanmeter_enqueue_webhook(
    p_event_id text, p_event_type text, p_account_id text, p_dedupe_key text, p_body text, p_created_at timestamptz
) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO webhook_events (event_id, event_type, account_id, dedupe_key, body, created_at)
    VALUES (p_event_id, p_event_type, p_account_id, p_dedupe_key, p_body, p_created_at)
    ON CONFLICT (dedupe_key) DO NOTHING;
    IF NOT FOUND THEN
        RETURN false;  -- recorded before: its deliveries were made then
    END IF;
    INSERT INTO webhook_deliveries (event_id, endpoint_id)
    SELECT p_event_id, e.endpoint_id
      FROM webhook_endpoints e
     WHERE p_event_type = ANY (e.events)
       AND (e.account_id IS NULL OR e.account_id = p_account_id)
       AND NOT EXISTS (SELECT FROM webhook_endpoint_removals r WHERE r.endpoint_id = e.endpoint_id);
    RETURN true;
END
$$
"""


def upgrade() -> None:
    op.create_table(
        "webhook_endpoints",
        sa.Column("endpoint_id", sa.BigInteger, sa.Identity(always=True), primary_key=True),
        sa.Column("url", sa.Text, nullable=False),
        sa.Column("events", postgresql.ARRAY(sa.Text), nullable=False),
        sa.Column("account_id", sa.Text, nullable=True),
        sa.Column("secret", sa.Text, nullable=False),
        sa.Column("note", sa.Text, nullable=False, server_default=""),
        sa.Column("created_at", TS, nullable=False, server_default=sa.text("now()")),
        sa.Column("created_by", sa.Text, nullable=False),
        sa.CheckConstraint(
            "cardinality(events) > 0 AND events <@ ARRAY['quota.threshold', 'invoice.finalized']",
            name="webhook_endpoints_events_known",
        ),
        sa.CheckConstraint("url ~ '^https?://'", name="webhook_endpoints_url_http"),
    )
    op.create_table(
        "webhook_endpoint_removals",
        sa.Column("endpoint_id", sa.BigInteger, sa.ForeignKey("webhook_endpoints.endpoint_id"), primary_key=True),
        sa.Column("removed_at", TS, nullable=False, server_default=sa.text("now()")),
        sa.Column("removed_by", sa.Text, nullable=False),
    )
    op.create_table(
        "webhook_events",
        sa.Column("event_id", sa.Text, primary_key=True),
        sa.Column("event_type", sa.Text, nullable=False),
        sa.Column("account_id", sa.Text, nullable=False),
        sa.Column("dedupe_key", sa.Text, nullable=False, unique=True),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("recorded_at", TS, nullable=False, server_default=sa.text("now()")),
    )
    op.create_table(
        "webhook_deliveries",
        sa.Column("delivery_id", sa.BigInteger, sa.Identity(always=True), primary_key=True),
        sa.Column("event_id", sa.Text, sa.ForeignKey("webhook_events.event_id"), nullable=False),
        sa.Column("endpoint_id", sa.BigInteger, sa.ForeignKey("webhook_endpoints.endpoint_id"), nullable=False),
        sa.Column("state", sa.Text, nullable=False, server_default="pending"),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("next_attempt_at", TS, nullable=False, server_default=sa.text("now()")),
        sa.Column("last_status", sa.Integer, nullable=True),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.Column("delivered_at", TS, nullable=True),
        sa.Column("created_at", TS, nullable=False, server_default=sa.text("now()")),
        sa.UniqueConstraint("event_id", "endpoint_id", name="webhook_deliveries_once"),
        sa.CheckConstraint(
            "state IN ('pending', 'delivered', 'failed', 'cancelled')", name="webhook_deliveries_state_known"
        ),
    )
    op.create_index(
        "webhook_deliveries_due_idx",
        "webhook_deliveries",
        ["next_attempt_at"],
        postgresql_where=sa.text("state = 'pending'"),
    )
    op.create_table(
        "webhook_attempts",
        sa.Column("attempt_id", sa.BigInteger, sa.Identity(always=True), primary_key=True),
        sa.Column("delivery_id", sa.BigInteger, sa.ForeignKey("webhook_deliveries.delivery_id"), nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("attempted_at", TS, nullable=False),
        sa.Column("status_code", sa.Integer, nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("duration_seconds", sa.Float, nullable=False),
        sa.UniqueConstraint("delivery_id", "attempt", name="webhook_attempts_once"),
    )
    for table in APPEND_ONLY:
        op.execute(
            f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON {table} "
            "FOR EACH STATEMENT EXECUTE FUNCTION spanmeter_refuse_change()"
        )
    op.execute(ENQUEUE_FUNCTION)
    op.execute(f"""
        DO $$
        BEGIN
            EXECUTE format('ALTER FUNCTION {ENQUEUE} SECURITY DEFINER SET search_path = %I, pg_temp', current_schema());
            IF EXISTS (SELECT FROM pg_roles WHERE rolname = '{WRITER_ROLE}') THEN
                GRANT EXECUTE ON FUNCTION {ENQUEUE} TO {WRITER_ROLE};
                GRANT SELECT ON {", ".join(TABLES)} TO {WRITER_ROLE};
                GRANT UPDATE ({DELIVERY_STATE_COLUMNS}) ON webhook_deliveries TO {WRITER_ROLE};
                GRANT INSERT ON webhook_attempts TO {WRITER_ROLE};
            END IF;
        END
        $$
    """)
    op.execute(f"REVOKE ALL ON FUNCTION {ENQUEUE} FROM PUBLIC")
    op.execute(
        "COMMENT ON TABLE webhook_events IS 'Webhook outbox (spanmeter webhooks): append-only, once per dedupe_key'"
    )
    op.execute("COMMENT ON TABLE webhook_endpoints IS 'Webhook endpoints: the secret signs deliveries (printed once)'")


def downgrade() -> None:
    op.execute(f"DROP FUNCTION {ENQUEUE}")
    for table in reversed(TABLES):
        if table in APPEND_ONLY:
            op.execute(f"DROP TRIGGER {table}_append_only ON {table}")
        op.drop_table(table)
