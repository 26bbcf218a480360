"""The OTLP/gRPC trace receiver: ``TraceService/Export``, handled as raw bytes.

For each request:

1. Size: more than ``max_receive_message_bytes`` after decompression is RESOURCE_EXHAUSTED without a
   RetryInfo (OTLP: not retryable). gRPC itself enforces the same limit on the decompressed message.
2. Empty body: success, nothing to do.
3. Decode (see :mod:`.otlp`): a body that is not OTLP is answered INVALID_ARGUMENT, counted, and kept in
   ``rejected_requests`` (first ``rejected_request_max_bytes`` bytes); invalid UTF-8 is repaired.
4. Meter (see :mod:`.processors.usage`): usage rows, rejections and counts; pure.
5. Write (see :mod:`.exporters.ledger`) and wait for COMMIT. Only then answer OK, with ``partial_success``
   when spans were rejected (``rejected_spans`` and an English ``error_message``). A write that fails or
   does not commit within ``ledger_write_timeout_seconds`` is answered UNAVAILABLE with a 1 s RetryInfo.

Requests with nothing billable in them never touch the database.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import Counter
from collections.abc import Callable

import grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTracePartialSuccess,
    ExportTraceServiceResponse,
)

from spanmeter.billing.ledger.writer import RejectedRequestRow

from .config import CollectorConfig
from .exporters.ledger import LedgerExporter, LedgerUnavailable, PendingWrite
from .metrics import CollectorMetrics
from .otlp import SERVICE_NAME, UnparseableRequest, abort, decode_request
from .processors.usage import MeteringResult, meter_request

__all__ = ["RETRY_DELAY_SECONDS", "TraceReceiver"]

log = logging.getLogger(__name__)
RETRY_DELAY_SECONDS = 1.0
_EMPTY_RESPONSE = ExportTraceServiceResponse().SerializeToString()


class TraceReceiver:
    def __init__(
        self,
        config: CollectorConfig,
        exporter: LedgerExporter,
        metrics: CollectorMetrics,
        clock_unix_nano: Callable[[], int] = time.time_ns,
    ) -> None:
        self._config = config
        self._limits = config.limits
        self._exporter = exporter
        self._metrics = metrics
        self._clock = clock_unix_nano

    def handler(self) -> grpc.GenericRpcHandler:
        """A generic handler with no deserializer: ``export`` receives the request bytes as they came."""
        return grpc.method_handlers_generic_handler(
            SERVICE_NAME, {"Export": grpc.unary_unary_rpc_method_handler(self.export)}
        )

    def export(self, body: bytes, context: grpc.ServicerContext) -> bytes:
        try:
            response = self._export(body, context)
        except Exception as exc:
            if isinstance(exc, grpc.RpcError) or context.code() not in (None, grpc.StatusCode.OK):
                raise  # abort() already set the status
            log.exception("unexpected error handling an Export request")
            self._count("UNAVAILABLE")
            abort(context, grpc.StatusCode.UNAVAILABLE, "internal error; retry", RETRY_DELAY_SECONDS)
        self._count("OK")
        return response

    def _count(self, code: str) -> None:
        self._metrics.export_requests.labels(code).inc()

    def _export(self, body: bytes, context: grpc.ServicerContext) -> bytes:
        limit = self._config.max_receive_message_bytes
        if len(body) > limit:
            self._count("RESOURCE_EXHAUSTED")
            abort(
                context,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"request of {len(body)} bytes exceeds the {limit}-byte limit; send smaller batches",
            )
        if not body:
            return _EMPTY_RESPONSE
        try:
            decoded = decode_request(body)
        except UnparseableRequest as exc:
            self._keep_unparseable(body, str(exc), context.peer())
            self._count("INVALID_ARGUMENT")
            abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc), bad_request=True)
        result = meter_request(decoded.request, self._limits, self._clock())
        m = self._metrics
        m.spans_received.inc(result.spans_received)
        if decoded.replaced_strings:
            log.warning("replaced invalid UTF-8 in %d string fields from %s", decoded.replaced_strings, context.peer())
        if result.rows or result.rejections:
            pending = self._exporter.submit(PendingWrite(rows=result.rows, rejections=result.rejections))
            try:
                self._exporter.wait(pending, self._config.ledger_write_timeout_seconds)
            except LedgerUnavailable as exc:
                self._count("UNAVAILABLE")
                abort(context, grpc.StatusCode.UNAVAILABLE, f"{exc}; retry", RETRY_DELAY_SECONDS)
        self._record(result)
        return self._response(result, decoded.replaced_strings)

    def _record(self, result: MeteringResult) -> None:
        m = self._metrics
        for rejection in result.rejections:
            m.spans_rejected.labels(rejection.reason).inc()
        for code, count in result.unattributed.items():
            m.unattributed.labels(code).inc(count)
        for row in result.synthetic_rows:
            m.synthetic.labels(row.meter.code).inc()

    @staticmethod
    def _response(result: MeteringResult, replaced_strings: int) -> bytes:
        if not result.rejections and not replaced_strings:
            return _EMPTY_RESPONSE
        parts = []
        if result.rejections:
            reasons = Counter(r.reason for r in result.rejections)
            first = {}
            for r in result.rejections:
                first.setdefault(r.reason, r.message)
            detail = "; ".join(f"{reason} x{count} ({first[reason]})" for reason, count in sorted(reasons.items()))
            parts.append(f"{len(result.rejections)} spans rejected and kept for review: {detail}")
        if replaced_strings:
            parts.append(f"invalid UTF-8 replaced with U+FFFD in {replaced_strings} string fields")
        message = ". ".join(parts)[:4000]
        partial = ExportTracePartialSuccess(rejected_spans=len(result.rejections), error_message=message)
        return ExportTraceServiceResponse(partial_success=partial).SerializeToString()

    def _keep_unparseable(self, body: bytes, message: str, peer: str | None) -> None:
        """Store the raw bytes (capped) before answering; a failure to store is logged, never raised."""
        row = RejectedRequestRow(
            request_key=hashlib.blake2b(body, digest_size=16).hexdigest(),
            reason="unparseable",
            error_message=message[:1000],
            size_bytes=len(body),
            body=body[: self._config.rejected_request_max_bytes],
            peer=peer,
        )
        pending = self._exporter.submit(PendingWrite(rows=[], rejections=[], rejected_request=row))
        try:
            self._exporter.wait(pending, self._config.ledger_write_timeout_seconds)
        except LedgerUnavailable as exc:
            log.error("could not keep an unparseable request of %d bytes from %s: %s", len(body), peer, exc)
        log.warning("rejected an unparseable request of %d bytes from %s: %s", len(body), peer, message)
