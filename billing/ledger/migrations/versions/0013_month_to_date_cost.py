"""Month to date with cost: ``account_month_to_date.cost_so_far`` and ``unpriced_items``.

- ``cost_so_far`` (numeric, nullable): what this month's usage so far costs you at the price books' ``cost``
  entries, in the account's currency (NULL when no book entry of its usage has a cost); the billing dashboard
  shows the margin so far beside the draft invoice.
- ``unpriced_items`` (integer): (model, meter) pairs of the month's usage that no book version prices
  (``spanmeter prices unpriced`` lists them); ``spanmeter_unpriced_usage_items`` exports their sum.

``spanmeter_put_month_to_date`` (SECURITY DEFINER, migration 0006) takes the two new values; the function
is replaced (same owner, search path, EXECUTE only for ``spanmeter_writer``). Adding nullable columns and a
column with a constant default rewrites nothing.

Revision ID: 0013_month_to_date_cost
Revises: 0012_price_books
"""

from __future__ import annotations

import importlib

import sqlalchemy as sa
from alembic import op

revision = "0013_month_to_date_cost"
down_revision = "0012_price_books"
branch_labels = None
depends_on = None

_least_privilege = importlib.import_module("spanmeter.billing.ledger.migrations.versions.0006_least_privilege")
WRITER_ROLE = "spanmeter_writer"
OLD = "spanmeter_put_month_to_date(text, timestamptz, text, text, text, numeric, numeric, timestamptz)"
NEW = (
    "spanmeter_put_month_to_date(text, timestamptz, text, text, text, numeric, numeric, timestamptz, numeric, integer)"
)

FUNCTION = """
CREATE FUNCTION spanmeter_put_month_to_date(
    p_account_id text, p_period_start timestamptz, p_plan_code text, p_pricing_version text, p_currency text,
    p_invoice_so_far numeric, p_projected_total numeric, p_computed_at timestamptz, p_cost_so_far numeric,
    p_unpriced_items integer
) RETURNS void LANGUAGE sql SECURITY DEFINER AS $$
    INSERT INTO account_month_to_date AS m (account_id, period_start, plan_code, pricing_version, currency,
                                             invoice_so_far, projected_total, computed_at, cost_so_far,
                                             unpriced_items)
    VALUES (p_account_id, p_period_start, p_plan_code, p_pricing_version, p_currency, p_invoice_so_far,
            p_projected_total, p_computed_at, p_cost_so_far, p_unpriced_items)
    ON CONFLICT (account_id, period_start) DO UPDATE SET
        plan_code = excluded.plan_code, pricing_version = excluded.pricing_version, currency = excluded.currency,
        invoice_so_far = excluded.invoice_so_far, projected_total = excluded.projected_total,
        computed_at = excluded.computed_at, cost_so_far = excluded.cost_so_far,
        unpriced_items = excluded.unpriced_items
$$
"""


def _secure(function: str) -> None:
    op.execute(f"""
        DO $$
        BEGIN
            EXECUTE format('ALTER FUNCTION {function} SECURITY DEFINER SET search_path = %I, pg_temp', current_schema());
            IF EXISTS (SELECT FROM pg_roles WHERE rolname = '{WRITER_ROLE}') THEN
                GRANT EXECUTE ON FUNCTION {function} TO {WRITER_ROLE};
            END IF;
        END
        $$
    """)
    op.execute(f"REVOKE ALL ON FUNCTION {function} FROM PUBLIC")


def upgrade() -> None:
    op.add_column("account_month_to_date", sa.Column("cost_so_far", sa.Numeric, nullable=True))
    op.add_column("account_month_to_date", sa.Column("unpriced_items", sa.Integer, nullable=False, server_default="0"))
    op.execute(f"DROP FUNCTION {OLD}")
    op.execute(FUNCTION)
    _secure(NEW)


def downgrade() -> None:
    op.execute(f"DROP FUNCTION {NEW}")
    op.execute(_least_privilege.MONTH_TO_DATE_FUNCTION)
    _secure(OLD)
    op.drop_column("account_month_to_date", "unpriced_items")
    op.drop_column("account_month_to_date", "cost_so_far")
