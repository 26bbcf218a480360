"""Exports for a period: usage, invoice lines, and a FOCUS cost export (FinOps Open Cost and Usage Spec).

    spanmeter export usage --period 2026-11 [--account ID] [--format csv|json]
    spanmeter export invoices --period 2026-11
    spanmeter export focus --period 2026-11 --account acme

- ``usage``: one row per account and meter, from the rollups (quantity, events, meter versions), with the
  corrections dated in the period beside them (``adjustments``, signed; ``adjusted`` = quantity +
  adjustments, what the period's invoice bills; a meter with corrections only has quantity 0).
- ``invoices``: one row per invoice line (finalized invoices as stored, drafts as computed now, marked).
- ``focus``: one row per invoice line in FOCUS 1.0 columns (every column the FinOps Foundation's
  focus-validator 1.0.0 requires for 1.0, checked by the tests), so a FinOps tool can load spanmeter's
  charges next to cloud bills: ``BilledCost`` is the line amount (= ``EffectiveCost``, ``ContractedCost``,
  ``ListCost``: no negotiated discounts); ``ConsumedQuantity`` what was consumed (per meter the lines add
  up to the invoice's usage), ``PricingQuantity`` what was priced; provider, publisher and invoice issuer
  are ``--provider``, ``--publisher``, ``--invoice-issuer`` (default ``spanmeter``); ``ChargeCategory`` is ``Usage`` for usage
  lines, ``Purchase`` for fees and commitments, ``Adjustment`` for late usage and transition lines,
  ``Credit`` for credits; ``ChargeClass`` is ``Correction`` for lines settling an earlier period. Columns
  spanmeter adds start with ``x_`` as FOCUS asks.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import psycopg

from . import adjustments as corrections
from . import invoices, subscriptions
from .ledger import rollup_store
from .periods import Period
from .rating import BILLABLE_METRICS
from .rollups import rollup_totals

__all__ = ["FOCUS_VERSION", "FocusParties", "export", "focus_rows", "to_csv"]

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


@dataclass(frozen=True)
class FocusParties:
    """Who the FOCUS rows name: ``provider`` (who provides the service), ``publisher`` (who publishes it) and
    ``invoice_issuer`` (who invoices the customer); all default to ``provider``. Configurable with
    ``spanmeter export focus --provider … --publisher … --invoice-issuer …``."""

    provider: str = "spanmeter"
    publisher: str | None = None
    invoice_issuer: str | None = None


# FOCUS 1.0, as the pinned focus-validator 1.0.0 checks it (tests/test_billing.py runs it): the columns it
# requires, with the 1.0-preview names it still checks (Provider, Publisher, InvoiceIssuer, ChargeType,
# ResourceID) beside the 1.0 names (ProviderName, PublisherName, InvoiceIssuerName, ChargeCategory,
# ResourceId), so both a 1.0 reader and the validator find theirs. Decimal columns always carry a
# fractional digit ("1.0", not "1"), so a CSV reader infers a decimal column, not an integer one.
FOCUS_VERSION = "1.0"
_FREQUENCY = {
    "usage": "Usage-Based",
    "fee": "Recurring",
    "minimum": "Recurring",
    "commitment": "Recurring",
    "credit": "One-Time",
    "adjustment": "One-Time",
    "transition": "One-Time",
}


def _decimal(text: str) -> str:
    """A decimal as FOCUS text with at least one fractional digit ("" stays a null)."""
    return text if not text or "." in text or "E" in text.upper() else f"{text}.0"


def focus_rows(
    document: dict[str, Any], period: Period, parties: FocusParties = FocusParties()
) -> list[dict[str, str]]:
    """FOCUS rows for one invoice document (pure). An empty string is a null.

    ``ConsumedQuantity`` is what was consumed, not what was billed: per meter, its usage lines add up to the
    invoice's usage of that meter (the part within the allowance goes on the meter's first line);
    ``PricingQuantity`` is what the line priced (overage units, packages, 1 for a flat fee)."""
    publisher = parties.publisher or parties.provider
    issuer = parties.invoice_issuer or parties.provider
    usage = {metric: Decimal(q) for metric, q in document.get("usage", {}).items()}
    priced_overage: dict[str, Decimal] = {}
    for line in document["lines"]:
        if line["kind"] == "usage" and line["meter_code"]:
            priced_overage[line["meter_code"]] = priced_overage.get(line["meter_code"], Decimal(0)) + Decimal(
                line.get("overage_quantity") or 0
            )
    first_seen: set[str] = set()
    rows = []
    for i, line in enumerate(document["lines"], start=1):
        metric_code = line["meter_code"] or ""
        metric = BILLABLE_METRICS.get(metric_code)
        reference = line.get("reference_period")
        charge_period = Period.parse(reference) if reference else period
        consumed = ""
        if line["kind"] == "usage" and metric_code:
            quantity = Decimal(line.get("overage_quantity") or 0)
            if metric_code not in first_seen:  # the consumption within the allowance, once per meter
                first_seen.add(metric_code)
                quantity += max(usage.get(metric_code, Decimal(0)) - priced_overage[metric_code], Decimal(0))
            consumed = format(quantity, "f")
        sku = f"{document['pricing_version']}:{metric_code or line['kind']}"
        rows.append(
            {
                "BillingAccountId": document["account_id"],
                "BillingAccountName": document["account_id"],
                "BillingPeriodStart": period.start.isoformat(),
                "BillingPeriodEnd": period.end.isoformat(),
                "ChargePeriodStart": charge_period.start.isoformat(),
                "ChargePeriodEnd": charge_period.end.isoformat(),
                "ChargeCategory": _CATEGORY[line["kind"]],
                "ChargeClass": "Correction" if reference else "",
                "ChargeFrequency": _FREQUENCY[line["kind"]],
                "ChargeDescription": line["description"],
                "ChargeType": _CATEGORY[line["kind"]],
                "BilledCost": _decimal(line["amount"]),
                "EffectiveCost": _decimal(line["amount"]),
                "ContractedCost": _decimal(line["amount"]),
                "ListCost": _decimal(line["amount"]),  # no negotiated discounts: list = contracted = billed
                "BillingCurrency": document["currency"],
                "ConsumedQuantity": _decimal(consumed),
                "ConsumedUnit": metric.unit if metric and consumed else "",
                "PricingQuantity": _decimal(line["quantity"]),
                "PricingUnit": metric.unit if metric else "",
                "PricingCategory": "Standard",
                "ContractedUnitPrice": _decimal(line["unit_price"]),
                "ListUnitPrice": _decimal(line["unit_price"]),
                "SkuId": sku,
                "SkuPriceId": f"{sku}:{line['unit_price']}",
                "ServiceName": parties.provider,
                "ServiceCategory": "Compute",
                "ProviderName": parties.provider,
                "PublisherName": publisher,
                "InvoiceIssuerName": issuer,
                "Provider": parties.provider,
                "Publisher": publisher,
                "InvoiceIssuer": issuer,
                "InvoiceId": document["invoice_number"],
                "AvailabilityZone": "",
                "RegionId": "",
                "RegionName": "",
                "ResourceId": "",
                "ResourceID": "",
                "ResourceName": "",
                "ResourceType": "",
                "SubAccountId": "",
                "SubAccountName": "",
                "CommitmentDiscountCategory": "",
                "CommitmentDiscountId": "",
                "CommitmentDiscountName": "",
                "CommitmentDiscountStatus": "",
                "CommitmentDiscountType": "",
                "Tags": "",
                "x_FocusVersion": FOCUS_VERSION,
                "x_InvoiceStatus": document["status"],
                "x_PricingVersion": document["pricing_version"],
                "x_LineNumber": str(i),
            }
        )
    return rows


def export(
    conn: psycopg.Connection,
    what: str,
    period: Period,
    account: str | None = None,
    parties: FocusParties = FocusParties(),
) -> list[dict[str, Any]]:
    if what == "usage":
        rows = []
        accounts = [account] if account else rollup_store.accounts_with_usage(conn, period.start, period.end)
        for a in accounts:
            totals = rollup_totals(conn, a, period.start, period.end)
            adjusted: dict[str, Decimal] = {}
            for correction in corrections.for_account(conn, a, period.start, period.end):
                adjusted[correction.meter_code] = adjusted.get(correction.meter_code, Decimal(0)) + correction.quantity
            for meter in sorted(set(totals) | set(adjusted)):
                total = totals.get(meter)
                quantity = total.quantity if total is not None else Decimal(0)
                change = adjusted.get(meter, Decimal(0))
                rows.append(
                    {
                        "account_id": a,
                        "period": str(period),
                        "meter_code": meter,
                        "quantity": format(quantity, "f"),
                        "events": total.events if total is not None else 0,
                        "meter_versions": ",".join(map(str, total.meter_versions)) if total is not None else "",
                        "adjustments": format(change, "f"),
                        "adjusted": format(quantity + change, "f"),
                    }
                )
        return rows
    documents = _invoice_documents(conn, period, account)
    if what == "focus":
        return [row for doc in documents for row in focus_rows(doc, period, parties)]
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
