"""Late usage: usage that reached a period after its invoice was finalized becomes adjustment lines on the
next open invoice, one per metric, referencing the original period. Nothing is dropped, nothing billed twice.

For every earlier period of the account whose invoice is finalized and whose next open period is P, the
period is re-rated with what the ledger holds now (under the pricing version it was finalized with); any
difference from what was billed (the finalized invoice plus adjustment lines already finalized on later
invoices) becomes a line on P. :func:`periods_late_onto` and :func:`late_adjustments` compute without a
database; :func:`late_usage_lines` reads the finalized invoices and the earlier periods' usage.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any, NamedTuple

import psycopg

from ..ledger import invoice_store
from ..periods import Period
from ..prices import BUILTIN, Catalog, load_catalog
from ..rating import BILLABLE_METRICS, Line
from .document import plain
from .pricing import metric_amounts, rate_segments
from .usage import SegmentUsage, period_usage

__all__ = [
    "LateUsage",
    "billed_per_metric",
    "finalized_invoice",
    "finalized_periods",
    "late_adjustments",
    "late_unpriced",
    "late_usage_lines",
    "periods_late_onto",
]

Finalized = Sequence[tuple[Period, Mapping[str, Any]]]


def finalized_invoice(conn: psycopg.Connection, account_id: str, period: Period) -> dict[str, Any] | None:
    """The stored document of the account's finalized invoice for ``period``, or None."""
    return invoice_store.stored_document(conn, account_id, period.start)


def finalized_periods(conn: psycopg.Connection, account_id: str) -> list[tuple[Period, dict[str, Any]]]:
    """Every finalized invoice document of the account with its period, oldest first."""
    return [
        (Period.containing(start), document) for start, document in invoice_store.stored_documents(conn, account_id)
    ]


def billed_per_metric(document: Mapping[str, Any]) -> tuple[dict[str, Decimal], dict[str, Decimal]]:
    """(usage quantity, usage amount) per metric on a stored invoice document."""
    quantities = {metric: Decimal(q) for metric, q in document.get("usage", {}).items()}
    amounts: dict[str, Decimal] = {}
    for line in document["lines"]:
        if line["kind"] == "usage" and line["meter_code"]:
            amounts[line["meter_code"]] = amounts.get(line["meter_code"], Decimal(0)) + Decimal(line["amount"])
    return quantities, amounts


def periods_late_onto(finalized: Finalized, period: Period) -> list[tuple[Period, Mapping[str, Any]]]:
    """The finalized earlier periods whose late usage belongs on ``period``: those whose next period without
    a finalized invoice is ``period`` (pure)."""
    closed = {p for p, _ in finalized}
    found = []
    for earlier, document in finalized:
        if earlier >= period:
            continue
        next_open = earlier.next()
        while next_open in closed:
            next_open = next_open.next()
        if next_open == period:
            found.append((earlier, document))
    return found


def late_adjustments(
    earlier: Period,
    document: Mapping[str, Any],
    finalized: Finalized,
    parts: Sequence[SegmentUsage],
    currency: str,
    catalog: Catalog = BUILTIN,
) -> tuple[list[Line], list[dict[str, str]]]:
    """Adjustment lines (and their details) for ``earlier``, finalized as ``document``, whose usage is now
    ``parts`` (pure)."""
    quantities, amounts = billed_per_metric(document)
    for _, later_doc in finalized:  # adjustments for `earlier` already finalized on later invoices
        for item in later_doc.get("late_usage", []):
            if item["reference_period"] == str(earlier):
                metric = item["meter_code"]
                quantities[metric] = quantities.get(metric, Decimal(0)) + Decimal(item["quantity"])
                amounts[metric] = amounts.get(metric, Decimal(0)) + Decimal(item["amount"])
    version = document["pricing_version"]
    now_lines = rate_segments(parts, earlier, version if "+" not in version else None, catalog).lines
    now_amounts = metric_amounts(now_lines)
    now_quantities: dict[str, Decimal] = {}
    for part in parts:
        for metric, q in part.usage.items():
            now_quantities[metric] = now_quantities.get(metric, Decimal(0)) + q
    lines: list[Line] = []
    details: list[dict[str, str]] = []
    for metric in BILLABLE_METRICS:
        late_quantity = now_quantities.get(metric, Decimal(0)) - quantities.get(metric, Decimal(0))
        late_amount = now_amounts.get(metric, Decimal(0)) - amounts.get(metric, Decimal(0))
        if not late_quantity and not late_amount:
            continue
        unit = BILLABLE_METRICS[metric].unit.strip("{}")
        description = (
            f"Late usage for {earlier}: {plain(late_quantity)} {unit} of {metric} arrived after "
            f"{document['invoice_number']} was finalized (re-rated under {version})"
        )
        lines.append(
            Line(
                kind="adjustment",
                meter_code=metric,
                description=description,
                quantity=Decimal(1),
                included_quantity=Decimal(0),
                overage_quantity=Decimal(0),
                unit_price=late_amount,
                amount=late_amount,
                currency=currency,
                reference_period=str(earlier),
            )
        )
        details.append(
            {
                "reference_period": str(earlier),
                "reference_invoice": document["invoice_number"],
                "meter_code": metric,
                "quantity": plain(late_quantity),
                "amount": format(late_amount, "f"),
            }
        )
    return lines, details


def late_unpriced(
    earlier: Period, document: Mapping[str, Any], parts: Sequence[SegmentUsage], catalog: Catalog = BUILTIN
) -> list[dict[str, str]]:
    """Usage of ``earlier`` that no price book version prices, as the re-rating finds it (pure): it must block
    the invoice that would carry it at zero, like unpriced usage of the period itself."""
    version = document["pricing_version"]
    unpriced = rate_segments(parts, earlier, version if "+" not in version else None, catalog).unpriced
    return [{**item, "reference_period": str(earlier)} for item in unpriced]


class LateUsage(NamedTuple):
    lines: list[Line]
    details: list[dict[str, str]]
    unpriced: list[dict[str, str]]  # late usage no book version prices (tagged with its period)


def late_usage_lines(
    conn: psycopg.Connection, account_id: str, period: Period, currency: str, catalog: Catalog | None = None
) -> LateUsage:
    """Adjustment lines on ``period`` for usage that reached already-finalized earlier periods."""
    catalog = catalog if catalog is not None else load_catalog(conn)
    finalized = finalized_periods(conn, account_id)
    lines: list[Line] = []
    details: list[dict[str, str]] = []
    unpriced: list[dict[str, str]] = []
    for earlier, document in periods_late_onto(finalized, period):
        version = document["pricing_version"]
        parts = period_usage(conn, account_id, earlier, catalog, version if "+" not in version else None)
        more_lines, more_details = late_adjustments(earlier, document, finalized, parts, currency, catalog)
        lines += more_lines
        details += more_details
        unpriced += late_unpriced(earlier, document, parts, catalog)
    return LateUsage(lines, details, unpriced)
