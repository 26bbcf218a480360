"""Exports for a period: usage, invoice lines, and a FOCUS cost export (FinOps Open Cost and Usage Spec).

    spanmeter export usage --period 2026-11 [--account ID] [--format csv|json]
    spanmeter export invoices --period 2026-11
    spanmeter export focus --period 2026-11 --account acme

- ``usage``: one row per account and meter, from the rollups (quantity, events, meter versions).
- ``invoices``: one row per invoice line (finalized invoices as stored, drafts as computed now, marked).
- ``focus``: one row per invoice line in FOCUS 1.0 column names, so a FinOps tool can load spanmeter's
  charges next to cloud bills: ``BilledCost`` is the line amount; ``ChargeCategory`` is ``Usage`` for usage
  lines, ``Purchase`` for fees and commitments, ``Adjustment`` for late usage and transition lines,
  ``Credit`` for credits; ``ChargeClass`` is ``Correction`` for lines settling an earlier period. Columns
  spanmeter adds start with ``x_`` as FOCUS asks.
"""

from __future__ import annotations

import csv
import io
from typing import Any

import psycopg

from . import invoices, subscriptions
from .periods import Period
from .rating import BILLABLE_METRICS
from .rollups import rollup_totals

__all__ = ["export", "focus_rows", "to_csv"]

_CATEGORY = {
    "usage": "Usage",
    "fee": "Purchase",
    "minimum": "Purchase",
    "commitment": "Purchase",
    "credit": "Credit",
    "adjustment": "Adjustment",
    "transition": "Adjustment",
}


def _accounts(conn: psycopg.Connection, period: Period, account: str | None) -> list[str]:
    if account:
        return [account]
    return sorted(
        {
            s.account_id
            for s in subscriptions.history(conn)
            if subscriptions.resolve_segments([s], period.start, period.end)
        }
    )


def _invoice_documents(conn: psycopg.Connection, period: Period, account: str | None) -> list[dict[str, Any]]:
    return [invoices.build_invoice(conn, a, period).to_dict() for a in _accounts(conn, period, account)]


def focus_rows(document: dict[str, Any], period: Period) -> list[dict[str, str]]:
    """FOCUS rows for one invoice document (pure)."""
    rows = []
    for i, line in enumerate(document["lines"], start=1):
        metric = BILLABLE_METRICS.get(line["meter_code"] or "")
        reference = line.get("reference_period")
        charge_period = Period.parse(reference) if reference else period
        rows.append(
            {
                "BillingAccountId": document["account_id"],
                "BillingPeriodStart": period.start.isoformat(),
                "BillingPeriodEnd": period.end.isoformat(),
                "ChargePeriodStart": charge_period.start.isoformat(),
                "ChargePeriodEnd": charge_period.end.isoformat(),
                "ChargeCategory": _CATEGORY[line["kind"]],
                "ChargeClass": "Correction" if reference else "",
                "ChargeDescription": line["description"],
                "BilledCost": line["amount"],
                "EffectiveCost": line["amount"],
                "BillingCurrency": document["currency"],
                "ConsumedQuantity": line["quantity"] if line["kind"] == "usage" else "",
                "ConsumedUnit": metric.unit if metric and line["kind"] == "usage" else "",
                "PricingQuantity": line["quantity"],
                "PricingUnit": metric.unit if metric else "",
                "ContractedUnitPrice": line["unit_price"],
                "SkuId": f"{document['pricing_version']}:{line['meter_code'] or line['kind']}",
                "ServiceName": "spanmeter",
                "ProviderName": "spanmeter",
                "PublisherName": "spanmeter",
                "InvoiceIssuerName": "spanmeter",
                "InvoiceId": document["invoice_number"],
                "x_InvoiceStatus": document["status"],
                "x_PricingVersion": document["pricing_version"],
                "x_LineNumber": str(i),
            }
        )
    return rows


def export(conn: psycopg.Connection, what: str, period: Period, account: str | None = None) -> list[dict[str, Any]]:
    if what == "usage":
        rows = []
        accounts = (
            [account]
            if account
            else [
                a
                for (a,) in conn.execute(
                    "SELECT account_id FROM usage_rollups_daily WHERE bucket_start >= %s AND bucket_start < %s "
                    "UNION SELECT account_id FROM usage_rollup_deltas WHERE bucket_start >= %s AND bucket_start < %s "
                    "ORDER BY 1",
                    (period.start, period.end, period.start, period.end),
                )
            ]
        )
        for a in accounts:
            for meter, total in sorted(rollup_totals(conn, a, period.start, period.end).items()):
                rows.append(
                    {
                        "account_id": a,
                        "period": str(period),
                        "meter_code": meter,
                        "quantity": format(total.quantity, "f"),
                        "events": total.events,
                        "meter_versions": ",".join(map(str, total.meter_versions)),
                    }
                )
        return rows
    documents = _invoice_documents(conn, period, account)
    if what == "focus":
        return [row for doc in documents for row in focus_rows(doc, period)]
    rows = []
    for doc in documents:
        for i, line in enumerate(doc["lines"], start=1):
            rows.append(
                {
                    "invoice_number": doc["invoice_number"],
                    "status": doc["status"],
                    "account_id": doc["account_id"],
                    "period": doc["period"],
                    "pricing_version": doc["pricing_version"],
                    "line_no": i,
                    **line,
                }
            )
    return rows


def to_csv(rows: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    if rows:
        writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return out.getvalue()
