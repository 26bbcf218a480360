"""The invoice document: what a draft or a finalized invoice holds, and how it is stored and read back (pure).

A finalized invoice is stored as :meth:`Invoice.to_dict` (JSON, append-only) and read back with
:func:`from_document`, never recomputed. Quantities print without trailing zeros (:func:`plain`); amounts with
their currency's decimals (ISO 4217 minor units, :func:`spanmeter.billing.rating.money.currency_decimals`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from ..rating import Line
from ..rating.money import currency_decimals

__all__ = ["Invoice", "InvoiceError", "from_document", "plain"]


class InvoiceError(ValueError):
    pass


@dataclass(frozen=True)
class Invoice:
    invoice_number: str
    status: str  # "draft" | "finalized" | "preview" (a finalized period re-rated under another version)
    account_id: str
    period: str
    currency: str
    pricing_version: str
    meter_versions: Mapping[str, list[int]]
    lines: Sequence[Line]
    total: Decimal
    subscriptions: Sequence[Mapping[str, str]] = ()
    usage: Mapping[str, Decimal] = field(default_factory=dict)  # billable metric -> quantity, whole period
    plan_mismatches: Sequence[Mapping[str, str]] = ()
    unrated_usage: Mapping[str, Decimal] = field(default_factory=dict)
    late_usage: Sequence[Mapping[str, str]] = ()
    # usage a price book does not price (model, meter, quantity): never billed at zero; blocks finalizing
    unpriced_models: Sequence[Mapping[str, str]] = ()
    price_books: Sequence[str] = ()  # the book versions that priced lines ("docpipe@2026-12")

    def to_dict(self) -> dict[str, Any]:
        return {
            "invoice_number": self.invoice_number,
            "status": self.status,
            "account_id": self.account_id,
            "period": self.period,
            "currency": self.currency,
            "pricing_version": self.pricing_version,
            "meter_versions": dict(self.meter_versions),
            "subscriptions": [dict(s) for s in self.subscriptions],
            "usage": {metric: plain(q) for metric, q in self.usage.items()},
            "lines": [line.to_dict() for line in self.lines],
            "total": f"{self.total:.{currency_decimals(self.currency)}f}",
            "plan_mismatches": [dict(m) for m in self.plan_mismatches],
            "unrated_usage": {metric: plain(q) for metric, q in self.unrated_usage.items()},
            "late_usage": [dict(item) for item in self.late_usage],
            # only when a price book took part, so invoices under books-free versions keep their exact form
            **({"price_books": list(self.price_books)} if self.price_books else {}),
            **({"unpriced_models": [dict(u) for u in self.unpriced_models]} if self.unpriced_models else {}),
        }


def plain(value: Decimal) -> str:
    """A quantity as text, without trailing zeros: ``Decimal("120.500")`` -> ``"120.5"``."""
    text = format(value, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def from_document(document: Mapping[str, Any]) -> Invoice:
    """A stored (finalized) invoice document back as an :class:`Invoice`."""
    lines = [
        Line(
            kind=d["kind"],
            meter_code=d["meter_code"],
            description=d["description"],
            quantity=Decimal(d["quantity"]),
            included_quantity=Decimal(d["included_quantity"]),
            overage_quantity=Decimal(d["overage_quantity"]),
            unit_price=Decimal(d["unit_price"]),
            amount=Decimal(d["amount"]),
            currency=d["currency"],
            reference_period=d.get("reference_period"),
            dimension=d.get("dimension"),
            usage_kind=d.get("usage_kind"),
            price_book=d.get("price_book"),
            provider=d.get("provider"),
        )
        for d in document["lines"]
    ]
    return Invoice(
        invoice_number=document["invoice_number"],
        status="finalized",
        account_id=document["account_id"],
        period=document["period"],
        currency=document["currency"],
        pricing_version=document["pricing_version"],
        meter_versions=document["meter_versions"],
        lines=lines,
        total=Decimal(document["total"]),
        subscriptions=document.get("subscriptions", []),
        usage={k: Decimal(v) for k, v in document.get("usage", {}).items()},
        plan_mismatches=document.get("plan_mismatches", []),
        unrated_usage={k: Decimal(v) for k, v in document.get("unrated_usage", {}).items()},
        late_usage=document.get("late_usage", []),
        unpriced_models=document.get("unpriced_models", []),
        price_books=document.get("price_books", []),
    )
