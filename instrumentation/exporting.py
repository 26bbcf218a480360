"""The exporter wrapper spanmeter's span processor uses: one real exporter per process, counted.

:class:`ProcessLocalExporter` builds the real exporter (by default the official OTLP/gRPC exporter,
configured by the standard ``OTEL_EXPORTER_OTLP_*`` variables) lazily, in the process that exports, and
builds a new one after a fork. A gRPC channel must not cross ``fork()``: Celery's prefork pool forks its
worker processes after the application imported spanmeter, and this is what makes that safe (the SDK's
batch processor restarts its own thread after a fork). It also counts what was exported and what the
exporter gave up on (:mod:`.metrics`).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from . import metrics

__all__ = ["ProcessLocalExporter", "otlp_exporter"]

log = logging.getLogger(__name__)


def otlp_exporter() -> SpanExporter:
    """The official OTLP/gRPC span exporter, configured from ``OTEL_EXPORTER_OTLP_*`` variables."""
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()


class ProcessLocalExporter(SpanExporter):
    def __init__(self, factory: Callable[[], SpanExporter] = otlp_exporter) -> None:
        self._factory = factory
        self._lock = threading.Lock()
        self._exporter: SpanExporter | None = None
        self._pid = os.getpid()

    def _current(self) -> SpanExporter:
        with self._lock:
            if self._exporter is None or self._pid != os.getpid():
                self._exporter = self._factory()  # the parent's channel is never used after a fork
                self._pid = os.getpid()
            return self._exporter

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            result = self._current().export(spans)
        except Exception:
            log.warning("exporting %d spans raised; they are lost", len(spans), exc_info=True)
            result = SpanExportResult.FAILURE
        if result is SpanExportResult.SUCCESS:
            metrics.SPANS_EXPORTED.inc(len(spans))
        else:
            metrics.SPANS_DROPPED.labels("export_failed").inc(len(spans))
            log.warning("the exporter gave up on %d spans (spanmeter_sdk_spans_dropped_total)", len(spans))
        return result

    def shutdown(self) -> None:
        with self._lock:
            exporter, self._exporter = self._exporter, None
        if exporter is not None and self._pid == os.getpid():
            exporter.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True
