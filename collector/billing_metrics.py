"""Billing state as Prometheus metrics: what serve's billing component (:mod:`spanmeter.billing.component`)
last computed, served at every scrape.

The component refreshes every ``SPANMETER_BILLING_METRICS_INTERVAL_SECONDS`` (default 60 s) from the rollups,
the subscriptions and ``reconciliation_runs`` (never from the raw ledger), one replica at a time (an advisory
lock): the leader rewrites ``account_month_to_date``, which the Grafana billing dashboard reads, and exports
the quota ratios; the others export the reconciliation figures and the refresh time only.

| metric | type | labels | meaning |
|---|---|---|---|
| ``spanmeter_account_quota_used_ratio`` | gauge | account_id, meter | used / included this month, only accounts ≥ 50% of a quota, at most 200 series (highest first), from the leader; ``meter="commitment"`` for committed spend |
| ``spanmeter_reconciliation_delta`` | gauge | | delta of the latest ``spanmeter reconcile`` run (absent before the first) |
| ``spanmeter_reconciliation_last_run_timestamp_seconds`` | gauge | | when it ran |
| ``spanmeter_billing_metrics_refresh_timestamp_seconds`` | gauge | | last successful pass (0 before) |
| ``spanmeter_billing_refresh_leader`` | gauge | | 1 when this replica's last pass refreshed month to date (held the lock), else 0 |
| ``spanmeter_unpriced_usage_items`` | gauge | | (model, meter) pairs of this month's usage no price book version prices, from the leader (absent elsewhere) |
| ``spanmeter_billing_metrics_refresh_errors_total`` | counter | | failed passes (the previous snapshot is kept) |

``spanmeter_account_quota_used_ratio`` is the one metric allowed an ``account_id`` label; the threshold and
the cap keep it bounded whatever the number of accounts.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from spanmeter import metrics_catalog as M
from spanmeter.billing.component import BillingComponent
from spanmeter.billing.ledger.database import Database

from .metrics import gauge_family, metric

__all__ = ["BillingMetrics"]


class BillingMetrics(Collector):
    """Hosts the billing component in serve and exports its snapshot (start/shutdown are the component's)."""

    def __init__(self, database: Database, registry: CollectorRegistry, interval_seconds: float = 60.0) -> None:
        self.errors = metric(M.BILLING_METRICS_REFRESH_ERRORS, registry)
        self.component = BillingComponent(database, interval_seconds, on_error=self.errors.inc)
        registry.register(self)

    def describe(self) -> list[GaugeMetricFamily]:
        return []  # collected per scrape from the snapshot

    def collect(self) -> Iterator[GaugeMetricFamily]:
        snapshot = self.component.snapshot()
        quota = gauge_family(M.ACCOUNT_QUOTA_USED)
        for account, meter, ratio in snapshot.quotas:
            quota.add_metric([account, meter], ratio)
        yield quota
        if snapshot.reconciliation is not None:
            yield gauge_family(M.RECONCILIATION_DELTA, snapshot.reconciliation[0])
            yield gauge_family(M.RECONCILIATION_LAST_RUN, snapshot.reconciliation[1])
        yield gauge_family(M.BILLING_METRICS_REFRESH, snapshot.refreshed_at)
        yield gauge_family(M.BILLING_REFRESH_LEADER, 1.0 if snapshot.leader else 0.0)
        if snapshot.unpriced_items is not None:
            yield gauge_family(M.UNPRICED_USAGE_ITEMS, float(snapshot.unpriced_items))

    def refresh(self) -> None:
        self.component.refresh()

    def start(self) -> None:
        self.component.start()

    def shutdown(self) -> None:
        self.component.shutdown()
