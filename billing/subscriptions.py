"""Subscriptions decide the price: which plan, pricing version and currency an account is on, and since when.

The ``plan_code`` spans carry comes from the client side and can change mid-month, so it is informational:
invoices rate usage by the subscription in force when the usage occurred, and report usage whose span
plan code disagrees instead of re-pricing it.

The ``subscriptions`` table is effective-dated and append-only (``spanmeter subscription set`` adds a row,
``spanmeter subscription show`` lists them). A row is in force from its ``valid_from`` until the next row's
``valid_from`` (a later row with the same ``valid_from`` supersedes an earlier one) or its own
``valid_to``, whichever comes first. Time not covered by any row has no subscription: its usage stays in
the ledger and shows up as unrated on the invoice.

    spanmeter subscription set --account acme --plan growth --pricing v2_compute --from 2026-11-01
    spanmeter subscription set --account acme --plan scale --pricing v2_compute --from 2026-11-15T00:00:00Z
    spanmeter subscription show --account acme
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

import psycopg

from .ledger import subscription_store
from .prices import load_catalog
from .rating import PRICING_VERSIONS, PricingVersion

__all__ = [
    "Segment",
    "Subscription",
    "SubscriptionError",
    "history",
    "resolve_segments",
    "segments",
    "set_subscription",
    "validate",
]


class SubscriptionError(ValueError):
    pass


@dataclass(frozen=True)
class Subscription:
    subscription_id: int
    account_id: str
    plan_code: str
    pricing_version: str
    currency: str
    valid_from: datetime
    valid_to: datetime | None
    created_at: datetime
    created_by: str
    note: str | None


@dataclass(frozen=True)
class Segment:
    """A stretch of time [start, end) under one subscription."""

    start: datetime
    end: datetime
    subscription: Subscription


def set_subscription(
    conn: psycopg.Connection,
    *,
    account_id: str,
    plan_code: str,
    pricing_version: str,
    valid_from: datetime,
    created_by: str,
    currency: str | None = None,
    valid_to: datetime | None = None,
    note: str | None = None,
) -> Subscription:
    """Add a subscription row (the caller commits). The plan must exist in the pricing version, and the
    currency (default: the plan's) must be the plan's currency."""
    currency = validate(
        account_id=account_id,
        plan_code=plan_code,
        pricing_version=pricing_version,
        valid_from=valid_from,
        currency=currency,
        valid_to=valid_to,
        versions=load_catalog(conn).versions,
    )
    row = subscription_store.insert(
        conn,
        account_id=account_id,
        plan_code=plan_code,
        pricing_version=pricing_version,
        currency=currency,
        valid_from=valid_from,
        valid_to=valid_to,
        created_by=created_by,
        note=note,
    )
    return Subscription(*row)


def validate(
    *,
    account_id: str,
    plan_code: str,
    pricing_version: str,
    valid_from: datetime,
    currency: str | None = None,
    valid_to: datetime | None = None,
    versions: Mapping[str, PricingVersion] = PRICING_VERSIONS,
) -> str:
    """Refuse a subscription no invoice could rate; returns its currency (pure). ``versions``: the pricing
    versions that exist (the built-in ones and those imported, :func:`spanmeter.billing.prices.load_catalog`)."""
    version = versions.get(pricing_version)
    if version is None:
        raise SubscriptionError(f"unknown pricing version {pricing_version!r}; known: {', '.join(versions)}")
    plan = version.plans.get(plan_code)
    if plan is None:
        raise SubscriptionError(
            f"pricing version {pricing_version} has no plan {plan_code!r}; its plans: {', '.join(version.plans)}"
        )
    currency = (currency or plan.currency).upper()
    if currency != plan.currency:
        raise SubscriptionError(f"plan {plan_code} of {pricing_version} is priced in {plan.currency}, not {currency}")
    if not account_id:
        raise SubscriptionError("an account id is needed")
    if valid_from.utcoffset() is None or (valid_to is not None and valid_to.utcoffset() is None):
        raise SubscriptionError("valid_from / valid_to need a timezone (use UTC)")
    for moment in (valid_from, valid_to):
        if moment is not None and (moment.minute or moment.second or moment.microsecond):
            raise SubscriptionError(
                f"subscriptions change on whole UTC hours (rollups are hourly): {moment.isoformat()}"
            )
    if valid_to is not None and valid_to <= valid_from:
        raise SubscriptionError("valid_to must be after valid_from")
    return currency


def history(conn: psycopg.Connection, account_id: str | None = None) -> list[Subscription]:
    """Every subscription row (of one account), oldest first."""
    return [Subscription(*row) for row in subscription_store.rows(conn, account_id)]


def resolve_segments(rows: Sequence[Subscription], start: datetime, end: datetime) -> list[Segment]:
    """Which subscription is in force when, inside [start, end): pure, from one account's rows."""
    latest_per_start: dict[datetime, Subscription] = {}
    for row in sorted(rows, key=lambda r: (r.valid_from, r.subscription_id)):
        latest_per_start[row.valid_from] = row  # a later row with the same valid_from supersedes
    ordered = list(latest_per_start.values())
    result: list[Segment] = []
    for i, row in enumerate(ordered):
        ends = [
            moment for moment in (row.valid_to, ordered[i + 1].valid_from if i + 1 < len(ordered) else None) if moment
        ]
        seg_start, seg_end = max(row.valid_from, start), min([*ends, end])
        if seg_start < seg_end:
            result.append(Segment(seg_start, seg_end, row))
    return result


def segments(conn: psycopg.Connection, account_id: str, start: datetime, end: datetime) -> list[Segment]:
    return resolve_segments(history(conn, account_id), start, end)
