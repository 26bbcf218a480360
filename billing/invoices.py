"""Invoices: usage from the rollups, priced by the subscription in force, explained line by line.

    spanmeter invoice --account acme --period 2026-11                       # draft, table
    spanmeter invoice --account acme --period 2026-11 --format json
    spanmeter invoice --account acme --period 2026-11 --shadow v1_request   # and what v1_request would charge
    spanmeter invoice --account acme --period 2026-11 --finalize            # immutable from now on
    spanmeter invoice shadow-report --period 2026-11 --shadow v1_request    # every account

How an invoice for account A and period P (a UTC calendar month) is made:

1. **Subscriptions** (:mod:`.subscriptions`) split P into segments, each under one plan of one pricing version.
   A plan change mid-month gives two segments; each is rated with its base fee, included quantities,
   commitment and minimum prorated by its share of the month (exact seconds).
2. **Usage** per segment comes from the rollups (:mod:`.rollups`, never the raw events), plus the
   corrections (:mod:`.adjustments`) dated in the segment, summed into billable metrics.
3. **Rating** (:mod:`.rating`, pure) turns usage and plan into lines; the total is the exact sum of lines.
4. **Late usage**: for every earlier period of A whose invoice is finalized and whose next open period is
   P, the period is re-rated with what the ledger holds now; any difference from what was billed (the
   finalized invoice plus adjustment lines already finalized on later invoices) becomes an ``adjustment``
   line here, one per metric, referencing the original period. Nothing is dropped, nothing billed twice.
5. **Reported, not re-priced**: usage whose spans carried a plan code other than the subscription's
   (``plan_mismatches``), and usage in time no subscription covers (``unrated_usage``).

Periods stay open for a **drift window** after they end (``SPANMETER_INVOICE_DRIFT_WINDOW_SECONDS``,
default 172,800 s = 2 days) so that late spans land on their own invoice; ``--finalize`` is refused until
the window has passed. Finalizing stores the document and its lines append-only with a number
``INV-YYYY-MM-NNNN`` (sequential per period); from then on the invoice is read back, never recomputed.
A draft's number is ``DRAFT-YYYY-MM-<account>``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg

from . import adjustments, subscriptions
from .ledger import invoice_store
from .periods import Period
from .rating import (
    BILLABLE_METRICS,
    PRICING_VERSIONS,
    Line,
    TransitionPolicy,
    billable_quantities,
    explain_shadow,
    invoice_total,
    rate_plan,
    transition_lines,
)
from .rating.money import currency_decimals
from .rollups import rollup_totals

__all__ = [
    "DEFAULT_DRIFT_WINDOW",
    "Invoice",
    "InvoiceError",
    "build_invoice",
    "finalize_invoice",
    "finalized_invoice",
    "late_usage_lines",
    "period_usage",
    "shadow_comparison",
    "uncovered_windows",
    "window_usage",
]

DEFAULT_DRIFT_WINDOW = timedelta(days=2)
_METRIC_OF_METER = {meter: metric.code for metric in BILLABLE_METRICS.values() for meter in metric.meters}


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
            "usage": {metric: _plain(q) for metric, q in self.usage.items()},
            "lines": [line.to_dict() for line in self.lines],
            "total": f"{self.total:.{currency_decimals(self.currency)}f}",
            "plan_mismatches": [dict(m) for m in self.plan_mismatches],
            "unrated_usage": {metric: _plain(q) for metric, q in self.unrated_usage.items()},
            "late_usage": [dict(item) for item in self.late_usage],
        }


def _plain(value: Decimal) -> str:
    text = format(value, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


# ---------------------------------------------------------------------------------------------- usage


@dataclass(frozen=True)
class SegmentUsage:
    segment: subscriptions.Segment
    usage: dict[str, Decimal]  # billable metric -> quantity (ledger + corrections)
    meter_versions: dict[str, set[int]]
    plan_codes: dict[str, Decimal]  # span plan code -> quantity, all meters


def window_usage(
    conn: psycopg.Connection, account_id: str, start: datetime, end: datetime
) -> tuple[dict[str, Decimal], dict[str, set[int]], dict[str, Decimal]]:
    """(billable metric -> quantity incl. corrections, meter -> meter versions, span plan code -> quantity)
    for [start, end), from the rollups."""
    totals = rollup_totals(conn, account_id, start, end)
    meters: dict[str, Decimal] = {code: t.quantity for code, t in totals.items()}
    for correction in adjustments.for_account(conn, account_id, start, end):
        meters[correction.meter_code] = meters.get(correction.meter_code, Decimal(0)) + correction.quantity
    versions = {code: set(t.meter_versions) for code, t in totals.items()}
    plans: dict[str, Decimal] = {}
    for t in totals.values():
        for plan_code, quantity in t.by_plan_code.items():
            plans[plan_code] = plans.get(plan_code, Decimal(0)) + quantity
    known = {code: q for code, q in meters.items() if code in _METRIC_OF_METER}
    return billable_quantities(known), versions, plans


def period_usage(conn: psycopg.Connection, account_id: str, period: Period) -> list[SegmentUsage]:
    """Usage per subscription segment of ``period``."""
    result = []
    for segment in subscriptions.segments(conn, account_id, period.start, period.end):
        usage, versions, plans = window_usage(conn, account_id, segment.start, segment.end)
        result.append(SegmentUsage(segment, usage, versions, plans))
    return result


def uncovered_windows(segments: Sequence[subscriptions.Segment], period: Period) -> list[tuple[datetime, datetime]]:
    """The parts of ``period`` no subscription segment covers (pure)."""
    gaps, cursor = [], period.start
    for segment in segments:
        if segment.start > cursor:
            gaps.append((cursor, segment.start))
        cursor = max(cursor, segment.end)
    if cursor < period.end:
        gaps.append((cursor, period.end))
    return gaps


# -------------------------------------------------------------------------------------------- rating


def _label(segment: subscriptions.Segment, period: Period, plan_name: str) -> str:
    if segment.start == period.start and segment.end == period.end:
        return ""
    last = segment.end - timedelta(seconds=1)
    return f"{plan_name}, {segment.start:%b %d}–{last:%b %d}: "


def _rate_segments(
    parts: Sequence[SegmentUsage], period: Period, pricing_override: str | None
) -> tuple[list[Line], str, str]:
    lines: list[Line] = []
    versions, currencies = set(), set()
    period_seconds = Decimal((period.end - period.start).total_seconds())
    for part in parts:
        sub = part.segment.subscription
        version_code = pricing_override or sub.pricing_version
        version = PRICING_VERSIONS.get(version_code)
        if version is None:
            raise InvoiceError(f"unknown pricing version {version_code!r}; known: {', '.join(PRICING_VERSIONS)}")
        plan = version.plans.get(sub.plan_code)
        if plan is None:
            raise InvoiceError(f"pricing version {version_code} has no plan {sub.plan_code!r}")
        fraction = Decimal((part.segment.end - part.segment.start).total_seconds()) / period_seconds
        lines.extend(rate_plan(part.usage, plan, fraction=fraction, label=_label(part.segment, period, plan.name)))
        versions.add(version_code)
        currencies.add(plan.currency)
    if len(currencies) > 1:
        raise InvoiceError(f"subscriptions in {period} mix currencies {sorted(currencies)}: split the invoice")
    return lines, "+".join(sorted(versions)), (currencies.pop() if currencies else "EUR")


def _metric_amounts(lines: Sequence[Line]) -> dict[str, Decimal]:
    amounts: dict[str, Decimal] = {}
    for line in lines:
        if line.kind == "usage" and line.meter_code:
            amounts[line.meter_code] = amounts.get(line.meter_code, Decimal(0)) + line.amount
    return amounts


# ------------------------------------------------------------------------------------- stored invoices


def finalized_invoice(conn: psycopg.Connection, account_id: str, period: Period) -> dict[str, Any] | None:
    """The stored document of the account's finalized invoice for ``period``, or None."""
    return invoice_store.stored_document(conn, account_id, period.start)


def _finalized_periods(conn: psycopg.Connection, account_id: str) -> list[tuple[Period, dict[str, Any]]]:
    return [
        (Period.containing(start), document) for start, document in invoice_store.stored_documents(conn, account_id)
    ]


def _billed_per_metric(document: Mapping[str, Any]) -> tuple[dict[str, Decimal], dict[str, Decimal]]:
    """(usage quantity, usage amount) per metric on a stored invoice document."""
    quantities = {metric: Decimal(q) for metric, q in document.get("usage", {}).items()}
    amounts: dict[str, Decimal] = {}
    for line in document["lines"]:
        if line["kind"] == "usage" and line["meter_code"]:
            amounts[line["meter_code"]] = amounts.get(line["meter_code"], Decimal(0)) + Decimal(line["amount"])
    return quantities, amounts


def late_usage_lines(
    conn: psycopg.Connection, account_id: str, period: Period, currency: str
) -> tuple[list[Line], list[dict[str, str]]]:
    """Adjustment lines on ``period`` for usage that reached already-finalized earlier periods."""
    finalized = _finalized_periods(conn, account_id)
    closed = {p for p, _ in finalized}
    lines: list[Line] = []
    details: list[dict[str, str]] = []
    for earlier, document in finalized:
        if earlier >= period:
            continue
        next_open = earlier.next()
        while next_open in closed:
            next_open = next_open.next()
        if next_open != period:
            continue  # its late usage belongs to another (earlier) open invoice
        quantities, amounts = _billed_per_metric(document)
        for _, later_doc in finalized:  # adjustments for `earlier` already finalized on later invoices
            for item in later_doc.get("late_usage", []):
                if item["reference_period"] == str(earlier):
                    metric = item["meter_code"]
                    quantities[metric] = quantities.get(metric, Decimal(0)) + Decimal(item["quantity"])
                    amounts[metric] = amounts.get(metric, Decimal(0)) + Decimal(item["amount"])
        parts = period_usage(conn, account_id, earlier)
        now_lines, _, _ = _rate_segments(
            parts, earlier, document["pricing_version"] if "+" not in document["pricing_version"] else None
        )
        now_amounts = _metric_amounts(now_lines)
        now_quantities: dict[str, Decimal] = {}
        for part in parts:
            for metric, q in part.usage.items():
                now_quantities[metric] = now_quantities.get(metric, Decimal(0)) + q
        for metric in BILLABLE_METRICS:
            late_quantity = now_quantities.get(metric, Decimal(0)) - quantities.get(metric, Decimal(0))
            late_amount = now_amounts.get(metric, Decimal(0)) - amounts.get(metric, Decimal(0))
            if not late_quantity and not late_amount:
                continue
            unit = BILLABLE_METRICS[metric].unit.strip("{}")
            description = (
                f"Late usage for {earlier}: {_plain(late_quantity)} {unit} of {metric} arrived after "
                f"{document['invoice_number']} was finalized (re-rated under {document['pricing_version']})"
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
                    "quantity": _plain(late_quantity),
                    "amount": format(late_amount, "f"),
                }
            )
    return lines, details


# ------------------------------------------------------------------------------------------ building


def build_invoice(
    conn: psycopg.Connection,
    account_id: str,
    period: Period,
    *,
    pricing_override: str | None = None,
    parts: list[SegmentUsage] | None = None,
) -> Invoice:
    """The invoice for ``account_id`` and ``period``: the stored one when finalized (unless
    ``pricing_override`` asks for a preview under another version), else a draft computed now.
    ``parts``: the period's usage when the caller already read it with :func:`period_usage`."""
    stored = finalized_invoice(conn, account_id, period)
    if stored is not None and pricing_override is None:
        return _from_document(stored)
    if parts is None:
        parts = period_usage(conn, account_id, period)
    if not parts:
        raise InvoiceError(
            f"{account_id} has no subscription in {period}: "
            f"spanmeter subscription set --account {account_id} --plan PLAN --pricing VERSION --from {period.start:%Y-%m-%d}"
        )
    lines, version, currency = _rate_segments(parts, period, pricing_override)
    late_lines, late_details = ([], []) if stored is not None else late_usage_lines(conn, account_id, period, currency)
    lines = [*lines, *late_lines]
    usage: dict[str, Decimal] = {}
    meter_versions: dict[str, set[int]] = {}
    mismatches: list[dict[str, str]] = []
    for part in parts:
        for metric, q in part.usage.items():
            usage[metric] = usage.get(metric, Decimal(0)) + q
        for meter, versions in part.meter_versions.items():
            meter_versions.setdefault(meter, set()).update(versions)
        for plan_code, q in sorted(part.plan_codes.items()):
            if plan_code and plan_code != part.segment.subscription.plan_code:
                mismatches.append(
                    {
                        "span_plan_code": plan_code,
                        "subscription_plan_code": part.segment.subscription.plan_code,
                        "from": part.segment.start.isoformat(),
                        "to": part.segment.end.isoformat(),
                        "quantity": _plain(q),
                    }
                )
    unrated: dict[str, Decimal] = {}
    for gap_start, gap_end in uncovered_windows([p.segment for p in parts], period):
        gap_usage, _, _ = window_usage(conn, account_id, gap_start, gap_end)
        for metric, q in gap_usage.items():
            if q:
                unrated[metric] = unrated.get(metric, Decimal(0)) + q
    return Invoice(
        invoice_number=stored["invoice_number"] if stored else f"DRAFT-{period}-{account_id}",
        status="preview" if stored else "draft",
        account_id=account_id,
        period=str(period),
        currency=currency,
        pricing_version=version,
        meter_versions={meter: sorted(v) for meter, v in sorted(meter_versions.items())},
        lines=lines,
        total=invoice_total(lines),
        subscriptions=[
            {
                "plan_code": p.segment.subscription.plan_code,
                "pricing_version": p.segment.subscription.pricing_version,
                "from": p.segment.start.isoformat(),
                "to": p.segment.end.isoformat(),
            }
            for p in parts
        ],
        usage=usage,
        plan_mismatches=mismatches,
        unrated_usage=unrated,
        late_usage=late_details,
    )


def _from_document(document: Mapping[str, Any]) -> Invoice:
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
    )


def finalize_invoice(
    conn: psycopg.Connection,
    account_id: str,
    period: Period,
    *,
    now: datetime,
    finalized_by: str,
    drift_window: timedelta = DEFAULT_DRIFT_WINDOW,
) -> tuple[Invoice, bool]:
    """Finalize (store, immutably) the invoice; returns it and whether it was finalized now (False: it
    already was). The caller commits. Refused while the period is inside its drift window."""
    open_until = period.end + drift_window
    if now < open_until:
        raise InvoiceError(
            f"{period} stays open for late usage until {open_until.isoformat()} "
            f"(drift window {drift_window}); finalize after that"
        )
    invoice_store.lock_period(conn, str(period))
    if finalized_invoice(conn, account_id, period) is not None:
        return build_invoice(conn, account_id, period), False
    draft = build_invoice(conn, account_id, period)
    number = f"INV-{period}-{invoice_store.count_in_period(conn, period.start) + 1:04d}"
    document = {**draft.to_dict(), "invoice_number": number, "status": "finalized", "finalized_at": now.isoformat()}
    invoice_store.insert_invoice(
        conn,
        number=number,
        account_id=account_id,
        period_start=period.start,
        pricing_version=draft.pricing_version,
        currency=draft.currency,
        total=draft.total,
        document=document,
        finalized_at=now,
        finalized_by=finalized_by,
        lines=[
            (
                i,
                line.kind,
                line.meter_code,
                line.description,
                line.quantity,
                line.amount,
                line.currency,
                Period.parse(line.reference_period).start if line.reference_period else None,
            )
            for i, line in enumerate(draft.lines, start=1)
        ],
    )
    return _from_document(document), True


# ------------------------------------------------------------------------------------------- shadow


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
