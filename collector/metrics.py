"""Every ``spanmeter_*`` metric, declared once.

Alerts and dashboards refer to these names; the README's metric table mirrors this module. No metric has an
``account_id`` label: per-account figures come from the ledger. ``plan_code`` and ``gpu_model`` values are
capped to configured lists plus ``other``. Label values known at start are initialised to 0 so that rates
and absences behave from the first scrape.

| metric | type | labels | meaning |
|---|---|---|---|
| ``spanmeter_spans_received_total`` | counter | | spans in parsed Export requests |
| ``spanmeter_spans_rejected_total`` | counter | reason | billable spans rejected (kept in ``rejected_spans``) |
| ``spanmeter_spans_billed_total`` | counter | meter | usage rows newly committed to the ledger |
| ``spanmeter_usage_events_duplicate_total`` | counter | meter | usage rows already in the ledger (retries, replays) |
| ``spanmeter_spans_unattributed_total`` | counter | meter | spans of count-only meters without account_id (not stored) |
| ``spanmeter_synthetic_spans_total`` | counter | meter | synthetic usage metered but never billed |
| ``spanmeter_export_requests_total`` | counter | grpc_code | Export responses by gRPC status |
| ``spanmeter_export_throttled_total`` | counter | limit | calls answered UNAVAILABLE for an in-flight bound (``requests``, ``spans``) |
| ``spanmeter_auth_reloads_total`` | counter | outcome | producers-file reloads (``ok``, ``failed``: previous producers kept) |
| ``spanmeter_ledger_write_duration_seconds`` | histogram | | one group commit: stage, insert, commit |
| ``spanmeter_ledger_write_errors_total`` | counter | kind | failed group commits (``database``, ``timeout``) |
| ``spanmeter_pipeline_lag_seconds`` | histogram | | commit time minus span end, per committed row |
| ``spanmeter_ledger_last_commit_timestamp_seconds`` | gauge | | Unix time of the last commit (0 before the first) |
| ``spanmeter_oldest_pending_span_age_seconds`` | gauge | | age of the oldest received, uncommitted request (0 when none) |
| ``spanmeter_ledger_pending_requests`` | gauge | | Export requests waiting for their commit |
| ``spanmeter_billable_worker_seconds_total`` | counter | plan_code | worker seconds newly committed |
| ``spanmeter_billable_gpu_seconds_total`` | counter | plan_code, gpu_model | GPU seconds newly committed |
| ``spanmeter_billable_tokens_total`` | counter | plan_code, direction | tokens newly committed (input, output) |
| ``spanmeter_billable_api_requests_total`` | counter | plan_code | API requests newly committed |
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.process_collector import ProcessCollector

from .processors.meters import METER_CODES
from .processors.usage import REJECT_REASONS

__all__ = ["GRPC_CODES", "CollectorMetrics", "LabelCap"]

GRPC_CODES = (
    "OK",
    "INVALID_ARGUMENT",
    "RESOURCE_EXHAUSTED",
    "UNAVAILABLE",
    "UNAUTHENTICATED",
    "UNIMPLEMENTED",
    "INTERNAL",
)
OTHER = "other"
LAG_BUCKETS_SECONDS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0)
WRITE_BUCKETS_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class LabelCap:
    """Maps free-form values onto a fixed list plus ``other`` (case-insensitive)."""

    def __init__(self, allowed: Iterable[str]) -> None:
        self.values = (*dict.fromkeys(v.lower() for v in allowed), OTHER)
        self._allowed = frozenset(self.values[:-1])

    def __call__(self, value: str | None) -> str:
        if value is None:
            return OTHER
        lowered = value.lower()
        return lowered if lowered in self._allowed else OTHER


class CollectorMetrics:
    def __init__(
        self,
        registry: CollectorRegistry,
        plan_codes: Iterable[str],
        gpu_models: Iterable[str],
        oldest_pending_age_seconds: Callable[[], float] = lambda: 0.0,
        pending_requests: Callable[[], int] = lambda: 0,
    ) -> None:
        disable_created_metrics()  # the *_created series double the exposition for no use here
        self.registry = registry
        self.plan_cap = LabelCap(plan_codes)
        self.gpu_cap = LabelCap(gpu_models)
        r = registry
        self.spans_received = Counter("spanmeter_spans_received", "Spans in parsed Export requests.", registry=r)
        self.spans_rejected = Counter(
            "spanmeter_spans_rejected", "Billable spans rejected, kept in rejected_spans.", ["reason"], registry=r
        )
        self.spans_billed = Counter(
            "spanmeter_spans_billed", "Usage rows newly committed to the ledger.", ["meter"], registry=r
        )
        self.duplicates = Counter(
            "spanmeter_usage_events_duplicate",
            "Usage rows already in the ledger (retries, replays).",
            ["meter"],
            registry=r,
        )
        self.unattributed = Counter(
            "spanmeter_spans_unattributed",
            "Spans of count-only meters without account_id (not stored).",
            ["meter"],
            registry=r,
        )
        self.synthetic = Counter(
            "spanmeter_synthetic_spans", "Synthetic usage rows metered but never billed.", ["meter"], registry=r
        )
        self.export_requests = Counter(
            "spanmeter_export_requests", "Export responses by gRPC status code.", ["grpc_code"], registry=r
        )
        self.overload = Counter(
            "spanmeter_export_throttled",
            "Export calls answered UNAVAILABLE because an in-flight bound was reached.",
            ["limit"],
            registry=r,
        )
        self.auth_reloads = Counter(
            "spanmeter_auth_reloads", "Producers-file reloads by outcome.", ["outcome"], registry=r
        )
        self.ledger_write_duration = Histogram(
            "spanmeter_ledger_write_duration_seconds",
            "Duration of one group commit to the ledger.",
            buckets=WRITE_BUCKETS_SECONDS,
            registry=r,
        )
        self.ledger_write_errors = Counter(
            "spanmeter_ledger_write_errors", "Failed ledger writes.", ["kind"], registry=r
        )
        self.pipeline_lag = Histogram(
            "spanmeter_pipeline_lag_seconds",
            "Ledger commit time minus span end time, per committed row.",
            buckets=LAG_BUCKETS_SECONDS,
            registry=r,
        )
        self.last_commit = Gauge(
            "spanmeter_ledger_last_commit_timestamp_seconds", "Unix time of the last ledger commit.", registry=r
        )
        self.oldest_pending = Gauge(
            "spanmeter_oldest_pending_span_age_seconds",
            "Age of the oldest received request whose spans are not committed yet.",
            registry=r,
        )
        self.oldest_pending.set_function(oldest_pending_age_seconds)
        self.pending_requests = Gauge(
            "spanmeter_ledger_pending_requests", "Export requests waiting for their commit.", registry=r
        )
        self.pending_requests.set_function(pending_requests)
        self.billable_worker_seconds = Counter(
            "spanmeter_billable_worker_seconds", "Billable worker seconds committed.", ["plan_code"], registry=r
        )
        self.billable_gpu_seconds = Counter(
            "spanmeter_billable_gpu_seconds", "Billable GPU seconds committed.", ["plan_code", "gpu_model"], registry=r
        )
        self.billable_tokens = Counter(
            "spanmeter_billable_tokens", "Billable LLM tokens committed.", ["plan_code", "direction"], registry=r
        )
        self.billable_api_requests = Counter(
            "spanmeter_billable_api_requests", "Billable API requests committed.", ["plan_code"], registry=r
        )
        ProcessCollector(registry=r)
        self._initialise_labels()

    def _initialise_labels(self) -> None:
        for reason in REJECT_REASONS:
            self.spans_rejected.labels(reason)
        for meter in METER_CODES:
            self.spans_billed.labels(meter)
            self.duplicates.labels(meter)
            self.unattributed.labels(meter)
            self.synthetic.labels(meter)
        for code in GRPC_CODES:
            self.export_requests.labels(code)
        for kind in ("database", "timeout"):
            self.ledger_write_errors.labels(kind)
        for limit in ("requests", "spans"):
            self.overload.labels(limit)
        for outcome in ("ok", "failed"):
            self.auth_reloads.labels(outcome)
        for plan in self.plan_cap.values:
            self.billable_worker_seconds.labels(plan)
            self.billable_api_requests.labels(plan)
            for direction in ("input", "output"):
                self.billable_tokens.labels(plan, direction)
            for gpu in self.gpu_cap.values:
                self.billable_gpu_seconds.labels(plan, gpu)
