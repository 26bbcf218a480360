"""Dead-letter replays: who replayed which rejected span, with which patch, and what it billed.

Revision ID: 0002_dead_letter_replays
Revises: 0001_ledger
Create Date: 2026-11-21
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0002_dead_letter_replays"
down_revision = "0001_ledger"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "dead_letter_replays",
        sa.Column("rejection_key", postgresql.UUID(as_uuid=True), primary_key=True),
        sa.Column("replayed_at", postgresql.TIMESTAMP(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("replayed_by", sa.Text, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("patch", postgresql.JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.Column("usage_rows", sa.Integer, nullable=False),
        sa.Column("idempotency_keys", postgresql.ARRAY(postgresql.UUID(as_uuid=True)), nullable=False),
    )
    op.execute(
        "COMMENT ON TABLE dead_letter_replays IS "
        "'One row per rejected span that a replay billed; its usage rows carry the same rejection_key in metadata'"
    )


def downgrade() -> None:
    op.drop_table("dead_letter_replays")
