"""Rejected spans record their producer; replays record how their authorization was settled.

``rejected_spans.producer`` (nullable): the authenticated producer (``SPANMETER_AUTH_FILE``) whose Export
carried the span; NULL without producer authentication, for backfills, and for spans rejected before this
migration. ``spanmeter dead-letter replay`` re-checks a span against that producer's entry in the producers
file as it is at replay time (services, meters, accounts; a patched ``account_id`` included), so a replay
can never bill what the producer could not have billed live.

``dead_letter_replays.authorization_check``: how the replay's producer check was settled:

- ``producer_checked``: the span's producer, as the producers file names it now, may bill it;
- ``no_producer``: the span arrived without an authenticated producer (no producer authentication then):
  nothing to check;
- ``override``: an operator billed it without the check (``--override-authorization``, with ``--by`` and
  ``--why``, which the row records). Replays before this migration read ``not_recorded``.

Adding a nullable column, and a column with a constant default, rewrites nothing.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011_replay_authorization"
down_revision = "0010_partitioned_ledger"
branch_labels = None
depends_on = None

AUTHORIZATIONS = ("producer_checked", "no_producer", "override", "not_recorded")


def upgrade() -> None:
    op.add_column("rejected_spans", sa.Column("producer", sa.Text, nullable=True))
    op.execute(
        "COMMENT ON COLUMN rejected_spans.producer IS 'The authenticated producer whose Export carried the span; "
        "NULL without producer authentication, for backfills and spans older than the column'"
    )
    op.add_column(
        "dead_letter_replays",
        sa.Column("authorization_check", sa.Text, nullable=False, server_default="not_recorded"),
    )
    values = ", ".join(f"'{v}'" for v in AUTHORIZATIONS)
    op.execute(
        f"ALTER TABLE dead_letter_replays ADD CONSTRAINT dead_letter_replays_authorization_check "
        f"CHECK (authorization_check IN ({values}))"
    )
    op.execute(
        "COMMENT ON COLUMN dead_letter_replays.authorization_check IS 'producer_checked: the producer, as the producers "
        "file named it at replay time, may bill the span; no_producer: the span came without one; override: "
        "billed without the check by replayed_by, for reason; not_recorded: replayed before the check existed'"
    )


def downgrade() -> None:
    op.drop_column("dead_letter_replays", "authorization_check")
    op.drop_column("rejected_spans", "producer")
