"""Every ``spanmeter_*`` metric, declared once, as data.

One :class:`Metric` per series family: its exposed name (unit suffix and ``_total`` included), type,
base unit, help text, label names, histogram buckets, how ``serve --processes N`` merges it, and which
component exports it. Alerts, dashboards and the README's metrics table use these names; tests hold the
running code, the README and this catalog equal.

The collector builds its prometheus_client objects from these entries (:func:`spanmeter.collector.metrics.metric`)
and so does the instrumentation, inside customers' processes (:mod:`spanmeter.instrumentation.metrics`). So this
module imports the standard library only: no prometheus_client, gRPC, OpenTelemetry or database driver.

``merge`` says what one ``/metrics`` of a ``serve --processes N`` host shows:

- ``sum``: summed over the receiver processes, dead ones included (counters and histograms never go back);
- ``max``: the highest value of any receiver process, dead ones included;
- ``livemax`` / ``livesum``: max / sum over the running receivers (sampled every second);
- ``supervisor``: exported by the supervisor alone (it alone folds, refreshes and measures), not merged;
- ``application``: the instrumentation's, per application process (the application's own registry).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["CATALOG", "MERGES", "TYPES", "Metric", "by_name"]

TYPES = ("counter", "gauge", "histogram")
MERGES = ("sum", "max", "livemax", "livesum", "supervisor", "application")
_GAUGE_MODES = frozenset({"max", "livemax", "livesum"})  # prometheus_client multiprocess_mode values

SLI_DURATION_BUCKETS_SECONDS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
)  # fmt: skip
LAG_BUCKETS_SECONDS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0)
WRITE_BUCKETS_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass(frozen=True)
class Metric:
    name: str  # as exposed: spanmeter_…, with the unit suffix, and _total for a counter
    type: str  # one of TYPES
    help: str  # the exposition's HELP line
    labels: tuple[str, ...] = ()
    unit: str = ""  # the base unit the name ends with ("seconds", "bytes", "ratio"); "" for a count
    buckets: tuple[float, ...] | None = None  # histograms only
    merge: str = "sum"  # one of MERGES
    component: str = "collector"  # collector, rollup, replica, billing, webhooks, instrumentation

    def __post_init__(self) -> None:
        problems = []
        if not self.name.startswith("spanmeter_"):
            problems.append("the name must start with spanmeter_")
        if self.type not in TYPES:
            problems.append(f"type must be one of {TYPES}")
        if (self.type == "counter") != self.name.endswith("_total"):
            problems.append("a counter's name, and only a counter's, ends with _total")
        if self.unit and not self.base_name.endswith("_" + self.unit):
            problems.append(f"the name must end with its unit {self.unit!r}")
        if (self.buckets is not None) != (self.type == "histogram"):
            problems.append("buckets go with histograms, and only with them")
        if self.merge not in MERGES:
            problems.append(f"merge must be one of {MERGES}")
        if problems:
            raise ValueError(f"{self.name}: " + "; ".join(problems))

    @property
    def base_name(self) -> str:
        """The name without ``_total``: what prometheus_client's ``Counter`` takes."""
        return self.name.removesuffix("_total") if self.type == "counter" else self.name

    def prometheus_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of the prometheus_client class named by :attr:`type` (registry aside)."""
        kwargs: dict[str, Any] = {"name": self.base_name, "documentation": self.help, "labelnames": self.labels}
        if self.buckets is not None:
            kwargs["buckets"] = self.buckets
        if self.type == "gauge" and self.merge in _GAUGE_MODES:
            kwargs["multiprocess_mode"] = self.merge
        return kwargs


# --- the receivers (collector/metrics.py: CollectorMetrics) ---
BUILD_INFO = Metric(
    "spanmeter_build_info",
    "gauge",
    "1; metering is native (the compiled core, Python as fallback) or python.",
    ("version", "metering"),
    merge="max",
)
NATIVE_FALLBACKS = Metric(
    "spanmeter_native_fallbacks_total",
    "counter",
    "Export requests the native metering core handed to the Python reference, by reason.",
    ("reason",),
)
SPANS_RECEIVED = Metric("spanmeter_spans_received_total", "counter", "Spans in parsed Export requests.")
SPANS_REJECTED = Metric(
    "spanmeter_spans_rejected_total", "counter", "Billable spans rejected, kept in rejected_spans.", ("reason",)
)
SPANS_BILLED = Metric(
    "spanmeter_spans_billed_total", "counter", "Usage rows newly committed to the ledger.", ("meter",)
)
USAGE_EVENTS_DUPLICATE = Metric(
    "spanmeter_usage_events_duplicate_total",
    "counter",
    "Usage rows already in the ledger (retries, replays).",
    ("meter",),
)
SPANS_UNATTRIBUTED = Metric(
    "spanmeter_spans_unattributed_total",
    "counter",
    "Spans of count-only meters without account_id (not stored).",
    ("meter",),
)
SYNTHETIC_SPANS = Metric(
    "spanmeter_synthetic_spans_total", "counter", "Synthetic usage rows metered but never billed.", ("meter",)
)
EXPORT_REQUESTS = Metric(
    "spanmeter_export_requests_total", "counter", "Export responses by gRPC status code.", ("grpc_code",)
)
EXPORT_THROTTLED = Metric(
    "spanmeter_export_throttled_total",
    "counter",
    "Export calls answered UNAVAILABLE because an in-flight bound was reached.",
    ("limit",),
)
AUTH_RELOADS = Metric("spanmeter_auth_reloads_total", "counter", "Producers-file reloads by outcome.", ("outcome",))
LEDGER_WRITE_DURATION = Metric(
    "spanmeter_ledger_write_duration_seconds",
    "histogram",
    "Duration of one group commit to the ledger.",
    unit="seconds",
    buckets=WRITE_BUCKETS_SECONDS,
)
LEDGER_WRITE_ERRORS = Metric("spanmeter_ledger_write_errors_total", "counter", "Failed ledger writes.", ("kind",))
PIPELINE_LAG = Metric(
    "spanmeter_pipeline_lag_seconds",
    "histogram",
    "Ledger commit time minus span end time, per committed row.",
    unit="seconds",
    buckets=LAG_BUCKETS_SECONDS,
)
LEDGER_LAST_COMMIT = Metric(
    "spanmeter_ledger_last_commit_timestamp_seconds",
    "gauge",
    "Unix time of the last ledger commit.",
    unit="seconds",
    merge="max",  # the latest commit of any process
)
OLDEST_PENDING_SPAN_AGE = Metric(
    "spanmeter_oldest_pending_span_age_seconds",
    "gauge",
    "Age of the oldest received request whose spans are not committed yet.",
    unit="seconds",
    merge="livemax",  # the oldest wait in any running process
)
LEDGER_PENDING_REQUESTS = Metric(
    "spanmeter_ledger_pending_requests",
    "gauge",
    "Export requests waiting for their commit.",
    merge="livesum",  # all running processes together
)
BILLABLE_WORKER_SECONDS = Metric(
    "spanmeter_billable_worker_seconds_total", "counter", "Billable worker seconds committed.", ("plan_code",)
)
BILLABLE_GPU_SECONDS = Metric(
    "spanmeter_billable_gpu_seconds_total",
    "counter",
    "Billable GPU seconds committed.",
    ("plan_code", "gpu_model"),
)
BILLABLE_TOKENS = Metric(
    "spanmeter_billable_tokens_total", "counter", "Billable LLM tokens committed.", ("plan_code", "direction")
)
BILLABLE_TOKEN_SUBSETS = Metric(
    "spanmeter_billable_token_subsets_total",
    "counter",
    "Cache-read, cache-write and reasoning tokens committed: already inside spanmeter_billable_tokens_total "
    "(never add the two), metered apart so price books can price them.",
    ("plan_code", "kind"),
)
BILLABLE_API_REQUESTS = Metric(
    "spanmeter_billable_api_requests_total", "counter", "Billable API requests committed.", ("plan_code",)
)
SERVICE_REQUESTS = Metric(
    "spanmeter_service_requests_total",
    "counter",
    "Entry spans (SERVER, CONSUMER) of instrumented services, by outcome: the request SLIs.",
    ("service", "operation", "outcome"),
)
SERVICE_REQUEST_DURATION = Metric(
    "spanmeter_service_request_duration_seconds",
    "histogram",
    "Duration of entry spans (SERVER, CONSUMER) of instrumented services.",
    ("service", "operation"),
    unit="seconds",
    buckets=SLI_DURATION_BUCKETS_SECONDS,
)

# --- the rollup compactor and the ledger's partitions (collector/metrics.py: RollupMetrics) ---
ROLLUP_FOLD_LAG = Metric(
    "spanmeter_rollup_fold_lag_seconds",
    "gauge",
    "Age of the oldest rollup delta not folded into the rollups yet (0 when none).",
    unit="seconds",
    merge="supervisor",
    component="rollup",
)
ROLLUP_PENDING_DELTAS = Metric(
    "spanmeter_rollup_pending_deltas",
    "gauge",
    "Rollup deltas not folded into the rollups yet.",
    merge="supervisor",
    component="rollup",
)
ROLLUP_DELTAS_FOLDED = Metric(
    "spanmeter_rollup_deltas_folded_total",
    "counter",
    "Rollup deltas this process folded into the rollups.",
    merge="supervisor",
    component="rollup",
)
ROLLUP_FOLD_ERRORS = Metric(
    "spanmeter_rollup_fold_errors_total",
    "counter",
    "Failed attempts to fold rollup deltas (they stay pending).",
    merge="supervisor",
    component="rollup",
)
ROLLUP_LAST_FOLD = Metric(
    "spanmeter_rollup_last_fold_timestamp_seconds",
    "gauge",
    "Unix time this process last folded deltas or found none to fold.",
    unit="seconds",
    merge="supervisor",
    component="rollup",
)
LEDGER_PARTITIONS_END = Metric(
    "spanmeter_ledger_partitions_end_timestamp_seconds",
    "gauge",
    "Unix time the newest usage_events partition ends (spans of later months are kept as no_partition).",
    unit="seconds",
    merge="supervisor",
    component="rollup",
)
LEDGER_PARTITIONS_CREATED = Metric(
    "spanmeter_ledger_partitions_created_total",
    "counter",
    "Monthly usage_events partitions this process created.",
    merge="supervisor",
    component="rollup",
)
LEDGER_PARTITION_ERRORS = Metric(
    "spanmeter_ledger_partition_errors_total",
    "counter",
    "Failed attempts to check or create the ledger's monthly partitions.",
    merge="supervisor",
    component="rollup",
)

# --- the read replica's lag (collector/metrics.py: ReadReplicaMetrics) ---
READ_REPLICA_LAG = Metric(
    "spanmeter_read_replica_lag_bytes",
    "gauge",
    "WAL the primary wrote that the read replica has not replayed yet (pg_wal_lsn_diff).",
    unit="bytes",
    merge="supervisor",
    component="replica",
)
READ_REPLICA_REPLAY_DELAY = Metric(
    "spanmeter_read_replica_replay_delay_seconds",
    "gauge",
    "0 when the read replica has replayed all the primary's WAL, else the age of its last replayed transaction.",
    unit="seconds",
    merge="supervisor",
    component="replica",
)
READ_REPLICA_REPLAY_PAUSED = Metric(
    "spanmeter_read_replica_replay_paused",
    "gauge",
    "1 while replay on the read replica is paused.",
    merge="supervisor",
    component="replica",
)
READ_REPLICA_LAST_MEASURED = Metric(
    "spanmeter_read_replica_last_measured_timestamp_seconds",
    "gauge",
    "Unix time of the last successful measurement of the read replica's lag (0 before the first).",
    unit="seconds",
    merge="supervisor",
    component="replica",
)
READ_REPLICA_MEASURE_ERRORS = Metric(
    "spanmeter_read_replica_measure_errors_total",
    "counter",
    "Failed measurements of the read replica's lag (the previous values stay).",
    merge="supervisor",
    component="replica",
)

# --- billing state (collector/billing_metrics.py: a collector serving the last refresh's snapshot) ---
ACCOUNT_QUOTA_USED = Metric(
    "spanmeter_account_quota_used_ratio",
    "gauge",
    "Used over included this month, for accounts at or above 50% of a quota (at most 200 series).",
    ("account_id", "meter"),
    unit="ratio",
    merge="supervisor",
    component="billing",
)
RECONCILIATION_DELTA = Metric(
    "spanmeter_reconciliation_delta",
    "gauge",
    "Delta of the latest reconciliation run.",
    merge="supervisor",
    component="billing",
)
RECONCILIATION_LAST_RUN = Metric(
    "spanmeter_reconciliation_last_run_timestamp_seconds",
    "gauge",
    "Unix time of the latest reconciliation run.",
    unit="seconds",
    merge="supervisor",
    component="billing",
)
BILLING_METRICS_REFRESH = Metric(
    "spanmeter_billing_metrics_refresh_timestamp_seconds",
    "gauge",
    "Unix time of the last successful billing metrics refresh.",
    unit="seconds",
    merge="supervisor",
    component="billing",
)
BILLING_REFRESH_LEADER = Metric(
    "spanmeter_billing_refresh_leader",
    "gauge",
    "1 when this replica's last billing pass refreshed month to date (it held the lock), else 0.",
    merge="supervisor",
    component="billing",
)
UNPRICED_USAGE_ITEMS = Metric(
    "spanmeter_unpriced_usage_items",
    "gauge",
    "(Model, meter) pairs of this month's usage that no price book version prices (leader only).",
    merge="supervisor",
    component="billing",
)
BILLING_METRICS_REFRESH_ERRORS = Metric(
    "spanmeter_billing_metrics_refresh_errors_total",
    "counter",
    "Failed refreshes of the billing metrics.",
    merge="supervisor",
    component="billing",
)

# --- webhook delivery (collector/webhooks.py: WebhookDispatcher, in the process that runs serve's components) ---
WEBHOOK_DELIVERIES = Metric(
    "spanmeter_webhook_deliveries_total",
    "counter",
    "Webhook delivery attempts by outcome: delivered (2xx), retried (to be tried again), failed (gave up).",
    ("outcome",),
    merge="supervisor",
    component="webhooks",
)
WEBHOOK_PENDING = Metric(
    "spanmeter_webhook_pending_deliveries",
    "gauge",
    "Webhook deliveries not delivered yet and still to be tried.",
    merge="supervisor",
    component="webhooks",
)
WEBHOOK_OLDEST_PENDING_AGE = Metric(
    "spanmeter_webhook_oldest_pending_age_seconds",
    "gauge",
    "Age of the oldest pending webhook delivery since its event was enqueued (0 when none).",
    unit="seconds",
    merge="supervisor",
    component="webhooks",
)
WEBHOOK_DISPATCH_ERRORS = Metric(
    "spanmeter_webhook_dispatch_errors_total",
    "counter",
    "Failed webhook dispatch passes (database errors; the deliveries stay pending).",
    merge="supervisor",
    component="webhooks",
)

# --- the instrumentation, in the application's default registry (instrumentation/metrics.py) ---
SDK_SPANS_EXPORTED = Metric(
    "spanmeter_sdk_spans_exported_total",
    "counter",
    "Spans this process exported and the receiver acknowledged.",
    merge="application",
    component="instrumentation",
)
SDK_SPANS_DROPPED = Metric(
    "spanmeter_sdk_spans_dropped_total",
    "counter",
    "Spans this process lost before the receiver acknowledged them, by reason.",
    ("reason",),
    merge="application",
    component="instrumentation",
)
SDK_DEGRADED = Metric(
    "spanmeter_sdk_degraded",
    "gauge",
    "1 when spanmeter could not hook into this opentelemetry-sdk version and fell back to plain export.",
    ("hook",),
    merge="application",
    component="instrumentation",
)

CATALOG: tuple[Metric, ...] = tuple(value for value in list(globals().values()) if isinstance(value, Metric))
_BY_NAME = {m.name: m for m in CATALOG}
if len(_BY_NAME) != len(CATALOG):
    raise ValueError("two catalog entries share a name")


def by_name(name: str) -> Metric:
    """The entry exposed as ``name`` (``KeyError`` when the catalog has none)."""
    return _BY_NAME[name]
