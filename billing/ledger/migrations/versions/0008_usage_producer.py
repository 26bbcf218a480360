"""Usage rows record their producer.

``usage_events.producer`` (nullable): the name of the authenticated producer (``SPANMETER_AUTH_FILE``) whose
Export call carried the row; NULL without producer authentication, for backfills and replays, and for rows
written before this migration. The ledger writer fills it per COPY (the staging column's default reads the
transaction-local setting ``spanmeter.producer``), so the rows' COPY text, native or Python, is unchanged.
A key arriving again from another producer is a ``key_conflict`` (when the stored row names a producer).
Adding a nullable column without a default rewrites nothing.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008_usage_producer"
down_revision = "0007_dead_letter_resolutions"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("usage_events", sa.Column("producer", sa.Text, nullable=True))
    op.execute(
        "COMMENT ON COLUMN usage_events.producer IS 'The authenticated producer whose Export carried the row; "
        "NULL without producer authentication, for backfills, replays and rows older than the column'"
    )


def downgrade() -> None:
    op.drop_column("usage_events", "producer")
