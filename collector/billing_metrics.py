"""Billing state as Prometheus metrics: quota burn per account and the reconciliation delta.

``spanmeter serve`` refreshes these every ``SPANMETER_BILLING_METRICS_INTERVAL_SECONDS`` (default 60 s)
from the rollups, the subscriptions and ``reconciliation_runs`` (never from the raw ledger), in its own
thread on its own connection, and serves the last snapshot at every scrape. The same pass rewrites the
``account_month_to_date`` table that the Grafana billing dashboard reads (per-account figures stay out of
Prometheus, but for the bounded quota gauge below):

| metric | type | labels | meaning |
|---|---|---|---|
| ``spanmeter_account_quota_used_ratio`` | gauge | account_id, meter | used / included this month, only accounts ≥ 50% of a quota, at most 200 series (highest first); ``meter="commitment"`` for committed spend |
| ``spanmeter_reconciliation_delta`` | gauge | | delta of the latest ``spanmeter reconcile`` run (absent before the first) |
| ``spanmeter_reconciliation_last_run_timestamp_seconds`` | gauge | | when it ran |
| ``spanmeter_billing_metrics_refresh_timestamp_seconds`` | gauge | | last successful refresh (0 before) |
| ``spanmeter_billing_metrics_refresh_errors_total`` | counter | | failed refreshes (the previous snapshot is kept) |

``spanmeter_account_quota_used_ratio`` is the one metric allowed an ``account_id`` label; the threshold and
the cap keep it bounded whatever the number of accounts.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import psycopg
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from spanmeter import metrics_catalog as M
from spanmeter.billing.ledger.database import Database

from .metrics import gauge_family, metric

__all__ = ["BillingMetrics"]

log = logging.getLogger(__name__)


class BillingMetrics(Collector):
    def __init__(self, database: Database, registry: CollectorRegistry, interval_seconds: float = 60.0) -> None:
        self._database = database
        self._interval = interval_seconds
        self._quotas: list[tuple[str, str, float]] = []
        self._delta: tuple[float, float] | None = None  # (delta, run time)
        self._refreshed_at = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.errors = metric(M.BILLING_METRICS_REFRESH_ERRORS, registry)
        registry.register(self)

    def describe(self) -> list:
        return []  # collected per scrape from the snapshot

    def collect(self) -> Iterator[GaugeMetricFamily]:
        quota = gauge_family(M.ACCOUNT_QUOTA_USED)
        for account, meter, ratio in self._quotas:
            quota.add_metric([account, meter], ratio)
        yield quota
        if self._delta is not None:
            yield gauge_family(M.RECONCILIATION_DELTA, self._delta[0])
            yield gauge_family(M.RECONCILIATION_LAST_RUN, self._delta[1])
        yield gauge_family(M.BILLING_METRICS_REFRESH, self._refreshed_at)

    def refresh(self) -> None:
        from spanmeter.billing.quotas import refresh_month_to_date

        with psycopg.connect(self._database.conninfo, connect_timeout=10) as conn:
            quotas = [(a, m, float(r)) for a, m, r in refresh_month_to_date(conn, datetime.now(UTC))]
            row = conn.execute(
                "SELECT delta, extract(epoch FROM ran_at) FROM reconciliation_runs ORDER BY run_id DESC LIMIT 1"
            ).fetchone()
        self._quotas = quotas
        self._delta = (float(row[0]), float(row[1])) if row else None
        self._refreshed_at = time.time()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.refresh()
            except psycopg.OperationalError as exc:  # the database is away: one line, not a traceback
                self.errors.inc()
                lines = str(exc).strip().splitlines()
                log.warning(
                    "refreshing the billing metrics failed (%s); the previous values stay", lines[0] if lines else exc
                )
            except Exception:
                self.errors.inc()
                log.warning("refreshing the billing metrics failed; the previous values stay", exc_info=True)
            self._stop.wait(self._interval)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="billing-metrics", daemon=True)
        self._thread.start()

    def shutdown(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
