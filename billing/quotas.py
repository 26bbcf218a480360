"""Month to date: what an account used, against its quotas, and what the month will probably cost.

``spanmeter usage --account ID`` prints this for the current UTC month; ``spanmeter serve`` exports the
quota burn of the accounts above half a quota as ``spanmeter_account_quota_used_ratio{account_id,meter}``
(at most 200 series, the highest ratios first), the one metric allowed an account label, so that
``SpanmeterAccountQuotaHigh`` (75%) and ``SpanmeterAccountQuotaExhausted`` (100%) can fire; and it
rewrites ``account_month_to_date`` (invoice so far, projection) for the Grafana billing dashboard; and it
enqueues a ``quota.threshold`` webhook event the first time an account reaches 50 %, 75 % and 100 % of a quota
in a month (:mod:`spanmeter.billing.webhooks`; the outbox's dedupe key makes later passes, and other replicas,
enqueue nothing more).

The projection is linear: each subscription segment's usage so far, scaled to the segment's full length
(usage / elapsed × length), rated like the invoice. It is an estimate, labelled as one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

import psycopg

from . import invoices, subscriptions, webhooks
from .ledger import month_to_date_store, webhook_store
from .margin import cost_of, margin_rows
from .periods import Period
from .prices import BUILTIN, Catalog, load_catalog
from .rating import QuotaStatus, invoice_total, quota_status

__all__ = [
    "MAX_QUOTA_SERIES",
    "QUOTA_EXPORT_THRESHOLD",
    "MonthToDate",
    "month_to_date",
    "projected_total",
    "refresh_month_to_date",
]

QUOTA_EXPORT_THRESHOLD = Decimal("0.5")
MAX_QUOTA_SERIES = 200


@dataclass(frozen=True)
class MonthToDate:
    period: Period
    as_of: datetime
    plan_code: str
    pricing_version: str
    currency: str
    usage: dict[str, Decimal]
    quotas: list[QuotaStatus]
    invoice_so_far: Decimal
    projected_total: Decimal
    in_force: bool  # a subscription segment contains `as_of` (False: it ended earlier this month)
    cost_so_far: Decimal | None = None  # the usage so far at the price books' cost (None: no known cost)
    unpriced_items: int = 0  # (model, meter) pairs of the month's usage no book version prices


def _scaled(part: invoices.SegmentUsage, scale: Decimal) -> invoices.SegmentUsage:
    return dataclasses.replace(
        part,
        usage={metric: q * scale for metric, q in part.usage.items()},
        dimension_windows=tuple(
            dataclasses.replace(w, usage={key: q * scale for key, q in w.usage.items()}) for w in part.dimension_windows
        ),
    )


def projected_total(
    parts: Sequence[invoices.SegmentUsage], period: Period, now: datetime, catalog: Catalog = BUILTIN
) -> Decimal:
    """The month's linear projection (pure): each segment's usage so far scaled to its full length, rated."""
    lines = []
    for part in parts:
        segment = part.segment
        length = Decimal((segment.end - segment.start).total_seconds())
        elapsed = Decimal((min(now, segment.end) - segment.start).total_seconds())
        scale = length / elapsed if elapsed > 0 else Decimal(0)
        lines.extend(invoices.rate_segments([_scaled(part, scale)], period, None, catalog).lines)
    return invoice_total(lines)


def month_to_date(
    conn: psycopg.Connection, account_id: str, now: datetime, catalog: Catalog | None = None
) -> MonthToDate | None:
    """None when the account has no subscription in force this month."""
    catalog = catalog if catalog is not None else load_catalog(conn)
    period = Period.containing(now)
    parts = invoices.period_usage(conn, account_id, period, catalog)
    if not parts:
        return None
    draft = invoices.build_invoice(conn, account_id, period, parts=parts, catalog=catalog)  # one read of the usage
    in_force = next((p for p in parts if p.segment.start <= now < p.segment.end), None)
    current = in_force or parts[-1]
    sub = current.segment.subscription
    version = catalog.version(sub.pricing_version)
    assert version is not None  # build_invoice refused an unknown version
    plan = version.plans[sub.plan_code]
    fraction = Decimal((current.segment.end - current.segment.start).total_seconds()) / Decimal(
        (period.end - period.start).total_seconds()
    )
    # each segment rated once: the current one's usage charges draw the commitment, all of them give the cost
    rated = [invoices.rate_segments([part], period, None, catalog) for part in parts]
    current_lines = rated[parts.index(current)].lines
    spend = sum((line.amount for line in current_lines if line.kind == "usage"), Decimal(0))
    return MonthToDate(
        period=period,
        as_of=now,
        plan_code=sub.plan_code,
        pricing_version=sub.pricing_version,
        currency=draft.currency,
        usage=dict(draft.usage),
        quotas=quota_status(current.usage, plan, fraction=fraction, spend=spend),
        invoice_so_far=draft.total,
        projected_total=projected_total(parts, period, now, catalog),
        in_force=in_force is not None,
        cost_so_far=cost_of(row for r in rated for row in margin_rows(account_id, r.lines, r)),
        unpriced_items=len(draft.unpriced_models),
    )


def _exported(found: list[tuple[str, str, Decimal | None]]) -> list[tuple[str, str, Decimal]]:
    kept = [(a, m, r) for a, m, r in found if r is not None and r >= QUOTA_EXPORT_THRESHOLD]
    kept.sort(key=lambda item: (-item[2], item[0], item[1]))
    return kept[:MAX_QUOTA_SERIES]


def refresh_month_to_date(conn: psycopg.Connection, now: datetime) -> list[tuple[str, str, Decimal]]:
    """Rewrite ``account_month_to_date`` for every subscribed account, enqueue the quota webhooks it calls for;
    return the exported quota ratios.

    One pass over the accounts serves both the Grafana billing dashboard (the table, read through the
    SELECT-only ``spanmeter_grafana`` role) and ``spanmeter_account_quota_used_ratio``. Committed as one
    transaction, so a dashboard never sees half a refresh.
    """
    period = Period.containing(now)
    accounts = sorted({s.account_id for s in subscriptions.history(conn)})
    catalog = load_catalog(conn)
    found: list[tuple[str, str, Decimal | None]] = []
    with conn.transaction():
        for account in accounts:
            mtd = month_to_date(conn, account, now, catalog)
            if mtd is None:
                continue
            if mtd.in_force:  # an ended subscription's frozen ratios must not keep quota alerts firing
                found.extend((account, q.metric, q.ratio) for q in mtd.quotas)
                for event in webhooks.quota_events(
                    account,
                    str(period),
                    mtd.quotas,
                    plan_code=mtd.plan_code,
                    pricing_version=mtd.pricing_version,
                    currency=mtd.currency,
                    created_at=now,
                ):
                    webhook_store.enqueue(conn, event)  # once per dedupe key: a known crossing adds nothing
            month_to_date_store.put(
                conn,
                account_id=account,
                period_start=period.start,
                plan_code=mtd.plan_code,
                pricing_version=mtd.pricing_version,
                currency=mtd.currency,
                invoice_so_far=mtd.invoice_so_far,
                projected_total=mtd.projected_total,
                as_of=now,
                cost_so_far=mtd.cost_so_far,
                unpriced_items=mtd.unpriced_items,
            )
    return _exported(found)
