"""Usage totals per meter for one account, straight from the ledger (``spanmeter usage``).

Totals are exact sums of ``usage_events.quantity`` (numeric) over ``[start, end)`` by ``occurred_at`` (the
span end time, UTC), grouped by meter code and unit. Synthetic traffic is never in the ledger, so never here.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from sqlalchemy import Engine, Select, func, select, text

from .ledger.models import UsageEvent

__all__ = ["MeterTotal", "archived_before", "usage_statement", "usage_totals"]


@dataclass(frozen=True)
class MeterTotal:
    meter_code: str
    unit: str
    quantity: Decimal
    events: int


def usage_statement(account_id: str, start: datetime, end: datetime) -> Select:
    """The query behind :func:`usage_totals`: bounded by ``occurred_at``, so PostgreSQL reads only the monthly
    partitions of ``usage_events`` that overlap ``[start, end)``."""
    return (
        select(UsageEvent.meter_code, UsageEvent.unit, func.sum(UsageEvent.quantity), func.count())
        .where(UsageEvent.account_id == account_id)
        .where(UsageEvent.occurred_at >= start, UsageEvent.occurred_at < end)
        .group_by(UsageEvent.meter_code, UsageEvent.unit)
        .order_by(UsageEvent.meter_code)
    )


def archived_before(engine: Engine) -> datetime | None:
    """The end of the newest archived month (``spanmeter db archive``): raw rows before it are in the archive
    files, not in ``usage_events``; None when nothing is archived."""
    with engine.connect() as connection:
        return connection.execute(text("SELECT archived_to FROM usage_event_coverage")).scalar()


def usage_totals(engine: Engine, account_id: str, start: datetime, end: datetime) -> list[MeterTotal]:
    statement = usage_statement(account_id, start, end)
    with engine.connect() as connection:
        return [
            MeterTotal(code, unit, Decimal(total), count) for code, unit, total, count in connection.execute(statement)
        ]
