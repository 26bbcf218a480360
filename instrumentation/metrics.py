"""In-process metrics of the instrumentation: what the application's SDK exported and what it lost.

"Nothing lost" stops at the process boundary only if the process says what it lost. The OpenTelemetry
SDK drops a span when its batch queue is full and gives up on a batch when the exporter's retries run
out; spanmeter counts both, per process, in the application's default Prometheus registry (declared in
:mod:`spanmeter.metrics_catalog` with every other ``spanmeter_*`` metric):

=====================================  ========  =============================================================
metric                                 labels    meaning
=====================================  ========  =============================================================
``spanmeter_sdk_spans_exported_total``  —        spans the collector (or sidecar) acknowledged
``spanmeter_sdk_spans_dropped_total``  ``reason``  ``queue_full``: the batch queue was full (raise
                                                 ``OTEL_BSP_MAX_QUEUE_SIZE``); ``export_failed``: the exporter
                                                 gave up after its retries/timeout; ``shutdown``: ended after
                                                 the processor shut down; ``unsupported_sdk``: a billable
                                                 span the sampler dropped, at an SDK version whose batch
                                                 queue spanmeter cannot reach (see below)
``spanmeter_sdk_degraded``             ``hook``  1 when a hook into the SDK fell back to plain OpenTelemetry
                                                 behaviour (``batch_queue``, ``provider``, ``propagation``,
                                                 ``django``, ``celery``, ``sigterm``), with one warning
=====================================  ========  =============================================================

Expose them with the application's existing ``/metrics`` endpoint (django-prometheus, or
``prometheus_client.start_http_server``); drops are also logged at WARNING. A non-zero drop rate means
billable usage may be missing: the durable fix is the sidecar collector (``deploy/otelcol-sidecar.yaml``).
"""

from __future__ import annotations

from prometheus_client import REGISTRY, Counter, Gauge

from spanmeter import metrics_catalog as M  # the one import from spanmeter's server side: data, stdlib only

__all__ = ["DEGRADED", "DROP_REASONS", "SPANS_DROPPED", "SPANS_EXPORTED", "snapshot"]

DROP_REASONS = ("queue_full", "export_failed", "shutdown", "unsupported_sdk")

SPANS_EXPORTED = Counter(**M.SDK_SPANS_EXPORTED.prometheus_kwargs(), registry=REGISTRY)
SPANS_DROPPED = Counter(**M.SDK_SPANS_DROPPED.prometheus_kwargs(), registry=REGISTRY)
DEGRADED = Gauge(**M.SDK_DEGRADED.prometheus_kwargs(), registry=REGISTRY)
for _reason in DROP_REASONS:
    SPANS_DROPPED.labels(_reason)


def snapshot() -> dict[str, float]:
    """This process's counts: ``exported`` and one entry per drop reason."""
    counts = {"exported": SPANS_EXPORTED._value.get()}
    for reason in DROP_REASONS:
        counts[reason] = SPANS_DROPPED.labels(reason)._value.get()
    return counts
