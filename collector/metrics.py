"""Every ``spanmeter_*`` metric, declared once.

Alerts and dashboards refer to these names; the README's metric table mirrors this module. No metric has an
``account_id`` label: per-account figures come from the ledger. ``plan_code`` and ``gpu_model`` values are
capped to configured lists plus ``other``. Label values known at start are initialised to 0 so that rates
and absences behave from the first scrape.

| metric | type | labels | meaning |
|---|---|---|---|
| ``spanmeter_build_info`` | gauge | version, metering | 1; ``metering`` is ``native`` (the Rust core, Python as fallback) or ``python`` |
| ``spanmeter_native_fallbacks_total`` | counter | reason | requests the native core handed to the Python reference (``handed_back``: invalid UTF-8, unusual wire data, limits; ``panic``: a caught bug; ``overflow``, ``producer``) |
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
| ``spanmeter_ledger_write_errors_total`` | counter | kind | failed group commits (``database``: retryable, ``timeout``, ``configuration``: a missing table or refused credentials, retried until fixed) |
| ``spanmeter_pipeline_lag_seconds`` | histogram | | commit time minus span end, per committed row |
| ``spanmeter_ledger_last_commit_timestamp_seconds`` | gauge | | Unix time of the last commit (0 before the first) |
| ``spanmeter_oldest_pending_span_age_seconds`` | gauge | | age of the oldest received, uncommitted request (0 when none) |
| ``spanmeter_ledger_pending_requests`` | gauge | | Export requests waiting for their commit |
| ``spanmeter_rollup_fold_lag_seconds`` | gauge | | age of the oldest rollup delta not folded yet (0 when none; figures stay exact meanwhile) |
| ``spanmeter_rollup_pending_deltas`` | gauge | | rollup deltas not folded yet |
| ``spanmeter_rollup_deltas_folded_total`` | counter | | rollup deltas this process folded into the rollups |
| ``spanmeter_rollup_fold_errors_total`` | counter | | fold attempts that failed (the deltas stay pending, nothing is lost) |
| ``spanmeter_rollup_last_fold_timestamp_seconds`` | gauge | | Unix time this process last folded or found nothing to fold (0 before) |
| ``spanmeter_ledger_partitions_end_timestamp_seconds`` | gauge | | Unix time the newest ``usage_events`` partition ends (serve keeps this month and the next 2 or more) |
| ``spanmeter_ledger_partitions_created_total`` | counter | | monthly partitions this process created |
| ``spanmeter_ledger_partition_errors_total`` | counter | | failed checks or creations of partitions (retried every tick) |
| ``spanmeter_billable_worker_seconds_total`` | counter | plan_code | worker seconds newly committed |
| ``spanmeter_billable_gpu_seconds_total`` | counter | plan_code, gpu_model | GPU seconds newly committed |
| ``spanmeter_billable_tokens_total`` | counter | plan_code, direction | tokens newly committed (input, output) |
| ``spanmeter_billable_api_requests_total`` | counter | plan_code | API requests newly committed |
| ``spanmeter_service_requests_total`` | counter | service, operation, outcome | entry spans (SERVER, CONSUMER) of the instrumented services: the request SLIs (``outcome`` ok, error) |
| ``spanmeter_service_request_duration_seconds`` | histogram | service, operation | their durations |
| ``spanmeter_read_replica_lag_bytes`` | gauge | | WAL the primary wrote that the read replica has not replayed (only with ``SPANMETER_READ_DATABASE_URL``) |
| ``spanmeter_read_replica_replay_delay_seconds`` | gauge | | 0 when the replica has replayed everything, else the age of the last transaction it replayed |
| ``spanmeter_read_replica_replay_paused`` | gauge | | 1 while replay on the replica is paused (``pg_wal_replay_pause()``) |
| ``spanmeter_read_replica_last_measured_timestamp_seconds`` | gauge | | Unix time of the last successful measurement (0 before the first) |
| ``spanmeter_read_replica_measure_errors_total`` | counter | | failed measurements (replica or primary unreachable; the previous values stay) |

The request SLIs (see :mod:`.processors.requests`) have open-ended label values, so they are capped: the
first ``SPANMETER_SLI_MAX_SERIES`` distinct (service, operation) pairs keep their names, later pairs of a
known service are counted as ``operation="_overflow"`` and pairs of services beyond a tenth of that cap as
``service="_overflow", operation="_overflow"``. A non-zero ``_overflow`` series means: raise the cap, or
fix an instrumentation that puts ids in span names.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.process_collector import ProcessCollector

from spanmeter import __version__

from .processors.meters import METER_CODES
from .processors.native import FALLBACK_REASONS, metering_mode
from .processors.usage import REJECT_REASONS

__all__ = ["GRPC_CODES", "OVERFLOW", "CollectorMetrics", "LabelCap", "ReadReplicaMetrics", "RollupMetrics", "SeriesCap"]

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
OVERFLOW = "_overflow"
SLI_DURATION_BUCKETS_SECONDS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
)  # fmt: skip
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


class SeriesCap:
    """Admits the first ``max_pairs`` (service, operation) pairs; maps later ones to ``_overflow``.

    Thread-safe: lookups of known pairs take no lock; only a first sighting does.
    """

    def __init__(self, max_pairs: int) -> None:
        self._max_pairs = max_pairs
        self._max_services = max(1, max_pairs // 10)
        self._pairs: dict[tuple[str, str], tuple[str, str]] = {}
        self._services: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, service: str, operation: str) -> tuple[str, str]:
        found = self._pairs.get((service, operation))
        if found is not None:
            return found
        with self._lock:
            found = self._pairs.get((service, operation))
            if found is not None:
                return found
            if service not in self._services and len(self._services) >= self._max_services:
                return OVERFLOW, OVERFLOW
            self._services.add(service)
            if len(self._pairs) >= self._max_pairs:
                return service, OVERFLOW
            self._pairs[(service, operation)] = (service, operation)
            return service, operation


class RollupMetrics:
    """The rollup compactor's metrics (see :mod:`.compactor`): in the process that folds."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.fold_lag = Gauge(
            "spanmeter_rollup_fold_lag_seconds",
            "Age of the oldest rollup delta not folded into the rollups yet (0 when none).",
            registry=r,
        )
        self.pending_deltas = Gauge(
            "spanmeter_rollup_pending_deltas", "Rollup deltas not folded into the rollups yet.", registry=r
        )
        self.deltas_folded = Counter(
            "spanmeter_rollup_deltas_folded", "Rollup deltas this process folded into the rollups.", registry=r
        )
        self.fold_errors = Counter(
            "spanmeter_rollup_fold_errors", "Failed attempts to fold rollup deltas (they stay pending).", registry=r
        )
        self.last_fold = Gauge(
            "spanmeter_rollup_last_fold_timestamp_seconds",
            "Unix time this process last folded deltas or found none to fold.",
            registry=r,
        )
        # the ledger's monthly partitions (see spanmeter.billing.partitions), kept by the same component
        self.partitions_end = Gauge(
            "spanmeter_ledger_partitions_end_timestamp_seconds",
            "Unix time the newest usage_events partition ends (spans of later months are kept as no_partition).",
            registry=r,
        )
        self.partitions_created = Counter(
            "spanmeter_ledger_partitions_created", "Monthly usage_events partitions this process created.", registry=r
        )
        self.partition_errors = Counter(
            "spanmeter_ledger_partition_errors",
            "Failed attempts to check or create the ledger's monthly partitions.",
            registry=r,
        )


class CollectorMetrics:
    def __init__(
        self,
        registry: CollectorRegistry,
        plan_codes: Iterable[str],
        gpu_models: Iterable[str],
        sli_max_series: int = 500,
        oldest_pending_age_seconds: Callable[[], float] = lambda: 0.0,
        pending_requests: Callable[[], int] = lambda: 0,
        multiprocess: bool = False,
    ) -> None:
        """``multiprocess``: this is one of ``serve --processes N``'s receiver processes, whose samples
        prometheus_client's multiprocess mode merges: counters and histograms add up, and the gauges below
        merge as their ``multiprocess_mode`` says. Gauges computed at scrape time cannot cross processes,
        so there :meth:`sample_gauges` must be called periodically instead."""
        disable_created_metrics()  # the *_created series double the exposition for no use here
        self.registry = registry
        self.plan_cap = LabelCap(plan_codes)
        self.gpu_cap = LabelCap(gpu_models)
        self.sli_cap = SeriesCap(sli_max_series)
        self._sli_pairs: set[tuple[str, str]] = set()
        r = registry
        self.build_info = Gauge(
            "spanmeter_build_info",
            "1; metering is native (the compiled core, Python as fallback) or python.",
            ["version", "metering"],
            registry=r,
            multiprocess_mode="max",
        )
        self.build_info.labels(__version__, metering_mode()).set(1)
        self.native_fallbacks = Counter(
            "spanmeter_native_fallbacks",
            "Export requests the native metering core handed to the Python reference, by reason.",
            ["reason"],
            registry=r,
        )
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
            "spanmeter_ledger_last_commit_timestamp_seconds",
            "Unix time of the last ledger commit.",
            registry=r,
            multiprocess_mode="max",  # the latest commit of any process
        )
        self.oldest_pending = Gauge(
            "spanmeter_oldest_pending_span_age_seconds",
            "Age of the oldest received request whose spans are not committed yet.",
            registry=r,
            multiprocess_mode="livemax",  # the oldest wait in any running process
        )
        self.pending_requests = Gauge(
            "spanmeter_ledger_pending_requests",
            "Export requests waiting for their commit.",
            registry=r,
            multiprocess_mode="livesum",  # all running processes together
        )
        self._gauge_sources = (oldest_pending_age_seconds, pending_requests)
        if not multiprocess:
            self.oldest_pending.set_function(oldest_pending_age_seconds)
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
        self.service_requests = Counter(
            "spanmeter_service_requests",
            "Entry spans (SERVER, CONSUMER) of instrumented services, by outcome: the request SLIs.",
            ["service", "operation", "outcome"],
            registry=r,
        )
        self.service_request_duration = Histogram(
            "spanmeter_service_request_duration_seconds",
            "Duration of entry spans (SERVER, CONSUMER) of instrumented services.",
            ["service", "operation"],
            buckets=SLI_DURATION_BUCKETS_SECONDS,
            registry=r,
        )
        ProcessCollector(registry=r)
        self._initialise_labels()

    def sample_gauges(self) -> None:
        """Multiprocess mode: store the current values of the scrape-time gauges (called every second)."""
        oldest, pending = self._gauge_sources
        self.oldest_pending.set(oldest())
        self.pending_requests.set(pending())

    def observe_service_request(self, service: str, operation: str, outcome: str, duration_seconds: float) -> None:
        """Count one entry span in the request SLIs (labels capped)."""
        pair = self.sli_cap(service, operation)
        if pair not in self._sli_pairs:  # both outcomes from the first request, so rate() sees the first error
            for each in ("ok", "error"):
                self.service_requests.labels(*pair, each)
            self._sli_pairs.add(pair)
        self.service_requests.labels(*pair, outcome).inc()
        self.service_request_duration.labels(*pair).observe(duration_seconds)

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
        for reason in FALLBACK_REASONS:
            self.native_fallbacks.labels(reason)
        for kind in ("database", "timeout", "configuration"):
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


class ReadReplicaMetrics:
    """How far the read replica is behind (see :mod:`.replica_lag`): registered only when
    ``SPANMETER_READ_DATABASE_URL`` is set, in the process that serves ``/metrics``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.lag_bytes = Gauge(
            "spanmeter_read_replica_lag_bytes",
            "WAL the primary wrote that the read replica has not replayed yet (pg_wal_lsn_diff).",
            registry=r,
        )
        self.replay_delay = Gauge(
            "spanmeter_read_replica_replay_delay_seconds",
            "0 when the read replica has replayed all the primary's WAL, else the age of its last replayed transaction.",
            registry=r,
        )
        self.replay_paused = Gauge(
            "spanmeter_read_replica_replay_paused", "1 while replay on the read replica is paused.", registry=r
        )
        self.last_measured = Gauge(
            "spanmeter_read_replica_last_measured_timestamp_seconds",
            "Unix time of the last successful measurement of the read replica's lag (0 before the first).",
            registry=r,
        )
        self.measure_errors = Counter(
            "spanmeter_read_replica_measure_errors",
            "Failed measurements of the read replica's lag (the previous values stay).",
            registry=r,
        )
