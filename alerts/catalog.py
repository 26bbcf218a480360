"""The hand-written alerts: pipeline health and billing state, each a symptom someone must act on.

Every alert follows the monitoring-mixin style: a CamelCase name with the ``Spanmeter`` prefix, a
``severity`` label (``critical`` pages, ``warning`` opens a ticket, ``info`` is not routed), a ``for``, a
static ``summary`` sentence, a ``description`` templated with ``$labels``/``$value``, a ``runbook_url``
derived from the name (``alerts/runbooks/<AlertName>.md``) and a ``dashboard_url``.

| alert | severity | fires when |
|---|---|---|
| ``SpanmeterLedgerStalled`` | critical | nothing committed for ``stall_seconds`` while requests wait that long or writes fail (a hung or an unreachable database) |
| ``SpanmeterPipelineLagHigh`` | warning | p99 of span end → ledger commit over 30 s for 15 min |
| ``SpanmeterRollupFoldLagging`` | warning | the oldest pending rollup delta is over 2 min old for 10 min (folding stopped or too slow) |
| ``SpanmeterLedgerWriteErrors`` | warning | group commits failing (database errors, timeouts) for 5 min |
| ``SpanmeterSpansRejected`` | warning | billable spans rejected into ``rejected_spans`` in the last hour |
| ``SpanmeterUsageKeyConflict`` | critical | a span arrived with the key of usage already billed with other content (a squat, or a producer bug) |
| ``SpanmeterSpansWithoutPartition`` | critical | billable spans kept as ``no_partition`` / ``archived_period``: their month has no ledger partition |
| ``SpanmeterLedgerPartitionsRunningOut`` | warning | the newest ledger partition ends in under 45 days for 1 h (serve keeps 59+ days ahead) |
| ``SpanmeterSpansUnattributed`` | warning | over 5 % of a count-only meter's spans carry no ``account_id`` |
| ``SpanmeterUnauthorizedProducer`` | warning | Export calls without valid credentials, or producers sending what they may not |
| ``SpanmeterDuplicateRateHigh`` | warning | over 20 % of usage rows received are already in the ledger (retry storm, replay loop) |
| ``SpanmeterCollectorDown`` | critical | no ``spanmeter`` scrape target is up |
| ``SpanmeterReconciliationDelta`` | warning | the latest ``spanmeter reconcile`` found rollups ≠ ledger |
| ``SpanmeterUnpricedUsage`` | warning | this month has usage of a model or GPU model no price book version prices (its invoice cannot be finalized) |
| ``SpanmeterBillingMetricsStale`` | warning | quota and reconciliation gauges not refreshed for 10 min (then ``for`` 5 min) |
| ``SpanmeterAccountQuotaHigh`` | warning | an account used 75 % of an included quota (or commitment) this month |
| ``SpanmeterAccountQuotaExhausted`` | critical | an account used all of it |
| ``SpanmeterReadReplicaLagging`` | warning | the read replica (``SPANMETER_READ_DATABASE_URL``) is over 5 min behind, or its lag unmeasured that long, for 10 min |
| ``SpanmeterWebhookDeliveryFailed`` | warning | a webhook delivery was given up after its last attempt in the last hour (the receiver never took the event) |
| ``SpanmeterWebhookDeliveriesStuck`` | warning | a webhook delivery has been pending for over an hour, for 15 min (a receiver down or refusing; retries go on) |

The SLO burn-rate family ``SpanmeterErrorBudgetBurn`` is generated from ``alerts/slos.yaml`` (see :mod:`.slo`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .slo import Profile

__all__ = ["ALERT_GROUPS", "Alert", "alert_names", "rule_groups"]

PIPELINE = "spanmeter-pipeline"
SLOS = "spanmeter-slos"
BILLING = "spanmeter-billing"
# "included worker_seconds", or "committed spend" for the commitment pseudo-meter
_ALLOWANCE = '{{ if eq $labels.meter "commitment" }}committed spend{{ else }}included {{ $labels.meter }}{{ end }}'


@dataclass(frozen=True)
class Alert:
    name: str
    expr: str
    for_: str
    severity: str
    summary: str
    description: str
    dashboard: str  # dashboard uid
    labels: dict[str, str] = field(default_factory=dict)

    def rule(self, profile: Profile) -> dict[str, Any]:
        return {
            "alert": self.name,
            "expr": self.expr.strip(),
            "for": profile.for_(self.for_),
            "labels": {"severity": self.severity, **self.labels},
            "annotations": {
                "summary": self.summary,
                "description": self.description,
                "runbook_url": f"{profile.runbook_base_url}/{self.name}.md",
                "dashboard_url": f"{profile.grafana_url}/d/{self.dashboard}",
            },
        }


def _pipeline(profile: Profile) -> list[Alert]:
    job = f'job="{profile.job}"'
    stall = profile.stall_seconds
    return [
        Alert(
            "SpanmeterLedgerStalled",
            f"""
time() - spanmeter_ledger_last_commit_timestamp_seconds{{{job}}} > {stall}
and on (job, instance)
(
  spanmeter_oldest_pending_span_age_seconds{{{job}}} > {stall}
  or
  sum by (job, instance) (increase(spanmeter_ledger_write_errors_total{{{job}}}[5m])) > 0
)
""",
            "2m",
            "critical",
            "The usage ledger has stopped committing while spans are waiting.",
            "{{ $labels.instance }} has committed nothing for {{ $value | humanizeDuration }} while Export "
            f"requests wait (over {stall}s) or ledger writes fail. Exporters are answered UNAVAILABLE and are "
            "queueing (or dropping, if their queue is full) billable spans.",
            PIPELINE,
        ),
        Alert(
            "SpanmeterPipelineLagHigh",
            f"""
histogram_quantile(0.99, sum by (job, le) (rate(spanmeter_pipeline_lag_seconds_bucket{{{job}}}[10m]))) > 30
""",
            "15m",
            "warning",
            "Usage reaches the ledger late.",
            "The 99th percentile from span end to ledger commit is {{ $value | humanizeDuration }} "
            "(threshold 30s): exporters are queueing or retrying, or producers flush late.",
            PIPELINE,
        ),
        Alert(
            "SpanmeterRollupFoldLagging",
            f"max by (job) (spanmeter_rollup_fold_lag_seconds{{{job}}}) > 120",
            "10m",
            "warning",
            "Rollup deltas are not being folded.",
            "The oldest pending rollup delta has waited {{ $value | humanizeDuration }} (threshold 2m). Figures "
            "stay exact (readers add pending deltas), but month-to-date, invoice and dashboard queries slow "
            "down as the backlog grows.",
            PIPELINE,
        ),
        Alert(
            "SpanmeterLedgerWriteErrors",
            f"sum by (job, instance, kind) (rate(spanmeter_ledger_write_errors_total{{{job}}}[5m])) > 0",
            "5m",
            "warning",
            "Ledger writes are failing.",
            '{{ $labels.instance }} fails {{ printf "%.2f" $value }} group commits per second ({{ $labels.kind }}). '
            "The affected Export calls are answered UNAVAILABLE and retried by the exporters.",
            PIPELINE,
        ),
        Alert(
            "SpanmeterSpansRejected",
            f"""
sum by (job, reason) (
  increase(spanmeter_spans_rejected_total{{{job},reason!~"unauthorized_producer|key_conflict|no_partition|archived_period"}}[1h])
) > 0
""",
            "5m",
            "warning",
            "Billable spans are being rejected into the dead-letter table.",
            "{{ $value | humanize }} billable spans were rejected in the last hour for {{ $labels.reason }}. "
            "They are kept in rejected_spans, not billed, until fixed and replayed.",
            PIPELINE,
        ),
        Alert(
            "SpanmeterUsageKeyConflict",
            f'sum by (job) (increase(spanmeter_spans_rejected_total{{{job},reason="key_conflict"}}[1h])) > 0',
            "0m",
            "critical",
            "Usage arrived with a key the ledger already holds with other content.",
            "{{ $value | humanize }} spans in the last hour carried the idempotency key of usage already billed "
            "with another account, job, plan or quantity: a producer re-sending another's span ids, or a "
            "producer bug. They are kept as key_conflict in rejected_spans, not billed; someone must decide.",
            PIPELINE,
        ),
        Alert(
            "SpanmeterSpansWithoutPartition",
            f"""
sum by (job, reason) (
  increase(spanmeter_spans_rejected_total{{{job},reason=~"no_partition|archived_period"}}[1h])
) > 0
""",
            "0m",
            "critical",
            "Billable spans ended in a month the ledger has no partition for.",
            "{{ $value | humanize }} billable spans in the last hour were kept as {{ $labels.reason }} in "
            "rejected_spans, not billed: their month has no usage_events partition (never created, or archived).",
            PIPELINE,
        ),
        Alert(
            "SpanmeterLedgerPartitionsRunningOut",
            f"min by (job) (spanmeter_ledger_partitions_end_timestamp_seconds{{{job}}}) - time() < 45 * 86400",
            "1h",
            "warning",
            "The ledger's monthly partitions are not being created ahead.",
            "The newest usage_events partition ends in {{ $value | humanizeDuration }}; serve keeps the current "
            "month and the next two (59 days or more). Spans of a month without a partition are kept as "
            "no_partition, not billed.",
            PIPELINE,
        ),
        Alert(
            "SpanmeterSpansUnattributed",
            f"""
sum by (job, meter) (rate(spanmeter_spans_unattributed_total{{{job}}}[30m]))
/
(
  sum by (job, meter) (rate(spanmeter_spans_unattributed_total{{{job}}}[30m]))
  + sum by (job, meter) (rate(spanmeter_spans_billed_total{{{job}}}[30m]))
) > 0.05
""",
            "30m",
            "warning",
            "Usage arrives without an account and cannot be billed.",
            "{{ $value | humanizePercentage }} of {{ $labels.meter }} spans carry no account_id: they are counted, "
            "not stored, and nobody can be billed for them.",
            PIPELINE,
        ),
        Alert(
            "SpanmeterUnauthorizedProducer",
            f"""
sum by (job) (increase(spanmeter_export_requests_total{{{job},grpc_code="UNAUTHENTICATED"}}[10m])) > 0
or
sum by (job) (increase(spanmeter_spans_rejected_total{{{job},reason="unauthorized_producer"}}[10m])) > 0
""",
            "1m",
            "warning",
            "Something is sending spans it may not send.",
            "{{ $value | humanize }} Export calls without valid credentials, or spans of services or meters "
            "outside a producer's allow-list, in the last 10 minutes.",
            PIPELINE,
        ),
        Alert(
            "SpanmeterDuplicateRateHigh",
            f"""
sum by (job) (rate(spanmeter_usage_events_duplicate_total{{{job}}}[30m]))
/
(
  sum by (job) (rate(spanmeter_usage_events_duplicate_total{{{job}}}[30m]))
  + sum by (job) (rate(spanmeter_spans_billed_total{{{job}}}[30m]))
) > 0.2
and
(
  sum by (job) (rate(spanmeter_usage_events_duplicate_total{{{job}}}[30m]))
  + sum by (job) (rate(spanmeter_spans_billed_total{{{job}}}[30m]))
) > 0.05
""",
            "30m",
            "warning",
            "Many usage rows arrive twice.",
            "{{ $value | humanizePercentage }} of usage rows received in 30 minutes were already in the ledger. "
            "Nothing is billed twice, but exporters re-sending acknowledged batches (timeouts shorter than the "
            "commit, a retry storm, a producer re-sending) are costing capacity.",
            PIPELINE,
        ),
        Alert(
            "SpanmeterCollectorDown",
            f"sum by (job) (up{{{job}}}) == 0\nor\nabsent(up{{{job}}})",
            "5m",
            "critical",
            "No spanmeter collector is up.",
            "Prometheus has scraped no healthy target of job {{ $labels.job }} for 5 minutes: nothing is "
            "metered, and exporters queue (or drop) spans.",
            PIPELINE,
        ),
    ]


def _billing(profile: Profile) -> list[Alert]:
    job = f'job="{profile.job}"'
    return [
        Alert(
            "SpanmeterReconciliationDelta",
            f"max by (job) (abs(spanmeter_reconciliation_delta{{{job}}})) > 0",
            "1m",
            "warning",
            "The latest reconciliation found a difference.",
            "The latest `spanmeter reconcile` found a total absolute difference of {{ $value | humanize }} "
            "(quantities summed across meters: only zero or not-zero means anything) between the raw ledger, "
            "the rollups invoices read, and finalized invoices, or usage with no subscription. Do not finalize "
            "invoices until it is 0.",
            BILLING,
        ),
        Alert(
            "SpanmeterUnpricedUsage",
            f"max by (job) (spanmeter_unpriced_usage_items{{{job}}}) > 0",
            "30m",
            "warning",
            "Usage of a model no price book prices.",
            "{{ $value | humanize }} (model, meter) pair(s) of this month's usage match no entry of their price "
            "book (no exact name, pattern or default): they are listed on the draft invoices, never billed at zero, "
            "and those invoices cannot be finalized until a book version prices them. `spanmeter prices unpriced "
            "--period <this month>` names them.",
            BILLING,
        ),
        Alert(
            "SpanmeterBillingMetricsStale",
            f"time() - max by (job) (spanmeter_billing_metrics_refresh_timestamp_seconds{{{job}}}) "
            f"> {profile.billing_stale_seconds}",
            "5m",
            "warning",
            "Quota and reconciliation metrics are not being refreshed.",
            "The billing metrics were last refreshed {{ $value | humanizeDuration }} ago: quota alerts and the "
            "reconciliation delta are blind, and the billing dashboard's month to date is stale.",
            BILLING,
        ),
        Alert(
            "SpanmeterAccountQuotaHigh",
            "max by (account_id, meter) (spanmeter_account_quota_used_ratio) >= 0.75 < 1",
            "5m",
            "warning",
            "An account has used 75% of an included quota this month.",
            "Account {{ $labels.account_id }} has used {{ $value | humanizePercentage }} of its "
            f"{_ALLOWANCE} this month; overage pricing starts at 100%.",
            BILLING,
        ),
        Alert(
            "SpanmeterAccountQuotaExhausted",
            "max by (account_id, meter) (spanmeter_account_quota_used_ratio) >= 1",
            "1m",
            "critical",
            "An account has used all of an included quota this month.",
            "Account {{ $labels.account_id }} has used {{ $value | humanizePercentage }} of its "
            f"{_ALLOWANCE}: further usage is billed as overage.",
            BILLING,
        ),
        Alert(
            "SpanmeterReadReplicaLagging",
            f"""
max by (job) (spanmeter_read_replica_replay_delay_seconds{{{job}}}) > 300
or
max by (job) (time() - spanmeter_read_replica_last_measured_timestamp_seconds{{{job}}}) > 300
""",
            "10m",
            "warning",
            "Reads of the ledger's read replica are more than 5 minutes behind the primary.",
            "The read replica is {{ $value | humanizeDuration }} behind the primary, or its lag has not been "
            "measured for that long (replica or primary unreachable from serve). Usage, invoice drafts, exports "
            "and the Grafana ledger datasource read it and miss the newest usage; finalized invoices read the "
            "primary and are not affected.",
            BILLING,
        ),
        Alert(
            "SpanmeterWebhookDeliveryFailed",
            f'sum by (job) (increase(spanmeter_webhook_deliveries_total{{{job},outcome="failed"}}[1h])) > 0',
            "1m",
            "warning",
            "A webhook delivery was given up after its last attempt.",
            "{{ $value | humanize }} webhook deliveries were given up in the last hour after their last attempt "
            "(every retry failed for up to 3 days): the receivers never took those events. `spanmeter webhooks "
            "deliveries --status failed` lists them with every attempt.",
            BILLING,
        ),
        Alert(
            "SpanmeterWebhookDeliveriesStuck",
            f"max by (job) (spanmeter_webhook_oldest_pending_age_seconds{{{job}}}) > 3600",
            "15m",
            "warning",
            "A webhook delivery has been pending for over an hour.",
            "The oldest pending webhook delivery was enqueued {{ $value | humanizeDuration }} ago: a receiver is "
            "down or refusing (retries go on, hourly, for up to 3 days), or no dispatcher runs. `spanmeter webhooks "
            "deliveries --status pending` shows the last status or error of each.",
            BILLING,
        ),
    ]


ALERT_GROUPS = {"spanmeter-pipeline-alerts": _pipeline, "spanmeter-billing-alerts": _billing}


def rule_groups(profile: Profile) -> list[dict[str, Any]]:
    return [
        {"name": name, "rules": [alert.rule(profile) for alert in build(profile)]}
        for name, build in ALERT_GROUPS.items()
    ]


def alert_names(profile: Profile | None = None) -> list[str]:
    profile = profile or Profile("production")
    return sorted({a.name for build in ALERT_GROUPS.values() for a in build(profile)} | {"SpanmeterErrorBudgetBurn"})
