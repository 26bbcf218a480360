"""Operations: a SELECT-only role for Grafana, and the month-to-date table its billing dashboard reads.

- Role ``spanmeter_grafana`` (NOLOGIN, no other privilege) with ``SELECT`` on the reporting tables only: rollups, subscriptions, invoices and their lines, adjustments, reconciliation runs and
  ``account_month_to_date``. Not on ``usage_events`` (10M+ rows: a dashboard must read the rollups) nor on the
  rejected payloads (they may carry whatever a producer put in a span). Roles belong to the whole
  PostgreSQL cluster, so the role is created only if missing, and it is the reader of every spanmeter
  ledger on that cluster whose migration granted it (grants are per database): keep ledgers whose readers
  must differ on different clusters. It cannot log in until a deployment says so, with a password:
  ``ALTER ROLE spanmeter_grafana WITH LOGIN PASSWORD '…'`` (the compose stack's ``grafana-db-role``
  service does this). A migrating user that may not create roles gets a warning naming the statements to
  run by hand (``CREATE ROLE``, then the ``GRANT`` statements below); re-running the migration does not repeat them.
  Downgrading revokes the grants and keeps the role (other ledgers on the cluster may use it).
- ``account_month_to_date``: per account and month, the draft invoice so far and the linear projection,
  rewritten by ``spanmeter serve`` at every billing-metrics refresh. Derived data (rebuildable at any time
  from the ledger and the pricing versions), so unlike the ledger tables it is updated in place.

Revision ID: 0004_operations
Revises: 0003_rating
Create Date: 2026-11-21
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0004_operations"
down_revision = "0003_rating"
branch_labels = None
depends_on = None

TS = postgresql.TIMESTAMP(timezone=True)
READER_ROLE = "spanmeter_grafana"
READABLE_TABLES = (
    "usage_rollups_hourly",
    "usage_rollups_daily",
    "usage_rollup_jobs",
    "subscriptions",
    "usage_adjustments",
    "invoices",
    "invoice_lines",
    "reconciliation_runs",
    "account_month_to_date",
)


def upgrade() -> None:
    op.create_table(
        "account_month_to_date",
        sa.Column("account_id", sa.Text, nullable=False),
        sa.Column("period_start", TS, nullable=False),
        sa.Column("plan_code", sa.Text, nullable=False),
        sa.Column("pricing_version", sa.Text, nullable=False),
        sa.Column("currency", sa.Text, nullable=False),
        sa.Column("invoice_so_far", sa.Numeric, nullable=False),
        sa.Column("projected_total", sa.Numeric, nullable=False),
        sa.Column("computed_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("account_id", "period_start"),
    )
    op.execute(
        "COMMENT ON TABLE account_month_to_date IS 'Derived: draft invoice so far and linear projection per account "
        "and month, rewritten by spanmeter serve; the ledger stays the source of truth'"
    )
    tables = ", ".join(READABLE_TABLES)
    op.execute(f"""
        DO $$
        BEGIN
            IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{READER_ROLE}') THEN
                BEGIN
                    CREATE ROLE {READER_ROLE} NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT;
                EXCEPTION
                    WHEN duplicate_object OR unique_violation THEN NULL;  -- created concurrently: fine
                    WHEN insufficient_privilege THEN
                        RAISE WARNING 'cannot create role {READER_ROLE} (no CREATEROLE): create it, then run '
                            'GRANT USAGE ON SCHEMA % TO {READER_ROLE}; GRANT SELECT ON {tables} TO {READER_ROLE}',
                            current_schema();
                        RETURN;
                END;
            END IF;
            EXECUTE format('GRANT USAGE ON SCHEMA %I TO {READER_ROLE}', current_schema());
            GRANT SELECT ON {tables} TO {READER_ROLE};
        END
        $$
    """)


def downgrade() -> None:
    tables = ", ".join(READABLE_TABLES)
    op.execute(f"""
        DO $$
        BEGIN
            IF EXISTS (SELECT FROM pg_roles WHERE rolname = '{READER_ROLE}') THEN
                REVOKE SELECT ON {tables} FROM {READER_ROLE};
                EXECUTE format('REVOKE USAGE ON SCHEMA %I FROM {READER_ROLE}', current_schema());
            END IF;
        END
        $$
    """)
    op.drop_table("account_month_to_date")
