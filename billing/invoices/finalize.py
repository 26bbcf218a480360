"""Finalizing: an invoice becomes immutable, numbered ``INV-YYYY-MM-NNNN`` (sequential per period).

Periods stay open for a **drift window** after they end (``SPANMETER_INVOICE_DRIFT_WINDOW_SECONDS``, default
172,800 s = 2 days) so that late spans land on their own invoice; finalizing is refused until the window has
passed. The document and its lines are stored append-only; from then on the invoice is read back, never
recomputed. Finalizing within one period is serialised (numbers are per period). The ``invoice.finalized``
webhook event is enqueued in the same transaction (a transactional outbox, see :mod:`spanmeter.billing.webhooks`).
"""

from __future__ import annotations

from datetime import datetime, timedelta

import psycopg

from .. import webhooks
from ..ledger import invoice_store, locks, webhook_store
from ..periods import Period
from .document import Invoice, InvoiceError, from_document
from .draft import build_invoice
from .late import finalized_invoice

__all__ = ["DEFAULT_DRIFT_WINDOW", "finalize_invoice", "line_rows", "open_until"]

DEFAULT_DRIFT_WINDOW = timedelta(days=2)


def open_until(period: Period, drift_window: timedelta = DEFAULT_DRIFT_WINDOW) -> datetime:
    """When ``period`` stops taking late usage on its own invoice (pure)."""
    return period.end + drift_window


def line_rows(invoice: Invoice) -> list[invoice_store.InvoiceLineRow]:
    """The invoice's lines as ``invoice_lines`` rows, numbered from 1 (pure)."""
    return [
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
        for i, line in enumerate(invoice.lines, start=1)
    ]


def finalize_invoice(
    conn: psycopg.Connection,
    account_id: str,
    period: Period,
    *,
    now: datetime,
    finalized_by: str,
    drift_window: timedelta = DEFAULT_DRIFT_WINDOW,
) -> tuple[Invoice, bool]:
    """Finalize (store, immutably) the invoice and enqueue its ``invoice.finalized`` webhook event; returns it and
    whether it was finalized now (False: it already was). The caller commits. Refused while the period is inside its drift window."""
    until = open_until(period, drift_window)
    if now < until:
        raise InvoiceError(
            f"{period} stays open for late usage until {until.isoformat()} "
            f"(drift window {drift_window}); finalize after that"
        )
    locks.hold_prices(conn, exclusive=False)  # no price book version is imported meanwhile
    invoice_store.lock_period(conn, str(period))
    if finalized_invoice(conn, account_id, period) is not None:
        return build_invoice(conn, account_id, period), False
    draft = build_invoice(conn, account_id, period)
    if draft.unpriced_models:
        models = ", ".join(sorted({f"{u['model']} ({u['meter_code']})" for u in draft.unpriced_models}))
        raise InvoiceError(
            f"{account_id} {period} has usage no price book version prices: {models}. Import a book version that "
            f"prices them (or has a default entry) with the effective_from of the version in force (a later import "
            f"on the same hour supersedes it) or an hour inside {period}, then finalize; `spanmeter prices unpriced "
            f"--period {period}` lists them"
        )
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
        lines=line_rows(draft),
    )
    webhook_store.enqueue(conn, webhooks.invoice_finalized_event(document, created_at=now))
    return from_document(document), True
