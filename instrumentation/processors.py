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
import os
import threading
from collections.abc import Mapping

from opentelemetry import baggage, context
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.sdk.trace import export as _sdk_export
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

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        # nothing to flush; SDKs before 1.34 return None from the base method, which stops the provider's
        # force_flush before it reaches the exporting processor after this one
        return True


def _layout_of(processor: BatchSpanProcessor) -> str:
    """Which of the SDK's internal batch-queue layouts ``processor`` has: ``"batch_processor"`` (SDK 1.34 and
    later: a ``_batch_processor`` holding the queue), ``"queue"`` (1.27 to 1.33: the queue on the processor
    itself), or ``"unknown"`` (a layout spanmeter was not tested with: it degrades, see below)."""
    inner = getattr(processor, "_batch_processor", None)
    if inner is not None and all(hasattr(inner, n) for n in ("_queue", "_max_queue_size", "_shutdown", "emit")):
        return "batch_processor"
    names = ("queue", "condition", "done", "max_queue_size", "max_export_batch_size", "_pid", "_at_fork_reinit")
    if all(hasattr(processor, name) for name in names):
        return "queue"
    return "unknown"


class SpanmeterSpanProcessor(BatchSpanProcessor):
    """Exports sampled spans and billable unsampled spans through ``exporter`` in batches.

    The SDK's ``BatchSpanProcessor.on_end`` discards unsampled spans, and it has no public way to queue
    one, so this processor puts spans on the SDK's own queue through a version-gated adapter (one per
    internal layout, each tested at the pyproject floor and at the newest release). At a layout it does not
    know it degrades, never raising: sampled spans are exported through the public ``on_end``, a billable
    span the sampler dropped is counted in ``spanmeter_sdk_spans_dropped_total{reason="unsupported_sdk"}``,
    one warning is logged and ``spanmeter_sdk_degraded{hook="batch_queue"}`` is 1."""

    _warned_full = False
    _warned_degraded = False

    def __init__(
        self, exporter: SpanExporter, *, stamp_attribution: bool = False, **batch_options: int | float | None
    ) -> None:
        super().__init__(exporter, **batch_options)  # type: ignore[arg-type]
        self.stamps_attribution = stamp_attribution
        self.layout = _layout_of(self)  # checked once, at set-up
        if self.layout == "unknown":
            metrics.DEGRADED.labels("batch_queue").set(1)
            log.warning(
                "spanmeter does not know this opentelemetry-sdk version's batch queue: sampled spans are exported "
                "as usual, billable spans your sampler drops are not (counted in spanmeter_sdk_spans_dropped_total"
                '{reason="unsupported_sdk"}); use an always-on sampler or a supported SDK version'
            )
        # Only this method adds to the queue (the export thread only takes from it), so under this lock a
        # queue seen with room keeps it until the span is in: every span not queued is counted, exactly.
        self._emit_lock = threading.Lock()
        self._dropped_queue_full = metrics.SPANS_DROPPED.labels("queue_full")
        self._dropped_shutdown = metrics.SPANS_DROPPED.labels("shutdown")
        self._dropped_unsupported = metrics.SPANS_DROPPED.labels("unsupported_sdk")

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        if self.stamps_attribution:
            stamp_attribution(span, parent_context)

    def on_end(self, span: ReadableSpan) -> None:
        try:
            span_context = span.context
            if span_context is None:
                return
            sampled = span_context.trace_flags.sampled
            if not sampled and not is_billable(span.kind, span.attributes):
                return
            layout = self.layout
            if layout == "batch_processor":
                self._emit_new(span)
            elif layout == "queue":
                self._emit_old(span)
            elif sampled:
                super().on_end(span)
            else:
                self._dropped_unsupported.inc()
        except Exception:
            log.debug("queueing a span for export failed", exc_info=True)

    def _queue_full(self) -> None:
        self._dropped_queue_full.inc()  # drop the newest (the SDK would drop the oldest, uncounted)
        if not self._warned_full:
            log.warning("the span queue is full: billable spans are dropped (OTEL_BSP_MAX_QUEUE_SIZE)")
            self._warned_full = True

    def _emit_new(self, span: ReadableSpan) -> None:
        """SDK 1.34 and later: ``_batch_processor.emit`` (it handles forks and wakes the export thread)."""
        queue = self._batch_processor
        with self._emit_lock:
            if queue._shutdown:
                self._dropped_shutdown.inc()
            elif len(queue._queue) >= queue._max_queue_size:
                self._queue_full()
            else:
                queue.emit(span)

    def _emit_old(self, span: ReadableSpan) -> None:
        """SDK 1.27 to 1.33: what that version's own ``on_end`` does after its sampled check."""
        with self._emit_lock:
            if self.done:
                self._dropped_shutdown.inc()
                return
            if self._pid != os.getpid():  # a forked child: the SDK's own reset, once per process
                reset = getattr(_sdk_export, "_BSP_RESET_ONCE", None)
                reset.do_once(self._at_fork_reinit) if reset is not None else self._at_fork_reinit()
            if len(self.queue) >= self.max_queue_size:
                self._queue_full()
                return
            self.queue.appendleft(span)
            if len(self.queue) >= self.max_export_batch_size:
                with self.condition:
                    self.condition.notify()
