"""Shadow invoices: the same period under another pricing version, the difference and why.

``spanmeter invoice --shadow VERSION`` and ``spanmeter invoice shadow-report`` show what a migration to a new
pricing version would charge before anyone is moved. With a transition policy the shadow invoice gets its
transition line (a cap relative to the primary total, or a one-off credit).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import psycopg

from ..periods import Period
from ..rating import TransitionPolicy, explain_shadow, invoice_total, transition_lines
from .document import Invoice
from .draft import build_invoice

__all__ = ["ShadowComparison", "shadow_comparison"]


@dataclass(frozen=True)
class ShadowComparison:
    primary: Invoice
    shadow: Invoice
    difference: Decimal  # shadow total - primary total
    explanation: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "account_id": self.primary.account_id,
            "period": self.primary.period,
            "currency": self.primary.currency,
            "primary": {"pricing_version": self.primary.pricing_version, "total": self.primary.to_dict()["total"]},
            "shadow": {
                "pricing_version": self.shadow.pricing_version,
                "total": self.shadow.to_dict()["total"],
                "lines": [line.to_dict() for line in self.shadow.lines],
            },
            "difference": format(self.difference, "f"),
            "explanation": self.explanation,
        }


def shadow_comparison(
    conn: psycopg.Connection,
    account_id: str,
    period: Period,
    shadow_version: str,
    *,
    pricing: str | None = None,
    transition: TransitionPolicy | None = None,
) -> ShadowComparison:
    """The invoice under its pricing and under ``shadow_version``, the difference and why. With a
    ``transition`` policy the shadow invoice gets its transition line (a cap relative to the primary
    total, or a one-off credit), so the comparison shows what a migrated customer would really pay."""
    primary = build_invoice(conn, account_id, period, pricing_override=pricing)
    shadow = build_invoice(conn, account_id, period, pricing_override=shadow_version)
    if transition is not None:
        extra = transition_lines(primary.total, list(shadow.lines), transition, str(period), shadow.currency)
        if extra:
            shadow_lines = [*shadow.lines, *extra]
            shadow = dataclasses.replace(shadow, lines=shadow_lines, total=invoice_total(shadow_lines))
    explanation = explain_shadow(
        str(period), primary.usage, primary.pricing_version, list(primary.lines), shadow_version, list(shadow.lines)
    )
    return ShadowComparison(primary, shadow, shadow.total - primary.total, explanation)
