"""Building an invoice: the stored one when finalized, else a draft computed now from the period's usage.

:func:`build_invoice` reads (the stored document, the segments' usage, late usage, usage no subscription
covers); :func:`assemble` computes the draft from what was read, without a database.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

import psycopg

from ..periods import Period
from ..prices import Catalog, load_catalog
from ..rating import Line, invoice_total
from .document import Invoice, InvoiceError, from_document, plain
from .late import LateUsage, finalized_invoice, late_usage_lines
from .pricing import Rated, rate_segments
from .usage import SegmentUsage, period_usage, uncovered_windows, window_usage

__all__ = ["assemble", "build_invoice", "plan_mismatches"]


def plan_mismatches(parts: Sequence[SegmentUsage]) -> list[dict[str, str]]:
    """Usage whose spans carried a plan code other than the subscription's: reported, never re-priced."""
    mismatches: list[dict[str, str]] = []
    for part in parts:
        for plan_code, q in sorted(part.plan_codes.items()):
            if plan_code and plan_code != part.segment.subscription.plan_code:
                mismatches.append(
                    {
                        "span_plan_code": plan_code,
                        "subscription_plan_code": part.segment.subscription.plan_code,
                        "from": part.segment.start.isoformat(),
                        "to": part.segment.end.isoformat(),
                        "quantity": plain(q),
                    }
                )
    return mismatches


def assemble(
    account_id: str,
    period: Period,
    parts: Sequence[SegmentUsage],
    *,
    rated: Rated,
    late: tuple[list[Line], list[dict[str, str]]] = ([], []),
    late_unpriced: Sequence[Mapping[str, str]] = (),
    unrated: Mapping[str, Decimal] | None = None,
    stored: Mapping[str, Any] | None = None,
) -> Invoice:
    """The draft (or, over a ``stored`` finalized document, the preview) from the period's segments, their
    rating (:func:`.pricing.rate_segments`), late usage lines and unrated usage (pure)."""
    lines = [*rated.lines, *late[0]]
    usage: dict[str, Decimal] = {}
    meter_versions: dict[str, set[int]] = {}
    for part in parts:
        for metric, q in part.usage.items():
            usage[metric] = usage.get(metric, Decimal(0)) + q
        for meter, versions in part.meter_versions.items():
            meter_versions.setdefault(meter, set()).update(versions)
    return Invoice(
        invoice_number=stored["invoice_number"] if stored else f"DRAFT-{period}-{account_id}",
        status="preview" if stored else "draft",
        account_id=account_id,
        period=str(period),
        currency=rated.currency,
        pricing_version=rated.version,
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
        plan_mismatches=plan_mismatches(parts),
        unrated_usage=dict(unrated or {}),
        late_usage=late[1],
        unpriced_models=(*rated.unpriced, *late_unpriced),
        price_books=rated.books,
    )


def build_invoice(
    conn: psycopg.Connection,
    account_id: str,
    period: Period,
    *,
    pricing_override: str | None = None,
    parts: list[SegmentUsage] | None = None,
    catalog: Catalog | None = None,
) -> Invoice:
    """The invoice for ``account_id`` and ``period``: the stored one when finalized (unless
    ``pricing_override`` asks for a preview under another version), else a draft computed now.
    ``parts``: the period's usage when the caller already read it with :func:`.usage.period_usage`;
    ``catalog``: the pricing versions and price books (read from the ledger when not given)."""
    stored = finalized_invoice(conn, account_id, period)
    if stored is not None and pricing_override is None:
        return from_document(stored)
    catalog = catalog if catalog is not None else load_catalog(conn)
    if parts is None:
        parts = period_usage(conn, account_id, period, catalog, pricing_override)
    if not parts:
        raise InvoiceError(
            f"{account_id} has no subscription in {period}: "
            f"spanmeter subscription set --account {account_id} --plan PLAN --pricing VERSION --from {period.start:%Y-%m-%d}"
        )
    rated = rate_segments(parts, period, pricing_override, catalog)
    late = (
        LateUsage([], [], [])
        if stored is not None
        else late_usage_lines(conn, account_id, period, rated.currency, catalog)
    )
    unrated: dict[str, Decimal] = {}
    for gap_start, gap_end in uncovered_windows([p.segment for p in parts], period):
        gap_usage, _, _ = window_usage(conn, account_id, gap_start, gap_end)
        for metric, q in gap_usage.items():
            if q:
                unrated[metric] = unrated.get(metric, Decimal(0)) + q
    return assemble(
        account_id,
        period,
        parts,
        rated=rated,
        late=(late.lines, late.details),
        late_unpriced=late.unpriced,
        unrated=unrated,
        stored=stored,
    )
