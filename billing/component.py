"""The billing component: the month-to-date refresh that ``spanmeter serve`` hosts, one instance at a time.

Every ``SPANMETER_BILLING_METRICS_INTERVAL_SECONDS`` (default 60 s) it runs
:meth:`spanmeter.billing.service.BillingService.refresh_month_to_date`: it rewrites ``account_month_to_date``
(the Grafana billing dashboard's table) from the rollups and subscriptions, and keeps the quota ratios that
``spanmeter_account_quota_used_ratio`` exports; it also reads the latest ``reconciliation_runs`` delta.

**One instance across processes and replicas.** Each pass takes the transaction-level advisory lock
:data:`REFRESH_LOCK_ID` with ``pg_try_advisory_xact_lock``: the replica that gets it refreshes; every other
replica (and a later pass that finds the lock taken) skips the rewrite, exports no quota series (the leader
does: the quota gauge has one source), and still reads the reconciliation delta, which is one row. A replica
that stops or loses its database loses the lock with its transaction, and the next pass of another replica
takes over. :attr:`BillingSnapshot.leader` says which replica refreshed (``spanmeter_billing_refresh_leader``).

Life cycle, as the Collector's components: :meth:`BillingComponent.start` (a daemon thread, its own
connection per pass), :meth:`BillingComponent.shutdown`; :meth:`BillingComponent.snapshot` is what exporters
read (:mod:`spanmeter.collector.billing_metrics` turns it into Prometheus metrics). Failed passes are counted
(:attr:`BillingComponent.on_error`) and keep the previous snapshot.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import psycopg

from .ledger import locks
from .ledger.database import Database
from .ledger.locks import REFRESH_LOCK_ID
from .service import BillingService

__all__ = ["REFRESH_LOCK_ID", "BillingComponent", "BillingSnapshot"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BillingSnapshot:
    """The last pass: quota ratios (leader only), the latest reconciliation (delta, unix time) or None, when
    the pass ended (0: never), and whether this replica refreshed."""

    quotas: tuple[tuple[str, str, float], ...] = ()
    reconciliation: tuple[float, float] | None = None
    refreshed_at: float = 0.0
    leader: bool = False
    unpriced_items: int | None = None  # leader only: (model, meter) pairs this month no price book prices


@dataclass
class BillingComponent:
    database: Database
    interval_seconds: float = 60.0
    on_error: Callable[[], None] = field(default=lambda: None)
    _snapshot: BillingSnapshot = field(default_factory=BillingSnapshot, init=False)
    _stop: threading.Event = field(default_factory=threading.Event, init=False)
    _thread: threading.Thread | None = field(default=None, init=False)

    def snapshot(self) -> BillingSnapshot:
        return self._snapshot

    def refresh(self) -> BillingSnapshot:
        """One pass (the thread calls it every interval; tests call it directly)."""
        with psycopg.connect(self.database.conninfo, connect_timeout=10) as conn:
            leader = locks.try_transaction_lock(conn, REFRESH_LOCK_ID)
            quotas: tuple[tuple[str, str, float], ...] = ()
            unpriced = None
            if leader:
                now = datetime.now(UTC)
                ratios = BillingService.refresh_month_to_date(conn, now)
                quotas = tuple((account, metric, float(ratio)) for account, metric, ratio in ratios)
                unpriced = BillingService.unpriced_items(conn, now)
            reconciliation = BillingService.latest_reconciliation(conn)
            conn.commit()  # the rewrite, and the lock's release
        self._snapshot = BillingSnapshot(quotas, reconciliation, time.time(), leader, unpriced)
        return self._snapshot

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.refresh()
            except psycopg.OperationalError as exc:  # the database is away: one line, not a traceback
                self.on_error()
                lines = str(exc).strip().splitlines()
                log.warning("the billing refresh failed (%s); the previous values stay", lines[0] if lines else exc)
            except Exception:
                self.on_error()
                log.warning("the billing refresh failed; the previous values stay", exc_info=True)
            self._stop.wait(self.interval_seconds)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="billing-refresh", daemon=True)
        self._thread.start()

    def shutdown(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
