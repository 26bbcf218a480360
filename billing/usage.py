"""Usage totals per meter for one account, straight from the ledger (``spanmeter usage``).

Totals are exact sums of ``usage_events.quantity`` (numeric) over ``[start, end)`` by ``occurred_at`` (the
span end time, UTC), grouped by meter code and unit. Synthetic traffic is never in the ledger, so never here.

Corrections (``spanmeter ledger adjust``, :mod:`spanmeter.billing.adjustments`) are never edits of usage
rows, so the raw sum alone would disagree with the invoice after one. Each :class:`MeterTotal` therefore
carries both, labelled: ``quantity`` (the raw usage rows), ``adjustments`` (the corrections dated in the same
window, signed) and ``adjusted`` (their sum: what an invoice of that window bills, before its allowance).
A meter with corrections but no usage in the window is listed with ``quantity`` 0 and ``events`` 0.
A correction dated in a period whose invoice was already finalized is billed on the next open invoice (as
an adjustment line); ``usage`` dates it where it belongs, in its own window.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from sqlalchemy import Engine

from .ledger import usage_store
from .rating import BILLABLE_METRICS

__all__ = [
    "MeterTotal",
    "usage_totals",
    "with_adjustments",
]

# A correction row names its meter, not its unit: the unit is the billable metric's (meters of one metric share it)
_UNIT_OF_METER = {meter: metric.unit for metric in BILLABLE_METRICS.values() for meter in metric.meters}


@dataclass(frozen=True)
class MeterTotal:
    """One meter's usage in a window: the raw rows (``quantity``, ``events``), the corrections dated in the
    window (``adjustments``, signed, ``adjustment_count`` of them) and ``adjusted``, what gets billed."""

    meter_code: str
    unit: str
    quantity: Decimal
    events: int
    adjustments: Decimal = Decimal(0)
    adjustment_count: int = 0

    @property
    def adjusted(self) -> Decimal:
        return self.quantity + self.adjustments


def with_adjustments(raw: list[MeterTotal], adjustments: dict[str, tuple[Decimal, int]]) -> list[MeterTotal]:
    """``raw`` totals with each meter's corrections beside them (meters with corrections only included),
    ordered by meter code. Pure: the two reads come from
    :func:`spanmeter.billing.ledger.usage_store.read_window`."""
    by_meter = {t.meter_code: t for t in raw}
    for meter, (quantity, count) in adjustments.items():
        held = by_meter.get(meter)
        if held is None:
            held = MeterTotal(meter, _UNIT_OF_METER.get(meter, ""), Decimal(0), 0)
        by_meter[meter] = MeterTotal(held.meter_code, held.unit, held.quantity, held.events, quantity, count)
    return [by_meter[meter] for meter in sorted(by_meter)]


def usage_totals(engine: Engine, account_id: str, start: datetime, end: datetime) -> list[MeterTotal]:
    """Per meter: raw usage and the corrections dated in ``[start, end)``, read in one snapshot."""
    raw, corrections = usage_store.read_window(engine, account_id, start, end)
    return with_adjustments([MeterTotal(*total) for total in raw], corrections)
