"""Span processors spanmeter adds to a TracerProvider.

- :class:`AttributionSpanProcessor` stamps the attribution keys (``account_id``, ``job_id``,
  ``plan_code``, ``spanmeter.synthetic``) from the current baggage onto every span when it starts, so every
  child span and every task enqueued inside a request carries them.
- :class:`SpanmeterSpanProcessor` is a ``BatchSpanProcessor`` that exports the sampled spans *and* every
  unsampled span that matches a meter definition (see :mod:`.billable`), so a sampler can never drop
  billable usage (use it with :class:`spanmeter.instrumentation.sampling.BillingSafeSampler`). With
  ``stamp_attribution=True`` it also does what ``AttributionSpanProcessor`` does, in the same call: one
  processor instead of two on every span's start and end (what ``import spanmeter.instrumentation.auto``
  installs).

Both follow the SDK's rule for code on the application's hot path: they never raise into the
application and never block it. The batch queue drops a span when it is full: ``SpanmeterSpanProcessor``
counts every such drop in ``spanmeter_sdk_spans_dropped_total{reason="queue_full"}`` (:mod:`.metrics`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping

from opentelemetry import baggage, context
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter

from spanmeter import attributes as A

from . import metrics
from .billable import is_billable

__all__ = ["STAMPED_KEYS", "AttributionSpanProcessor", "SpanmeterSpanProcessor", "stamp_attribution"]

log = logging.getLogger(__name__)
STAMPED_KEYS = (A.ACCOUNT_ID, A.JOB_ID, A.PLAN_CODE, A.SYNTHETIC)


_BAGGAGE_KEY = getattr(baggage, "_BAGGAGE_KEY", None)


def _baggage_of(parent_context: Context | None) -> Mapping[str, object]:
    if _BAGGAGE_KEY is None:  # an API version without the private key: the public, slower way
        return baggage.get_all(parent_context)
    entries = context.get_value(_BAGGAGE_KEY, parent_context)
    return entries if isinstance(entries, dict) else {}


def stamp_attribution(span: Span, parent_context: Context | None) -> None:
    """Copy the attribution keys from the parent context's baggage onto ``span`` (keys it has keep theirs)."""
    try:
        entries = _baggage_of(parent_context)
        if not entries:  # the common case outside a request (and the server span itself): nothing to do
            return
        for key in STAMPED_KEYS:
            value = entries.get(key)
            if value is not None and span.attributes.get(key) is None:
                span.set_attribute(key, value == "true" if key == A.SYNTHETIC else str(value))
    except Exception:  # never into the application
        log.debug("attribution stamping failed", exc_info=True)


class AttributionSpanProcessor(SpanProcessor):
    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        stamp_attribution(span, parent_context)


class SpanmeterSpanProcessor(BatchSpanProcessor):
    """Exports sampled spans and billable unsampled spans through ``exporter`` in batches."""

    _warned_full = False

    def __init__(
        self, exporter: SpanExporter, *, stamp_attribution: bool = False, **batch_options: int | float | None
    ) -> None:
        super().__init__(exporter, **batch_options)  # type: ignore[arg-type]
        self.stamps_attribution = stamp_attribution
        queue = getattr(self, "_batch_processor", None)  # the SDK's internal queue, checked once at set-up
        if queue is None or not all(hasattr(queue, name) for name in ("_queue", "_max_queue_size", "_shutdown")):
            raise RuntimeError("this opentelemetry-sdk version's BatchSpanProcessor has an unknown layout")
        # Only this method adds to the queue (the export thread only takes from it), so under this lock a
        # queue seen with room keeps it until the span is in: every span not queued is counted, exactly.
        self._emit_lock = threading.Lock()
        self._dropped_queue_full = metrics.SPANS_DROPPED.labels("queue_full")
        self._dropped_shutdown = metrics.SPANS_DROPPED.labels("shutdown")

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        if self.stamps_attribution:
            stamp_attribution(span, parent_context)

    def on_end(self, span: ReadableSpan) -> None:
        try:
            span_context = span.context
            if span_context is None:
                return
            if span_context.trace_flags.sampled or is_billable(span.kind, span.attributes):
                queue = self._batch_processor
                with self._emit_lock:
                    if queue._shutdown:
                        self._dropped_shutdown.inc()
                    elif len(queue._queue) >= queue._max_queue_size:
                        self._dropped_queue_full.inc()  # drop the newest (the SDK would drop the oldest, uncounted)
                        if not self._warned_full:
                            log.warning("the span queue is full: billable spans are dropped (OTEL_BSP_MAX_QUEUE_SIZE)")
                            self._warned_full = True
                    else:
                        queue.emit(span)
        except Exception:
            log.debug("queueing a span for export failed", exc_info=True)
