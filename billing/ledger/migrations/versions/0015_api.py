"""What customers and applications call: API tokens and plan limits (``spanmeter api``, entitlements).

- ``api_tokens``: one row per token of ``spanmeter api token new``. Only the token's SHA-256 is stored (the token
  is printed once); ``account_id`` is the one account it may read, NULL for an operator token (every account).
  ``api_token_revocations``: one row per revoked token (``spanmeter api token revoke``); a token is never
  edited or deleted, so who made and who revoked each one stays on record.
- ``plan_limits``: the entitlements of a plan, per billable metric, effective-dated and append-only (a change is
  a new row from a later ``effective_from``): ``hard_limit`` (a month's usage past which the application
  refuses work; NULL: none, the plan's allowance is then only a soft limit that overage pays for),
  ``max_concurrency`` (tasks of that metric running at once per account; NULL: no cap) and ``fail_policy``
  (``open`` or ``closed``: what ``spanmeter.instrumentation.entitlements.check`` answers when it cannot reach
  the API).

All three tables refuse UPDATE, DELETE and TRUNCATE (the ``spanmeter_refuse_change`` trigger of 0003).

Revision ID: 0015_api
Revises: 0014_rollup_provider
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0015_api"
down_revision = "0014_rollup_provider"
branch_labels = None
depends_on = None

TS = postgresql.TIMESTAMP(timezone=True)
TABLES = ("api_tokens", "api_token_revocations", "plan_limits")


def upgrade() -> None:
    op.create_table(
        "api_tokens",
        sa.Column("token_id", sa.Text, primary_key=True),
        sa.Column("sha256", postgresql.BYTEA, nullable=False, unique=True),
        sa.Column("account_id", sa.Text, nullable=True),
        sa.Column("note", sa.Text, nullable=False, server_default=""),
        sa.Column("created_at", TS, nullable=False, server_default=sa.text("now()")),
        sa.Column("created_by", sa.Text, nullable=False),
        sa.CheckConstraint("octet_length(sha256) = 32", name="api_tokens_sha256_length"),
    )
    op.create_table(
        "api_token_revocations",
        sa.Column("token_id", sa.Text, sa.ForeignKey("api_tokens.token_id"), primary_key=True),
        sa.Column("revoked_at", TS, nullable=False, server_default=sa.text("now()")),
        sa.Column("revoked_by", sa.Text, nullable=False),
    )
    op.create_table(
        "plan_limits",
        sa.Column("limit_id", sa.BigInteger, sa.Identity(always=True), primary_key=True),
        sa.Column("plan_code", sa.Text, nullable=False),
        sa.Column("metric", sa.Text, nullable=False),
        sa.Column("hard_limit", sa.Numeric, nullable=True),
        sa.Column("max_concurrency", sa.Integer, nullable=True),
        sa.Column("fail_policy", sa.Text, nullable=False),
        sa.Column("effective_from", TS, nullable=False),
        sa.Column("recorded_at", TS, nullable=False, server_default=sa.text("now()")),
        sa.Column("recorded_by", sa.Text, nullable=False),
        sa.CheckConstraint("fail_policy IN ('open', 'closed')", name="plan_limits_fail_policy"),
        sa.CheckConstraint("hard_limit IS NULL OR hard_limit >= 0", name="plan_limits_hard_limit"),
        sa.CheckConstraint("max_concurrency IS NULL OR max_concurrency >= 1", name="plan_limits_concurrency"),
    )
    op.create_index("plan_limits_lookup_idx", "plan_limits", ["plan_code", "metric", "effective_from"])
    for table in TABLES:
        op.execute(
            f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON {table} "
            "FOR EACH STATEMENT EXECUTE FUNCTION spanmeter_refuse_change()"
        )
    op.execute("COMMENT ON TABLE api_tokens IS 'spanmeter api tokens: SHA-256 only (the token is printed once)'")
    op.execute("COMMENT ON TABLE plan_limits IS 'Entitlements per plan and metric: effective-dated, append-only'")


def downgrade() -> None:
    for table in reversed(TABLES):
        op.execute(f"DROP TRIGGER {table}_append_only ON {table}")
        op.drop_table(table)
