"""Raw usage and corrections per meter, straight from the ledger: the queries behind ``spanmeter usage``
(:mod:`spanmeter.billing.usage` holds the view; this module the reads).

SQLAlchemy Core over the ORM tables of :mod:`.models`; every read is bounded by ``occurred_at``, so PostgreSQL
reads only the monthly partitions of ``usage_events`` that overlap the window.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from sqlalchemy import Engine, Select, func, select, text

from .models import UsageAdjustment, UsageEventRecord

__all__ = ["adjustments_statement", "archived_before", "read_window", "usage_statement"]

# meter_code, unit, quantity, events
RawTotal = tuple[str, str, Decimal, int]


def usage_statement(account_id: str, start: datetime, end: datetime) -> Select:
    """Raw usage per meter and unit of ``account_id`` in ``[start, end)``: sum and count of rows."""
    return (
        select(UsageEventRecord.meter_code, UsageEventRecord.unit, func.sum(UsageEventRecord.quantity), func.count())
        .where(UsageEventRecord.account_id == account_id)
        .where(UsageEventRecord.occurred_at >= start, UsageEventRecord.occurred_at < end)
        .group_by(UsageEventRecord.meter_code, UsageEventRecord.unit)
        .order_by(UsageEventRecord.meter_code)
    )


def adjustments_statement(account_id: str, start: datetime, end: datetime) -> Select:
    """Corrections per meter dated in ``[start, end)``: their signed sum and count."""
    return (
        select(UsageAdjustment.meter_code, func.sum(UsageAdjustment.quantity), func.count())
        .where(UsageAdjustment.account_id == account_id)
        .where(UsageAdjustment.occurred_at >= start, UsageAdjustment.occurred_at < end)
        .group_by(UsageAdjustment.meter_code)
    )


def read_window(
    engine: Engine, account_id: str, start: datetime, end: datetime
) -> tuple[list[RawTotal], dict[str, tuple[Decimal, int]]]:
    """(raw totals per meter, meter -> (corrections' signed sum, count)) in ``[start, end)``, one snapshot."""
    with engine.connect() as connection:
        connection = connection.execution_options(isolation_level="REPEATABLE READ")
        raw = [
            (code, unit, Decimal(total), int(count))
            for code, unit, total, count in connection.execute(usage_statement(account_id, start, end))
        ]
        corrections = {
            code: (Decimal(total), int(count))
            for code, total, count in connection.execute(adjustments_statement(account_id, start, end))
        }
    return raw, corrections


def archived_before(engine: Engine) -> datetime | None:
    """The end of the newest archived month (``spanmeter db archive``): raw rows before it are in the archive
    files, not in ``usage_events``; None when nothing is archived."""
    with engine.connect() as connection:
        return connection.execute(text("SELECT archived_to FROM usage_event_coverage")).scalar()
