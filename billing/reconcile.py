"""Reconciliation: do the raw ledger, the rollups and the invoices tell the same story for a period?

    spanmeter reconcile --period 2026-11        # exit status 1 when the delta is not zero

Four checks, stored as one row of ``reconciliation_runs`` (``spanmeter serve`` exports the latest delta
as ``spanmeter_reconciliation_delta`` so ``SpanmeterReconciliationDelta`` fires on anything but zero):

1. **rollups vs raw ledger**: the daily rollups recomputed from ``usage_events`` (see
   :func:`spanmeter.billing.rollup_store.check`); delta = the sum of absolute quantity differences.
2. **invoices vs ledger**: for every finalized invoice of the period and every billable metric, what the
   ledger holds now (rollups plus corrections) must equal what was billed: the invoice's usage, plus late
   usage already finalized on later invoices, plus late usage the next open invoice's draft will carry.
   Anything else is usage no invoice will ever bill (or billed usage the ledger no longer has).
3. **unrated usage**: usage in the period that no subscription covers (it can never be billed as is).
4. **usage keys billed at two end times**: a row of the period whose idempotency key the ledger also holds
   at another end time, received earlier. The primary key ``(occurred_at, idempotency_key)`` cannot see
   this at write time (a span re-sent with a changed end time is inserted again, see README, "What exactly
   once means here"), so it is found here, before invoices are finalized: every version is named (end
   times, accounts, producers) and its quantity counts in the delta until a correction settles it
   (``spanmeter ledger adjust … --reference <key>``, usually the negated quantity). One join of the
   period's rows with the whole attached ledger by key.

``delta`` is the sum of the absolute differences of all four, in metric units; zero means every unit of
usage in the ledger is on exactly one invoice, or on its way to one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

import psycopg

from . import invoices, subscriptions
from .ledger import reconcile_store, rollup_store
from .periods import Period
from .rating import BILLABLE_METRICS

__all__ = [
    "ReconciliationResult",
    "billed_twice",
    "difference_total",
    "invoice_differences",
    "late_billed_for",
    "latest_delta",
    "latest_run",
    "next_open_period",
    "reconcile",
]


@dataclass(frozen=True)
class ReconciliationResult:
    period: str
    rollup_differences: list[dict[str, Any]]
    invoice_differences: list[dict[str, str]]
    unrated: list[dict[str, str]]
    delta: Decimal
    invoices_checked: int
    accounts_checked: int
    billed_twice: list[dict[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "period": self.period,
            "delta": format(self.delta, "f"),
            "invoices_checked": self.invoices_checked,
            "accounts_checked": self.accounts_checked,
            "rollup_differences": self.rollup_differences,
            "invoice_differences": self.invoice_differences,
            "unrated_usage": self.unrated,
            "keys_billed_at_two_end_times": self.billed_twice,
        }

    def summary(self) -> str:
        lines = [
            f"reconciliation {self.period}: delta {self.delta} "
            f"({self.accounts_checked} account(s), {self.invoices_checked} finalized invoice(s))",
            f"  rollups vs raw ledger: {len(self.rollup_differences)} difference(s)",
            f"  invoices vs ledger:    {len(self.invoice_differences)} difference(s)",
            f"  unrated usage:         {len(self.unrated)} account/metric(s)",
            f"  keys billed twice:     {len(self.billed_twice)} row(s) at another end time than their key's first row",
        ]
        lines += [
            f"    {d}"
            for d in self.rollup_differences[:20]
            + self.invoice_differences[:20]
            + self.unrated[:20]
            + self.billed_twice[:20]
        ]
        return "\n".join(lines)


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def billed_twice(conn: psycopg.Connection, period: Period) -> list[dict[str, str]]:
    """Check 4: the period's rows billed again at another end time under a key the ledger already held."""
    return [
        {
            "idempotency_key": key,
            "meter_code": meter,
            "quantity": quantity,
            "account_id": account,
            "occurred_at": _iso(at),
            "producer": producer or "",
            "first_account_id": first_account,
            "first_occurred_at": _iso(first_at),
            "first_producer": first_producer or "",
        }
        for key, meter, quantity, account, at, producer, first_account, first_at, first_producer in (
            reconcile_store.billed_twice_rows(conn, period.start, period.end)
        )
    ]


def _quantity(text: str | None) -> Decimal:
    return Decimal(text.split("/")[0]) if text else Decimal(0)


def late_billed_for(period: Period, later_documents: Iterable[Mapping[str, Any]]) -> dict[str, Decimal]:
    """Late usage of ``period`` that later finalized invoices carried, per metric (pure)."""
    billed: dict[str, Decimal] = {}
    for document in later_documents:
        for item in document.get("late_usage", []):
            if item["reference_period"] == str(period):
                billed[item["meter_code"]] = billed.get(item["meter_code"], Decimal(0)) + Decimal(item["quantity"])
    return billed


def invoice_differences(
    account: str,
    invoice: Mapping[str, Any],
    late_billed: Mapping[str, Decimal],
    pending: Mapping[str, Decimal],
    ledger: Mapping[str, Decimal],
) -> list[dict[str, str]]:
    """Check 2 for one finalized invoice (pure): per billable metric, what the ledger holds now against what
    was billed (the invoice's usage, late usage finalized later, late usage pending on the next open draft)."""
    differences = []
    for metric in BILLABLE_METRICS:
        expected = (
            Decimal(invoice.get("usage", {}).get(metric, 0))
            + late_billed.get(metric, Decimal(0))
            + pending.get(metric, Decimal(0))
        )
        actual = ledger.get(metric, Decimal(0))
        if expected != actual:
            differences.append(
                {
                    "account_id": account,
                    "invoice_number": invoice["invoice_number"],
                    "meter_code": metric,
                    "ledger": format(actual, "f"),
                    "billed_or_pending": format(expected, "f"),
                }
            )
    return differences


def difference_total(differences: Iterable[Mapping[str, str]]) -> Decimal:
    """The delta of check 2's differences: the sum of |ledger - billed or pending| (pure)."""
    return sum((abs(Decimal(d["ledger"]) - Decimal(d["billed_or_pending"])) for d in differences), Decimal(0))


def reconcile(conn: psycopg.Connection, period: Period) -> ReconciliationResult:
    """Run the four checks for ``period`` and store the result (the caller commits)."""
    rollup_rows = rollup_store.check(conn, period.start, period.end)
    delta = sum((abs(_quantity(d.maintained) - _quantity(d.recomputed)) for d in rollup_rows), Decimal(0))
    rollup_differences = [
        {"table": d.table, "key": list(d.key), "maintained": d.maintained, "raw_ledger": d.recomputed}
        for d in rollup_rows
    ]
    accounts = rollup_store.accounts_with_usage(conn, period.start, period.end, with_invoices_of=period.start)
    differences: list[dict[str, str]] = []
    unrated: list[dict[str, str]] = []
    checked = 0
    for account in accounts:
        parts = invoices.period_usage(conn, account, period)
        ledger: dict[str, Decimal] = {}
        for part in parts:
            for metric, q in part.usage.items():
                ledger[metric] = ledger.get(metric, Decimal(0)) + q
        for gap_start, gap_end in invoices.uncovered_windows([p.segment for p in parts], period):
            gap_usage, _, _ = invoices.window_usage(conn, account, gap_start, gap_end)
            for metric, q in gap_usage.items():
                if q:
                    unrated.append({"account_id": account, "meter_code": metric, "quantity": format(q, "f")})
                    delta += abs(q)
        finalized = invoices.finalized_periods(conn, account)
        stored = next((document for p, document in finalized if p == period), None)
        if stored is None:
            continue
        checked += 1
        found = invoice_differences(
            account,
            stored,
            late_billed_for(period, [document for p, document in finalized if p > period]),
            _pending_on_next_open(conn, account, period, {p for p, _ in finalized}),
            ledger,
        )
        differences += found
        delta += difference_total(found)
    doubled = billed_twice(conn, period)
    delta += sum((Decimal(d["quantity"]) for d in doubled), Decimal(0))
    result = ReconciliationResult(
        period=str(period),
        rollup_differences=rollup_differences,
        invoice_differences=differences,
        unrated=unrated,
        delta=delta,
        invoices_checked=checked,
        accounts_checked=len(accounts),
        billed_twice=doubled,
    )
    reconcile_store.insert_run(conn, period.start, delta, result.to_dict())
    return result


def next_open_period(period: Period, closed: set[Period]) -> Period:
    """The first period after ``period`` without a finalized invoice (pure)."""
    following = period.next()
    while following in closed:
        following = following.next()
    return following


def _pending_on_next_open(
    conn: psycopg.Connection, account: str, period: Period, closed: set[Period]
) -> dict[str, Decimal]:
    """Late usage for ``period`` that the next open invoice's draft carries (not finalized yet)."""
    next_open = next_open_period(period, closed)
    segments = subscriptions.segments(conn, account, next_open.start, next_open.end)
    if not segments:
        return {}  # no subscription to bill it on: it shows as a difference
    details = invoices.late_usage_lines(conn, account, next_open, segments[0].subscription.currency).details
    pending: dict[str, Decimal] = {}
    for item in details:
        if item["reference_period"] == str(period):
            pending[item["meter_code"]] = pending.get(item["meter_code"], Decimal(0)) + Decimal(item["quantity"])
    return pending


def latest_delta(conn: psycopg.Connection) -> Decimal | None:
    """The delta of the most recent run (over all periods), None when reconciliation never ran."""
    run = reconcile_store.latest_run(conn)
    return run[0] if run else None


def latest_run(conn: psycopg.Connection) -> tuple[Decimal, datetime] | None:
    """(delta, when it ran) of the most recent run over all periods, None when reconciliation never ran."""
    return reconcile_store.latest_run(conn)
