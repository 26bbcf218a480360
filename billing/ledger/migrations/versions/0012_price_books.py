"""Price books and pricing versions as data: ``price_books`` and ``pricing_versions``, append-only.

- ``price_books``: one row per version of a price book (``spanmeter prices import book.yaml``): its code and
  version (the key), ``effective_from`` (a whole UTC hour), currency, the canonical document (JSON) and its
  SHA-256, who imported it and when. A version is never edited: a price change is a new version.
- ``pricing_versions``: plans as data (``spanmeter prices import plans.yaml``), one row per code, frozen the
  same way; the built-in ``v1_request`` and ``v2_compute`` stay in code and are never stored here.

Both tables refuse UPDATE, DELETE and TRUNCATE (the ``spanmeter_refuse_change`` trigger of 0003).

Revision ID: 0012_price_books
Revises: 0011_replay_authorization
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0012_price_books"
down_revision = "0011_replay_authorization"
branch_labels = None
depends_on = None

TS = postgresql.TIMESTAMP(timezone=True)
TABLES = ("price_books", "pricing_versions")


def upgrade() -> None:
    op.create_table(
        "price_books",
        sa.Column("book_code", sa.Text, nullable=False),
        sa.Column("version", sa.Text, nullable=False),
        sa.Column("effective_from", TS, nullable=False),
        sa.Column("currency", sa.Text, nullable=False),
        sa.Column("document", postgresql.JSONB, nullable=False),
        sa.Column("sha256", sa.Text, nullable=False),
        sa.Column("imported_at", TS, nullable=False, server_default=sa.text("now()")),
        sa.Column("imported_by", sa.Text, nullable=False),
        sa.Column("import_id", sa.BigInteger, sa.Identity(always=True), nullable=False, unique=True),
        sa.PrimaryKeyConstraint("book_code", "version"),
        sa.CheckConstraint("effective_from = date_trunc('hour', effective_from, 'UTC')", name="price_books_whole_hour"),
    )
    op.create_table(
        "pricing_versions",
        sa.Column("code", sa.Text, primary_key=True),
        sa.Column("price_book", sa.Text, nullable=True),
        sa.Column("document", postgresql.JSONB, nullable=False),
        sa.Column("sha256", sa.Text, nullable=False),
        sa.Column("imported_at", TS, nullable=False, server_default=sa.text("now()")),
        sa.Column("imported_by", sa.Text, nullable=False),
    )
    for table in TABLES:
        op.execute(
            f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON {table} "
            "FOR EACH STATEMENT EXECUTE FUNCTION spanmeter_refuse_change()"
        )
    op.execute(
        "COMMENT ON TABLE price_books IS 'Price book versions (spanmeter prices import): append-only; "
        "a price change is a new version from a later effective_from'"
    )
    op.execute(
        "COMMENT ON TABLE pricing_versions IS 'Pricing versions as data (plans over a price book): append-only, "
        "frozen once imported'"
    )


def downgrade() -> None:
    for table in TABLES:
        op.execute(f"DROP TRIGGER {table}_append_only ON {table}")
        op.drop_table(table)
