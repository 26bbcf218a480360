"""The billing service: the one API that every caller of billing uses.

The CLI (``spanmeter usage``), serve's billing component (:mod:`spanmeter.billing.component`) and the HTTP
API of issue 7/7 call :class:`BillingService`, never the domain modules' SQL, so a figure is computed one way
whoever asks for it. Reads that may lag (usage, month to date, invoice drafts) go to the read replica when one
is configured, in one read-only REPEATABLE READ snapshot, retried after a standby's recovery conflict
(:class:`spanmeter.billing.ledger.replica.Databases`); what must be exact when it commits (finalizing an
invoice, reconciling) reads and writes the primary.

    service = BillingService(resolve_databases(url, read_url, data_dir))
    service.usage("acme", start, end)               # [MeterTotal]: raw usage, corrections, adjusted
    service.month_to_date("acme", now)              # MonthToDate | None: quotas, invoice so far, projection
    service.invoice("acme", Period(2026, 11))       # Invoice: the stored one when finalized, else a draft
    service.finalize("acme", Period(2026, 11), now=now, by="finance")   # (Invoice, finalized now?)
    service.reconcile(Period(2026, 11))             # ReconciliationResult, stored

Two calls take the caller's connection, for a component that runs them inside its own transaction:
:meth:`BillingService.refresh_month_to_date` and :meth:`BillingService.latest_reconciliation`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, TypeVar

import psycopg
from sqlalchemy import Engine

from . import adjustments, drivers, entitlements, explain, exports, invoices, margin, prices, quotas, subscriptions
from . import reconcile as reconciliation
from . import usage as usage_views
from .ledger import month_to_date_store, partitions, rollup_store, usage_store
from .ledger.database import Database
from .ledger.replica import Databases, read_connection
from .periods import Period
from .pricebook import PriceBook
from .rating import PricingVersion, TransitionPolicy

__all__ = ["BillingService"]

T = TypeVar("T")


def _with_connection(database: Database, read: Callable[[psycopg.Connection], T]) -> T:
    with read_connection(database) as conn:
        return read(conn)


def _with_engine(read: Callable[[Engine], T]) -> Callable[[Database], T]:
    """``read`` given a SQLAlchemy engine on the chosen database, disposed after (one read, one pool)."""

    def run(database: Database) -> T:
        engine = database.engine()
        try:
            return read(engine)
        finally:
            engine.dispose()

    return run


@dataclass(frozen=True)
class BillingService:
    databases: Databases

    # -- reads that may lag: the replica when configured ------------------------------------------------
    def usage(self, account_id: str, start: datetime, end: datetime) -> list[usage_views.MeterTotal]:
        """Per meter: raw usage, the corrections dated in ``[start, end)`` and their sum (what is billed)."""
        return self.databases.read(
            _with_engine(lambda engine: usage_views.usage_totals(engine, account_id, start, end))
        )

    def archived_before(self) -> datetime | None:
        """The end of the newest archived month (raw rows before it are in archive files), or None."""
        return self.databases.read(_with_engine(usage_store.archived_before))

    def month_to_date(self, account_id: str, now: datetime) -> quotas.MonthToDate | None:
        """The account's month so far under its subscription (None without one)."""

        def read(database: Database) -> quotas.MonthToDate | None:
            with read_connection(database) as conn:
                return quotas.month_to_date(conn, account_id, now)

        return self.databases.read(read)

    def entitlements(
        self, account_id: str, now: datetime
    ) -> tuple[quotas.MonthToDate, list[entitlements.Entitlement]] | None:
        """The account's entitlements now: per metric used, limit, soft or hard, allowed (None without a
        subscription this month)."""
        return self.databases.read(
            lambda database: _with_connection(database, lambda conn: entitlements.for_account(conn, account_id, now))
        )

    def drivers(self, account_id: str, period: Period, by: str, top: int = 10) -> drivers.DriverReport:
        """The top cost drivers of the account's bill for ``period`` (see :mod:`spanmeter.billing.drivers`)."""
        return self.databases.read(
            lambda database: _with_connection(database, lambda conn: drivers.drivers(conn, account_id, period, by, top))
        )

    def invoice(self, account_id: str, period: Period, *, pricing_override: str | None = None) -> invoices.Invoice:
        """The stored invoice when finalized (unless ``pricing_override`` previews another version), else a
        draft computed now."""
        return self.invoice_and_shadow(account_id, period, pricing_override=pricing_override)[0]

    def invoice_and_shadow(
        self,
        account_id: str,
        period: Period,
        *,
        pricing_override: str | None = None,
        shadow: str | None = None,
        transition: TransitionPolicy | None = None,
        exact: bool = False,
    ) -> tuple[invoices.Invoice, invoices.ShadowComparison | None]:
        """The invoice and, with ``shadow``, its comparison under that pricing version, from one snapshot.
        ``exact``: read the primary (after finalizing, a replica may not have the stored invoice yet)."""

        def read(database: Database) -> tuple[invoices.Invoice, invoices.ShadowComparison | None]:
            with read_connection(database) as conn:
                invoice = invoices.build_invoice(conn, account_id, period, pricing_override=pricing_override)
                if shadow is None:
                    return invoice, None
                comparison = invoices.shadow_comparison(
                    conn, account_id, period, shadow, pricing=pricing_override, transition=transition
                )
                return invoice, comparison

        return read(self.databases.primary) if exact else self.databases.read(read)

    def shadow_report(
        self,
        period: Period,
        shadow: str,
        *,
        pricing: str | None = None,
        transition: TransitionPolicy | None = None,
    ) -> list[invoices.ShadowComparison]:
        """Every account subscribed in ``period``: its invoice against ``shadow`` pricing, from one snapshot."""

        def read(database: Database) -> list[invoices.ShadowComparison]:
            with read_connection(database) as conn:
                accounts = sorted({s.account_id for s in subscriptions.history(conn)})
                return [
                    invoices.shadow_comparison(conn, account, period, shadow, pricing=pricing, transition=transition)
                    for account in accounts
                    if subscriptions.segments(conn, account, period.start, period.end)
                ]

        return self.databases.read(read)

    def catalog(self) -> prices.Catalog:
        """Every pricing version (built-in and imported) and every price book version."""
        return self.databases.read(lambda database: _with_connection(database, prices.load_catalog))

    def unpriced(self, period: Period) -> list[dict[str, str]]:
        """Usage in ``period`` that no price book version prices, per account, model and meter (drafts)."""

        def read(database: Database) -> list[dict[str, str]]:
            with read_connection(database) as conn:
                catalog = prices.load_catalog(conn)
                found = []
                for account in sorted({s.account_id for s in subscriptions.history(conn)}):
                    if not subscriptions.segments(conn, account, period.start, period.end):
                        continue
                    draft = invoices.build_invoice(conn, account, period, catalog=catalog)
                    found += [{"account_id": account, **item} for item in draft.unpriced_models]
                return found

        return self.databases.read(read)

    def explain(
        self, account_id: str, period: Period, *, line_no: int | None = None, trace_url_template: str | None = None
    ) -> tuple[invoices.Invoice, list[explain.LineExplanation]]:
        """The invoice and, per line (or line ``line_no``), the ledger rows, jobs, traces, corrections and
        price book version behind it, from one snapshot."""

        def read(database: Database) -> tuple[invoices.Invoice, list[explain.LineExplanation]]:
            with read_connection(database) as conn:
                archived_to = partitions.coverage(conn).archived_to
                return explain.explain_invoice(
                    conn, account_id, period, line_no=line_no, trace_url_template=trace_url_template,
                    archived_to=archived_to,
                )  # fmt: skip

        return self.databases.read(read)

    def margin(self, period: Period) -> list[margin.MarginRow]:
        """Revenue, provider cost and margin per invoice line of every account subscribed in ``period``."""

        def read(database: Database) -> list[margin.MarginRow]:
            with read_connection(database) as conn:
                catalog = prices.load_catalog(conn)
                return [
                    row
                    for account in margin.subscribed_accounts(conn, period)
                    for row in margin.account_margin(conn, account, period, catalog)
                ]

        return self.databases.read(read)

    # -- exact at commit: the primary -------------------------------------------------------------------
    def import_prices(self, item: PriceBook | PricingVersion, *, by: str, drift_window: timedelta) -> bool:
        """Store a price book version or a pricing version (append-only); False when already stored as is."""
        with psycopg.connect(self.databases.primary.conninfo) as conn:
            if isinstance(item, PriceBook):
                created = prices.import_book(conn, item, imported_by=by, drift_window=drift_window)
            else:
                created = prices.import_pricing_version(conn, item, imported_by=by)
            conn.commit()
        return created

    def finalize(
        self,
        account_id: str,
        period: Period,
        *,
        now: datetime,
        by: str,
        drift_window: timedelta = invoices.DEFAULT_DRIFT_WINDOW,
    ) -> tuple[invoices.Invoice, bool]:
        """Store the invoice immutably (refused inside the drift window); (invoice, finalized by this call)."""
        with psycopg.connect(self.databases.primary.conninfo) as conn:
            result = invoices.finalize_invoice(
                conn, account_id, period, now=now, finalized_by=by, drift_window=drift_window
            )
            conn.commit()
        return result

    def reconcile(self, period: Period) -> reconciliation.ReconciliationResult:
        """Raw ledger, rollups and invoices compared for ``period``; the result is stored."""
        with psycopg.connect(self.databases.primary.conninfo) as conn:
            result = reconciliation.reconcile(conn, period)
            conn.commit()
        return result

    def subscribe(
        self,
        *,
        account_id: str,
        plan_code: str,
        pricing_version: str,
        valid_from: datetime,
        valid_to: datetime | None,
        currency: str | None,
        by: str,
        note: str | None,
    ) -> subscriptions.Subscription:
        """Add an effective-dated subscription (append-only; see :mod:`spanmeter.billing.subscriptions`)."""
        with psycopg.connect(self.databases.primary.conninfo) as conn:
            row = subscriptions.set_subscription(
                conn,
                account_id=account_id,
                plan_code=plan_code,
                pricing_version=pricing_version,
                valid_from=valid_from,
                valid_to=valid_to,
                currency=currency,
                created_by=by,
                note=note,
            )
            conn.commit()
        return row

    def subscription_history(self, account_id: str | None = None) -> list[subscriptions.Subscription]:
        """Subscription history, one account or every account (the primary: what the next invoice uses)."""
        with psycopg.connect(self.databases.primary.conninfo) as conn:
            return subscriptions.history(conn, account_id)

    def adjust(
        self,
        *,
        idempotency_key: str,
        account_id: str,
        meter_code: str,
        quantity: Decimal,
        occurred_at: datetime,
        reason: str,
        by: str,
        reference: str | None = None,
    ) -> tuple[adjustments.Adjustment, bool]:
        """Record a usage correction, once per key; (the correction, recorded by this call)."""
        with psycopg.connect(self.databases.primary.conninfo) as conn:
            result = adjustments.record(
                conn,
                idempotency_key=idempotency_key,
                account_id=account_id,
                meter_code=meter_code,
                quantity=quantity,
                occurred_at=occurred_at,
                reason=reason,
                created_by=by,
                reference=reference,
            )
            conn.commit()
        return result

    def rebuild_rollups(self) -> dict[str, int]:
        """Recompute every rollup of the attached months from the raw ledger (locks out the fold meanwhile)."""
        with psycopg.connect(self.databases.primary.conninfo) as conn:
            counts = rollup_store.rebuild(conn)
            conn.commit()
        return counts

    def check_rollups(self, period: Period | None = None) -> list[rollup_store.RollupDifference]:
        """Differences between the maintained rollups and the raw ledger (attached months; one period or all)."""
        with psycopg.connect(self.databases.primary.conninfo) as conn:
            return rollup_store.check(conn, period.start if period else None, period.end if period else None)

    def export(
        self, what: str, period: Period, account_id: str | None, parties: exports.FocusParties
    ) -> list[dict[str, Any]]:
        """``usage``, ``invoices`` or ``focus`` rows for ``period`` (see :mod:`spanmeter.billing.exports`)."""

        def read(database: Database) -> list[dict[str, Any]]:
            with read_connection(database) as conn:
                return exports.export(conn, what, period, account_id, parties)

        return self.databases.read(read)

    # -- inside the caller's transaction ----------------------------------------------------------------
    @staticmethod
    def refresh_month_to_date(conn: psycopg.Connection, now: datetime) -> list[tuple[str, str, Decimal]]:
        """Rewrite ``account_month_to_date`` for every subscribed account; the quota ratios to export."""
        return list(quotas.refresh_month_to_date(conn, now))

    @staticmethod
    def unpriced_items(conn: psycopg.Connection, now: datetime) -> int:
        """(model, meter) pairs of this month's usage no price book prices, as the last refresh found them."""
        return month_to_date_store.unpriced_items(conn, Period.containing(now).start)

    @staticmethod
    def latest_reconciliation(conn: psycopg.Connection) -> tuple[float, float] | None:
        """(delta, unix time) of the latest ``spanmeter reconcile`` run, or None before the first."""
        latest = reconciliation.latest_run(conn)
        return (float(latest[0]), latest[1].timestamp()) if latest is not None else None
