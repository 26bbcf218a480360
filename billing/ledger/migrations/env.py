"""Alembic environment: always handed an open connection by spanmeter.billing.ledger.migrate."""

from alembic import context

from spanmeter.billing.ledger.models import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata, transaction_per_migration=True)
with context.begin_transaction():
    context.run_migrations()
