"""Top cost drivers: which jobs, services, Celery tasks or models an account's bill comes from.

``GET /v1/accounts/{id}/drivers?period=YYYY-MM&by=job|model|service|task`` and
``spanmeter invoice drivers --account ID --period P --group job`` give the same figures.

How a bill is split among drivers, written down so finance can redo it by hand:

1. The invoice of the period is taken as ``spanmeter invoice`` shows it (the stored one when finalized, else
   the draft).
2. Each usage line is matched to the usage it prices: its meters, and for a line priced per model its model and
   provider. Lines with the same match (one per subscription segment or price-book window) are pooled.
3. A pool's amount is shared among drivers in proportion to the quantity each contributed to that usage over the
   period: ``amount × driver quantity ÷ pool quantity``. The included allowance therefore lowers every driver's
   share alike; nobody's usage is "the free part".
4. A driver's amount is the sum over pools, rounded half-even to the currency's cents at the end only; its
   ``share`` is that amount over the invoice total (4 decimals). Fees, commitments, minimums and late-usage
   adjustments belong to no driver: they are reported as ``unattributed``.

The usage read is what the invoice rates: the rows inside its subscription segments (usage outside any
segment is unrated and drives nothing), and for a finalized invoice only the rows received by the time it was
finalized (later rows are the next invoice's late usage). Corrections (``ledger adjust``) change a line's
amount but name no job, so they are shared like the rest of the line. An archived month has no raw rows:
``by=job|service|task`` then attributes nothing (``by=model`` still works from the rollups).

Where the usage is read from: ``by=model`` reads the rollups (any size, milliseconds);
``by=job|service|task`` reads the account's raw rows of the period, bounded by account and time (the cost grows
with the account's month: about a second per million rows on the reference machine, see bench/README.md).
Rows without the attribute count under ``""`` (shown as "(none)").
"""

from __future__ import annotations

import heapq
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_HALF_EVEN, Decimal

import psycopg

from .explain import meters_of
from .invoices import Invoice, build_invoice
from .ledger import drivers_store
from .periods import Period
from .rollups import dimension_usage

__all__ = ["BY", "Driver", "DriverReport", "attribute", "drivers"]

BY = ("job", "model", "service", "task")
CENT = Decimal("0.01")


@dataclass(frozen=True)
class Driver:
    key: str
    amount: Decimal
    share: Decimal  # of the invoice total, 4 decimals (0 when the total is 0)
    quantities: dict[str, Decimal]  # per billable metric


@dataclass(frozen=True)
class DriverReport:
    invoice: Invoice
    by: str
    drivers: list[Driver]  # dearest first
    unattributed: Decimal  # fees, commitments, minimums, late-usage adjustments


# (meters, dimension or None, provider): what a usage line prices
Pool = tuple[tuple[str, ...], str | None, str]


def _pool(line) -> Pool:
    return meters_of(line), line.dimension, line.provider or ""


def attribute(
    invoice: Invoice,
    usage: dict[tuple[str, str, str, str], Decimal],
    metric_of: dict[str, str],
    top: int | None = None,
) -> tuple[list[Driver], Decimal]:
    """Split the invoice's usage lines among drivers (pure); ``usage`` maps (driver, meter, dimension, provider)
    to quantity. Returns the ``top`` drivers (all when None), dearest first (by the exact amount, then key),
    and the unattributed amount."""
    pools: dict[Pool, Decimal] = defaultdict(Decimal)
    unattributed = Decimal(0)
    for line in invoice.lines:
        if line.kind == "usage":
            pools[_pool(line)] += line.amount
        else:
            unattributed += line.amount
    amounts: dict[str, Decimal] = defaultdict(Decimal)
    by_usage: dict[tuple[str, str, str], list[tuple[str, Decimal]]] = defaultdict(list)
    for (driver, meter, used_dimension, used_provider), q in usage.items():
        by_usage[(meter, used_dimension, used_provider)].append((driver, q))
    for (meters, line_dimension, line_provider), amount in pools.items():
        mine = [
            parts
            for (meter, dim, prov), parts in by_usage.items()
            if meter in meters and (line_dimension is None or (dim == line_dimension and prov == line_provider))
        ]
        total = sum((q for parts in mine for _, q in parts), Decimal(0))
        if total == 0:
            unattributed += amount
            continue
        for parts in mine:
            for driver, q in parts:
                amounts[driver] += amount * q / total

    def dearest(item: tuple[str, Decimal]) -> tuple[Decimal, str]:
        return -item[1], item[0]

    chosen = (
        heapq.nsmallest(top, amounts.items(), key=dearest) if top is not None else sorted(amounts.items(), key=dearest)
    )
    quantities: dict[str, dict[str, Decimal]] = {driver: defaultdict(Decimal) for driver, _ in chosen}
    for (driver, meter, _dimension, _provider), q in usage.items():
        if driver in quantities:
            quantities[driver][metric_of.get(meter, meter)] += q
    invoice_total = invoice.total
    out = [
        Driver(
            key=driver,
            amount=amount.quantize(CENT, rounding=ROUND_HALF_EVEN),
            share=(amount / invoice_total).quantize(Decimal("0.0001"), rounding=ROUND_HALF_EVEN)
            if invoice_total
            else Decimal(0),
            quantities={m: q for m, q in sorted(quantities[driver].items())},
        )
        for driver, amount in chosen
    ]
    return out, unattributed


def _windows(invoice: Invoice, period: Period) -> list[tuple[datetime, datetime]]:
    """The subscription segments the invoice rates, merged where they touch (the whole period without any)."""
    segments = sorted(
        (datetime.fromisoformat(s["from"]), datetime.fromisoformat(s["to"]))
        for s in invoice.subscriptions
        if s.get("from") and s.get("to")
    )
    merged: list[tuple[datetime, datetime]] = []
    for start, end in segments:
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged or [(period.start, period.end)]


def drivers(conn: psycopg.Connection, account_id: str, period: Period, by: str, top: int = 10) -> DriverReport:
    """The account's top ``top`` drivers of the period's bill, by ``by`` (one of :data:`BY`)."""
    if by not in BY:
        raise ValueError(f"by={by!r}: use one of {', '.join(BY)}")
    invoice = build_invoice(conn, account_id, period)  # the stored one when finalized
    metric_of = {meter: line.meter_code or "" for line in invoice.lines if line.kind == "usage"
                 for meter in meters_of(line)}  # fmt: skip
    meters = sorted(metric_of)
    usage: dict[tuple[str, str, str, str], Decimal] = defaultdict(Decimal)
    finalized = invoice.to_dict().get("finalized_at") if invoice.status == "finalized" else None
    received_before = datetime.fromisoformat(finalized) if finalized else None
    for start, end in _windows(invoice, period):  # only what the invoice rates: its subscription segments
        if meters and by == "model":
            for (meter, dimension, provider), q in dimension_usage(conn, account_id, meters, start, end).items():
                usage[(dimension, meter, dimension, provider)] += q
        elif meters:
            for driver, meter, dimension, provider, q in drivers_store.raw_driver_rows(
                conn, by, account_id, meters, start, end, received_before
            ):
                usage[(driver, meter, dimension, provider)] += Decimal(q)
    found, unattributed = attribute(invoice, usage, metric_of, top)
    return DriverReport(invoice, by, found, unattributed)
