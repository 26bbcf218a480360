"""Cost as well as price: what the usage on an invoice costs you, and the margin, per account, meter and model.

    spanmeter prices margin --period 2026-12 [--by account|meter|model|line] [--format table|json]

A price book entry may carry a ``cost`` beside its ``price`` (what the provider charges you for a token of that
model or a second of that GPU), in the book's currency. For every line an invoice prices from a book, the
revenue is the line's amount (after the plan's allowance); the cost is *all* of the line's usage (allowance
included: the provider bills you for free tokens too) at the entry's cost, rounded once per line like an
amount. Margin = revenue − cost. Lines whose entry has no cost count as revenue with an unknown cost and are
listed, never assumed free; fees, commitments and worker time are revenue without a provider cost here.

Amounts are never converted: a plan and its book share a currency, and the report keeps one total per
currency. An FX table would be the only honest way to add currencies together; spanmeter has none, so it
never does.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal

import psycopg

from . import invoices, subscriptions
from .periods import Period
from .prices import Catalog, load_catalog
from .rating import Line
from .rating.money import currency_decimals, exact_mul, round_money

__all__ = ["MarginRow", "account_margin", "cost_of", "group_rows", "margin_rows", "segment_margin_rows"]


@dataclass(frozen=True)
class MarginRow:
    account_id: str
    metric: str
    model: str  # LLM or GPU model; "" for revenue no model explains (fees, worker time)
    kind: str  # token kind, "gpu", or the line kind for the rest
    currency: str
    quantity: Decimal
    revenue: Decimal
    cost: Decimal | None  # None: the book entry has no cost

    @property
    def margin(self) -> Decimal | None:
        return None if self.cost is None else self.revenue - self.cost


def margin_rows(account_id: str, lines: Sequence[Line], rated: invoices.Rated) -> list[MarginRow]:
    """One row per invoice line of ``account_id`` (pure): book-priced lines with their cost, the rest as revenue."""
    groups = {(metric, g.dimension, g.provider, g.kind, g.book): g for metric, g in rated.groups}
    rows = []
    for line in lines:
        if line.dimension is not None and line.meter_code:
            key = (line.meter_code, line.dimension, line.provider or "", line.usage_kind or "", line.price_book or "")
            group = groups.get(key)
            cost = None
            quantity = line.quantity
            if group is not None:
                quantity = group.quantity
                cost = (
                    None
                    if group.unit_cost is None
                    else round_money(exact_mul(group.quantity, group.unit_cost), line.currency)
                )
            rows.append(MarginRow(account_id, line.meter_code, line.dimension, line.usage_kind or "", line.currency,
                                  quantity, line.amount, cost))  # fmt: skip
        else:
            rows.append(MarginRow(account_id, line.meter_code or line.kind, "", line.kind, line.currency, line.quantity,
                                  line.amount, Decimal(0)))  # fmt: skip
    return rows


def cost_of(rows: Iterable[MarginRow]) -> Decimal | None:
    """The known provider cost of ``rows``; None when none of them has a known cost of a model."""
    known = [row.cost for row in rows if row.model and row.cost is not None]
    return sum(known, Decimal(0)) if known else None


def account_margin(
    conn: psycopg.Connection, account_id: str, period: Period, catalog: Catalog | None = None
) -> list[MarginRow]:
    """The margin rows of the account's draft for ``period`` (its usage rated now, as the draft is)."""
    catalog = catalog if catalog is not None else load_catalog(conn)
    return segment_margin_rows(account_id, invoices.period_usage(conn, account_id, period, catalog), period, catalog)


def segment_margin_rows(
    account_id: str, parts: Sequence[invoices.SegmentUsage], period: Period, catalog: Catalog
) -> list[MarginRow]:
    """Margin rows segment by segment (pure): two segments under one book keep their own groups and costs."""
    rows = []
    for part in parts:
        rated = invoices.rate_segments([part], period, None, catalog)
        rows += margin_rows(account_id, rated.lines, rated)
    return rows


def group_rows(rows: Iterable[MarginRow], by: str) -> list[dict[str, str]]:
    """Rows summed by ``account``, ``meter`` or ``model`` (each per currency; never across currencies)."""
    totals: dict[tuple[str, str], list[Decimal | None]] = {}
    for row in rows:
        key = {"account": row.account_id, "meter": row.metric, "model": row.model or "(no model)"}[by]
        held = totals.setdefault((key, row.currency), [Decimal(0), Decimal(0), Decimal(0)])
        held[0] = (held[0] or Decimal(0)) + row.revenue
        if row.cost is None:
            held[2] = (held[2] or Decimal(0)) + row.revenue  # revenue whose cost is unknown
        else:
            held[1] = (held[1] or Decimal(0)) + row.cost
    out = []
    for (key, currency), (revenue, cost, unknown) in sorted(totals.items()):
        assert revenue is not None and cost is not None and unknown is not None
        known_revenue = revenue - unknown
        places = Decimal(1).scaleb(-currency_decimals(currency))

        def money(value: Decimal, places: Decimal = places) -> str:
            return format(value.quantize(places), "f")

        out.append(
            {
                by: key,
                "currency": currency,
                "revenue": money(revenue),
                "cost": money(cost),
                "margin": money(known_revenue - cost),
                "margin_pct": f"{(known_revenue - cost) / known_revenue * 100:.1f}" if known_revenue else "",
                "revenue_without_known_cost": money(unknown),
            }
        )
    return out


def subscribed_accounts(conn: psycopg.Connection, period: Period) -> list[str]:
    return [
        account
        for account in sorted({s.account_id for s in subscriptions.history(conn)})
        if subscriptions.segments(conn, account, period.start, period.end)
    ]
