"""Dead-letter resolutions: an operator's recorded decision on a rejected span that is not replayed.

``dead_letter_resolutions`` (append-only) holds one row per rejected span someone decided on with
``spanmeter dead-letter resolve``: who, when, why, the decision (``keep_ledger`` or ``bill_span`` for a
``key_conflict``; ``dismiss`` for any reason) and the idempotency keys of the usage corrections it recorded
in ``usage_adjustments`` (a ``bill_span`` moves the usage from the account the ledger holds to the one the
span says, as two corrections; the ledger row itself is never edited). A resolved span is never replayed.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0007_dead_letter_resolutions"
down_revision = "0006_least_privilege"
branch_labels = None
depends_on = None

TS = postgresql.TIMESTAMP(timezone=True)
WRITER_ROLE = "spanmeter_writer"


def upgrade() -> None:
    op.create_table(
        "dead_letter_resolutions",
        sa.Column(
            "rejection_key",
            postgresql.UUID(as_uuid=True),
            sa.ForeignKey("rejected_spans.rejection_key"),
            primary_key=True,
        ),
        sa.Column("resolved_at", TS, nullable=False, server_default=sa.func.now()),
        sa.Column("resolved_by", sa.Text, nullable=False),
        sa.Column("decision", sa.Text, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("adjustment_keys", postgresql.ARRAY(sa.Text), nullable=False, server_default="{}"),
        sa.CheckConstraint("decision IN ('keep_ledger', 'bill_span', 'dismiss')", name="decision_known"),
        comment="One row per rejected span an operator decided on (spanmeter dead-letter resolve); never replayed",
    )
    op.execute(
        "CREATE TRIGGER dead_letter_resolutions_append_only BEFORE UPDATE OR DELETE OR TRUNCATE "
        "ON dead_letter_resolutions FOR EACH STATEMENT EXECUTE FUNCTION spanmeter_refuse_change()"
    )
    op.execute(f"""
        DO $$
        BEGIN
            IF EXISTS (SELECT FROM pg_roles WHERE rolname = '{WRITER_ROLE}') THEN
                GRANT SELECT ON dead_letter_resolutions TO {WRITER_ROLE};
            END IF;
        END
        $$
    """)


def downgrade() -> None:
    op.drop_table("dead_letter_resolutions")
