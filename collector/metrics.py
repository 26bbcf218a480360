"""The collector's ``spanmeter_*`` metrics, built from :mod:`spanmeter.metrics_catalog` (where every metric is
declared, as data, with its merge across ``serve --processes N``; the README's metrics table mirrors it).

No metric has an ``account_id`` label (the billing quota gauge aside): per-account figures come from the
ledger. ``plan_code`` and ``gpu_model`` values are capped to configured lists plus ``other``. Label values
known at start are initialised to 0 so that rates and absences behave from the first scrape.

The request SLIs (see :mod:`.processors.requests`) have open-ended label values, so they are capped: the
first ``SPANMETER_SLI_MAX_SERIES`` distinct (service, operation) pairs keep their names, later pairs of a
known service are counted as ``operation="_overflow"`` and pairs of services beyond a tenth of that cap as
``service="_overflow", operation="_overflow"``. A non-zero ``_overflow`` series means: raise the cap, or
fix an instrumentation that puts ids in span names.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections import Counter as _Tally
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.process_collector import ProcessCollector

from spanmeter import __version__
from spanmeter import metrics_catalog as M
from spanmeter.metrics_catalog import LAG_BUCKETS_SECONDS, SLI_DURATION_BUCKETS_SECONDS, WRITE_BUCKETS_SECONDS

from .processors.meters import METER_CODES
from .processors.native import FALLBACK_REASONS, metering_mode
from .processors.usage import REJECT_REASONS

__all__ = [
    "GRPC_CODES",
    "LAG_BUCKETS_SECONDS",
    "OVERFLOW",
    "SLI_DURATION_BUCKETS_SECONDS",
    "WRITE_BUCKETS_SECONDS",
    "CollectorMetrics",
    "LabelCap",
    "ReadReplicaMetrics",
    "RollupMetrics",
    "SeriesCap",
    "gauge_family",
    "metric",
    "observe_many",
]

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
_CLASSES = {"counter": Counter, "gauge": Gauge, "histogram": Histogram}


def observe_many(histogram: Any, amounts: Sequence[float]) -> None:
    """``histogram.observe(a)`` for every ``a`` of ``amounts``, in one pass per bucket (a batch holding a NaN
    is observed one amount at a time, so it is counted as ``observe`` counts it).

    ``Histogram.observe`` walks the bucket bounds in Python for each observation; the receiver observes
    every committed row's lag and every entry span's duration, so that walk was a tenth of its per-span
    CPU. This counts the amounts per bucket with ``bisect`` (C) and increments each bucket and the sum once:
    the same exposition (the tests compare both ways). It reads the histogram child's ``_upper_bounds``,
    ``_buckets`` and ``_sum``, laid out so in every prometheus_client this project admits; a histogram
    laid out otherwise is observed one amount at a time."""
    if not amounts:
        return
    bounds = getattr(histogram, "_upper_bounds", None)
    buckets = getattr(histogram, "_buckets", None)
    total = getattr(histogram, "_sum", None)
    amount_sum = sum(amounts)
    if (
        bounds is None
        or buckets is None
        or total is None
        or len(bounds) != len(buckets)
        or not bounds
        or amount_sum != amount_sum  # a NaN among them: observe() counts it in no bucket, bisect in the first
    ):
        for amount in amounts:
            histogram.observe(amount)
        return
    histogram._raise_if_not_observable()
    total.inc(amount_sum)
    # an amount belongs to the first bucket whose bound is >= it (observe's ``amount <= bound``); the last
    # bound is +Inf, so every finite amount has one
    for index, count in _Tally([bisect_left(bounds, amount) for amount in amounts]).items():
        buckets[index].inc(count)


def metric(entry: M.Metric, registry: CollectorRegistry | None) -> Any:
    """The prometheus_client object for a catalog entry (``registry=None``: not registered anywhere)."""
    return _CLASSES[entry.type](**entry.prometheus_kwargs(), registry=registry)


def gauge_family(entry: M.Metric, value: float | None = None) -> GaugeMetricFamily:
    """A custom collector's gauge for a catalog entry: ``value`` when unlabelled, else ``add_metric`` per series."""
    if entry.type != "gauge":
        raise ValueError(f"{entry.name} is a {entry.type}, not a gauge")
    return GaugeMetricFamily(entry.name, entry.help, value=value, labels=entry.labels or None)


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
        self.fold_lag = metric(M.ROLLUP_FOLD_LAG, r)
        self.pending_deltas = metric(M.ROLLUP_PENDING_DELTAS, r)
        self.deltas_folded = metric(M.ROLLUP_DELTAS_FOLDED, r)
        self.fold_errors = metric(M.ROLLUP_FOLD_ERRORS, r)
        self.last_fold = metric(M.ROLLUP_LAST_FOLD, r)
        # the ledger's monthly partitions (see spanmeter.billing.ledger.partitions), kept by the same component
        self.partitions_end = metric(M.LEDGER_PARTITIONS_END, r)
        self.partitions_created = metric(M.LEDGER_PARTITIONS_CREATED, r)
        self.partition_errors = metric(M.LEDGER_PARTITION_ERRORS, r)


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
        self.build_info = metric(M.BUILD_INFO, r)
        self.build_info.labels(__version__, metering_mode()).set(1)
        self.native_fallbacks = metric(M.NATIVE_FALLBACKS, r)
        self.spans_received = metric(M.SPANS_RECEIVED, r)
        self.spans_rejected = metric(M.SPANS_REJECTED, r)
        self.spans_billed = metric(M.SPANS_BILLED, r)
        self.duplicates = metric(M.USAGE_EVENTS_DUPLICATE, r)
        self.unattributed = metric(M.SPANS_UNATTRIBUTED, r)
        self.synthetic = metric(M.SYNTHETIC_SPANS, r)
        self.export_requests = metric(M.EXPORT_REQUESTS, r)
        self.overload = metric(M.EXPORT_THROTTLED, r)
        self.auth_reloads = metric(M.AUTH_RELOADS, r)
        self.ledger_write_duration = metric(M.LEDGER_WRITE_DURATION, r)
        self.ledger_write_errors = metric(M.LEDGER_WRITE_ERRORS, r)
        self.pipeline_lag = metric(M.PIPELINE_LAG, r)
        self.last_commit = metric(M.LEDGER_LAST_COMMIT, r)
        self.oldest_pending = metric(M.OLDEST_PENDING_SPAN_AGE, r)
        self.pending_requests = metric(M.LEDGER_PENDING_REQUESTS, r)
        self._gauge_sources = (oldest_pending_age_seconds, pending_requests)
        if not multiprocess:
            self.oldest_pending.set_function(oldest_pending_age_seconds)
            self.pending_requests.set_function(pending_requests)
        self.billable_worker_seconds = metric(M.BILLABLE_WORKER_SECONDS, r)
        self.billable_gpu_seconds = metric(M.BILLABLE_GPU_SECONDS, r)
        self.billable_tokens = metric(M.BILLABLE_TOKENS, r)
        self.billable_api_requests = metric(M.BILLABLE_API_REQUESTS, r)
        self.billable_token_subsets = metric(M.BILLABLE_TOKEN_SUBSETS, r)
        # where a meter definition's routing points (MeterRouting.metric): the billable counters by name
        self.billable: dict[str, Any] = {
            M.BILLABLE_WORKER_SECONDS.name: self.billable_worker_seconds,
            M.BILLABLE_GPU_SECONDS.name: self.billable_gpu_seconds,
            M.BILLABLE_TOKENS.name: self.billable_tokens,
            M.BILLABLE_API_REQUESTS.name: self.billable_api_requests,
            M.BILLABLE_TOKEN_SUBSETS.name: self.billable_token_subsets,
        }
        self.service_requests = metric(M.SERVICE_REQUESTS, r)
        self.service_request_duration = metric(M.SERVICE_REQUEST_DURATION, r)
        ProcessCollector(registry=r)
        self._initialise_labels()

    def sample_gauges(self) -> None:
        """Multiprocess mode: store the current values of the scrape-time gauges (called every second)."""
        oldest, pending = self._gauge_sources
        self.oldest_pending.set(oldest())
        self.pending_requests.set(pending())

    def observe_service_request(self, service: str, operation: str, outcome: str, duration_seconds: float) -> None:
        """Count one entry span in the request SLIs (labels capped)."""
        self.observe_service_requests(service, operation, outcome, (duration_seconds,))

    def observe_service_requests(
        self, service: str, operation: str, outcome: str, durations_seconds: Sequence[float]
    ) -> None:
        """Count entry spans of one (service, operation, outcome) in the request SLIs (labels capped)."""
        pair = self.sli_cap(service, operation)
        if pair not in self._sli_pairs:  # both outcomes from the first request, so rate() sees the first error
            for each in ("ok", "error"):
                self.service_requests.labels(*pair, each)
            self._sli_pairs.add(pair)
        self.service_requests.labels(*pair, outcome).inc(len(durations_seconds))
        observe_many(self.service_request_duration.labels(*pair), durations_seconds)

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
            for kind in ("cache_read", "cache_write", "reasoning"):
                self.billable_token_subsets.labels(plan, kind)
            for gpu in self.gpu_cap.values:
                self.billable_gpu_seconds.labels(plan, gpu)


class ReadReplicaMetrics:
    """How far the read replica is behind (see :mod:`.replica_lag`): registered only when
    ``SPANMETER_READ_DATABASE_URL`` is set, in the process that serves ``/metrics``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.lag_bytes = metric(M.READ_REPLICA_LAG, r)
        self.replay_delay = metric(M.READ_REPLICA_REPLAY_DELAY, r)
        self.replay_paused = metric(M.READ_REPLICA_REPLAY_PAUSED, r)
        self.last_measured = metric(M.READ_REPLICA_LAST_MEASURED, r)
        self.measure_errors = metric(M.READ_REPLICA_MEASURE_ERRORS, r)
