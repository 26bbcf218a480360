"""The receiver core, and its gRPC door: ``TraceService/Export``, handled as raw bytes.

:meth:`TraceReceiver.handle` takes a request as OTLP protobuf bytes and the :class:`Call` that brought it,
and returns the serialized ``ExportTraceServiceResponse`` or raises a :class:`Refusal` (a gRPC status
code, a message, and a retry delay when a retry may succeed). Two doors call it: gRPC's
``TraceService/Export`` (:meth:`TraceReceiver.export`, a refusal becomes a ``google.rpc.Status`` with
RetryInfo) and OTLP/HTTP's ``POST /v1/traces`` (:mod:`.http_receiver`, an HTTP status with Retry-After).
The numbered steps below name gRPC's codes; the HTTP door maps them (see there).

For each request:

0. Who: with authentication configured (see :mod:`.auth`), a call without valid credentials is answered
   UNAUTHENTICATED; the producer it identifies travels with the request and limits what it may bill.
   Bounds: more than ``max_inflight_requests`` calls, or ``max_inflight_spans`` spans, held at once is
   answered UNAVAILABLE with a RetryInfo, so a burst becomes back-pressure instead of memory growth.
1. Size: more than ``max_receive_message_bytes`` after decompression is RESOURCE_EXHAUSTED without a
   RetryInfo (OTLP: not retryable). gRPC itself enforces the same limit on the decompressed message.
2. Empty body: success, nothing to do.
3. Decode and meter: with the compiled core (:mod:`.processors.native`, Rust, GIL released), both in one
   call; it hands back to the Python reference anything unusual (invalid UTF-8, odd wire data, limits).
   Python (see :mod:`.otlp`): a body that is not OTLP is answered INVALID_ARGUMENT, counted, and kept in
   ``rejected_requests`` (first ``rejected_request_max_bytes`` bytes); invalid UTF-8 is repaired.
4. Meter (see :mod:`.processors.usage`, the reference the native core is tested against): usage rows,
   rejections and counts; pure.
5. Write (see :mod:`.exporters.ledger`) and wait for COMMIT. Only then answer OK, with ``partial_success``
   when spans were rejected (``rejected_spans`` and an English ``error_message``). A write that fails or
   does not commit within ``ledger_write_timeout_seconds`` is answered UNAVAILABLE with a 1 s RetryInfo.

Requests with nothing billable in them never touch the database. Every request that is refused or has
rejected spans gets one log line (never one per span), with its peer, producer and counts by reason.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import grpc
from google.rpc import status_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTracePartialSuccess,
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from spanmeter.billing.ledger.writer import RejectedRequestRow

from .auth import Authenticator, Producer
from .config import CollectorConfig
from .consumer import EncodedRows, PendingWrite, RetryableError, UsageConsumer
from .memory import release_after
from .metrics import CollectorMetrics
from .otlp import SERVICE_NAME, DecodedRequest, UnparseableRequest, abort, count_spans, decode_request, status_details
from .processors.native import count_spans as native_count_spans
from .processors.native import meter_native, metering_mode, to_metering_result, usage_rows
from .processors.usage import MeteringResult, SpanPayloads, meter_request

__all__ = ["RETRY_DELAY_SECONDS", "Call", "Refusal", "TraceReceiver", "status_of"]

log = logging.getLogger(__name__)
RETRY_DELAY_SECONDS = 1.0
_EMPTY_RESPONSE = ExportTraceServiceResponse().SerializeToString()


@dataclass(frozen=True, slots=True)
class Call:
    """Who brought a request, as a door sees it: the peer, the metadata (gRPC metadata or HTTP headers, keys
    lower-case) and the client certificate's common names. Read only when needed (refusals, producers)."""

    peer_of: Callable[[], str]
    metadata_of: Callable[[], Sequence[tuple[str, str | bytes]]]
    common_names_of: Callable[[], Sequence[str]]

    @property
    def peer(self) -> str:
        return self.peer_of()

    @classmethod
    def of_grpc(cls, context: grpc.ServicerContext) -> Call:
        return cls(
            peer_of=context.peer,
            metadata_of=lambda: context.invocation_metadata() or (),
            common_names_of=lambda: [
                cn.decode(errors="replace") for cn in (context.auth_context() or {}).get("x509_common_name", [])
            ],
        )


class Refusal(Exception):
    """The core did not acknowledge the request: ``code`` (a gRPC status code), a message for the sender,
    ``retry_delay_seconds`` when a retry may succeed (else None: the sender must change the request),
    ``bad_request`` for data that is not OTLP, and ``http_status`` when the HTTP door should not use its
    default mapping for ``code`` (429 for capacity)."""

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        retry_delay_seconds: float | None = None,
        bad_request: bool = False,
        http_status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_delay_seconds = retry_delay_seconds
        self.bad_request = bad_request
        self.http_status = http_status


def status_of(refusal: Refusal) -> status_pb2.Status:
    """The ``google.rpc.Status`` a refusal is answered with (RetryInfo and BadRequest details included)."""
    return status_details(refusal.code, refusal.message, refusal.retry_delay_seconds, refusal.bad_request)[0]


class TraceReceiver:
    def __init__(
        self,
        config: CollectorConfig,
        exporter: UsageConsumer,
        metrics: CollectorMetrics,
        clock_unix_nano: Callable[[], int] = time.time_ns,
        authenticator: Authenticator | None = None,
    ) -> None:
        self._config = config
        self._authenticator = authenticator
        self._bounds = threading.Lock()
        self._requests_in_flight = 0
        self._spans_in_flight = 0
        self._limits = config.limits
        self._exporter = exporter
        self._metrics = metrics
        self._clock = clock_unix_nano
        self._metering = metering_mode()  # "native" (the Rust core, Python as fallback) or "python"

    def handler(self) -> grpc.GenericRpcHandler:
        """A generic handler with no deserializer: ``export`` receives the request bytes as they came."""
        return grpc.method_handlers_generic_handler(
            SERVICE_NAME, {"Export": grpc.unary_unary_rpc_method_handler(self.export)}
        )

    def export(self, body: bytes, context: grpc.ServicerContext) -> bytes:
        """The gRPC door: ``TraceService/Export``."""
        try:
            return self.handle(body, Call.of_grpc(context))
        except Refusal as refusal:
            abort(context, refusal.code, refusal.message, refusal.retry_delay_seconds, refusal.bad_request)

    def handle(self, body: bytes, call: Call) -> bytes:
        """One Export request (OTLP protobuf bytes) from either door: the serialized response once its rows
        are committed, or a :class:`Refusal`. Counted in ``spanmeter_export_requests_total{code}``."""
        try:
            response = self._export(body, call)
        except Refusal:
            raise
        except Exception:
            log.exception("unexpected error handling an Export request")
            self._count("UNAVAILABLE")
            raise Refusal(grpc.StatusCode.UNAVAILABLE, "internal error; retry", RETRY_DELAY_SECONDS) from None
        self._count("OK")
        return response

    def count_internal_error(self) -> None:
        """A door's own unexpected failure, answered retryable: counted like the core's."""
        self._count("UNAVAILABLE")

    def authenticate(self, call: Call) -> Producer | None:
        """The producer ``call`` identifies (None without a producers file), or an UNAUTHENTICATED
        :class:`Refusal` (counted). A door that reads or decodes before :meth:`handle` asks this first."""
        return self._authenticate(call)

    def refuse_busy(self) -> Refusal:
        """A door at its bound before reading a body: UNAVAILABLE + RetryInfo (HTTP 429), counted."""
        self._count("UNAVAILABLE")
        self._metrics.overload.labels("requests").inc()
        return Refusal(
            grpc.StatusCode.UNAVAILABLE, "collector at capacity; retry", RETRY_DELAY_SECONDS, http_status=429
        )

    def refuse_oversized(self, call: Call, size_bytes: int | None = None, producer: Producer | None = None) -> Refusal:
        """A request over ``max_receive_message_bytes`` (as received or decompressed): counted, logged, and
        answered RESOURCE_EXHAUSTED without RetryInfo (the sender must split it)."""
        limit = self._config.max_receive_message_bytes
        size = f"{size_bytes} bytes" if size_bytes is not None else f"over {limit} bytes"
        self._count("RESOURCE_EXHAUSTED")
        self._log_refusal(call, producer, "RESOURCE_EXHAUSTED", size)
        return Refusal(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"request of {size} exceeds the {limit}-byte limit (SPANMETER_MAX_RECEIVE_MESSAGE_BYTES); "
            "send smaller batches",
        )

    def refuse_unparseable(self, body: bytes, message: str, call: Call, producer: Producer | None = None) -> Refusal:
        """A body that is not OTLP: kept in ``rejected_requests``, counted, answered INVALID_ARGUMENT."""
        self._keep_request(body[: self._config.rejected_request_max_bytes], len(body), "unparseable", message, call)
        self._count("INVALID_ARGUMENT")
        self._log_refusal(call, producer, "INVALID_ARGUMENT", message)
        return Refusal(grpc.StatusCode.INVALID_ARGUMENT, message, bad_request=True)

    def _count_fallback(self, reason: str) -> None:
        self._metrics.native_fallbacks.labels(reason).inc()

    def _count(self, code: str) -> None:
        self._metrics.export_requests.labels(code).inc()

    def _export(self, body: bytes, call: Call) -> bytes:
        producer = self._authenticate(call)
        if len(body) > self._config.max_receive_message_bytes:
            raise self.refuse_oversized(call, len(body), producer)
        if not body:
            return _EMPTY_RESPONSE
        self._acquire(requests=1, spans=0)
        spans = 0
        now = self._clock()
        try:
            native_mode = self._metering == "native"
            decoded = None
            # counted from the framing, before any decoding (pure Python: only when the body could be over)
            if native_mode:
                count = native_count_spans(body)
            else:
                count = count_spans(body) if len(body) > 2 * self._config.max_spans_per_request else None
            if count is None:
                decoded = self._decode(body, call, producer)
                count = sum(len(ss.spans) for rs in decoded.request.resource_spans for ss in rs.scope_spans)
            if count > self._config.max_spans_per_request:
                self._refuse_too_many_spans(body, count, call, producer)
            self._acquire(requests=0, spans=count)
            spans = count  # acquired: released below
            if decoded is None and native_mode:
                native = meter_native(body, self._limits, now, producer, self._count_fallback)
                if native is not None:
                    result = to_metering_result(native, body, with_rows=False)
                    encoded = EncodedRows(native.copy_text, native.rows, lambda: usage_rows(native))
                    synthetic = [row[0] for row in native.synthetic_rows]
                    return self._write(
                        result, 0, lambda: decode_request(body).request, producer, call, encoded, synthetic
                    )
                # the Python reference decides (invalid UTF-8, unusual wire data, limits)
            if decoded is None:  # pure Python, or the native core handed the body back
                decoded = self._decode(body, call, producer)
            result = meter_request(decoded.request, self._limits, now, producer)
            synthetic = [row.meter.code for row in result.synthetic_rows]
            return self._write(
                result, decoded.replaced_strings, lambda: decoded.request, producer, call, None, synthetic
            )
        finally:
            self._release(requests=1, spans=spans)
            release_after(spans)  # a large request: give the freed memory back to the kernel

    def _decode(self, body: bytes, call: Call, producer: Producer | None) -> DecodedRequest:
        """Decode with the Python reference; a body that is not OTLP is kept, counted and refused."""
        try:
            return decode_request(body)
        except UnparseableRequest as exc:
            raise self.refuse_unparseable(body, str(exc), call, producer) from None

    def _refuse_too_many_spans(self, body: bytes, count: int, call: Call, producer: Producer | None) -> None:
        """More spans than the ledger commits within the write timeout: refused before decoding, like a
        request over the size limit (RESOURCE_EXHAUSTED, no RetryInfo: the sender must split it); the whole
        request is kept in ``rejected_requests`` first, so its usage is never lost."""
        limit = self._config.max_spans_per_request
        message = (
            f"request of {count} spans exceeds the {limit}-span limit (SPANMETER_MAX_SPANS_PER_REQUEST); "
            "send smaller batches (e.g. the Collector batch processor's send_batch_max_size)"
        )
        if not self._keep_request(body, len(body), "too_many_spans", message, call):
            # its usage must not be lost: not kept now (the ledger is away), so the sender must come back
            self._count("UNAVAILABLE")
            self._log_refusal(call, producer, "UNAVAILABLE", f"{count} spans, not kept yet")
            raise Refusal(grpc.StatusCode.UNAVAILABLE, "ledger unavailable; retry", RETRY_DELAY_SECONDS)
        self._count("RESOURCE_EXHAUSTED")
        self._log_refusal(call, producer, "RESOURCE_EXHAUSTED", f"{count} spans")
        raise Refusal(grpc.StatusCode.RESOURCE_EXHAUSTED, message)

    def _authenticate(self, call: Call) -> Producer | None:
        if self._authenticator is None:
            return None  # no producers file: anyone who completes the (m)TLS handshake, if any, may send
        producer = self._authenticator.identify(call.metadata_of(), call.common_names_of())
        if producer is None:
            self._count("UNAUTHENTICATED")
            self._log_refusal(call, None, "UNAUTHENTICATED", "no valid bearer token or client certificate")
            raise Refusal(
                grpc.StatusCode.UNAUTHENTICATED,
                "send `authorization: Bearer <token>` of a configured producer, or a known client certificate",
            )
        return producer

    def _acquire(self, requests: int, spans: int) -> None:
        config = self._config
        with self._bounds:
            over = self._requests_in_flight + requests > config.max_inflight_requests or (
                spans and self._spans_in_flight + spans > config.max_inflight_spans and self._spans_in_flight
            )
            if not over:
                self._requests_in_flight += requests
                self._spans_in_flight += spans
        if over:  # nothing was taken; what the caller already holds it releases itself
            self._count("UNAVAILABLE")
            self._metrics.overload.labels("spans" if requests == 0 else "requests").inc()
            raise Refusal(
                grpc.StatusCode.UNAVAILABLE, "collector at capacity; retry", RETRY_DELAY_SECONDS, http_status=429
            )

    def _release(self, requests: int, spans: int) -> None:
        with self._bounds:
            self._requests_in_flight -= requests
            self._spans_in_flight -= spans

    def _write(
        self,
        result: MeteringResult,
        replaced_strings: int,
        request_of: Callable[[], ExportTraceServiceRequest],
        producer: Producer | None,
        call: Call,
        encoded: EncodedRows | None,
        synthetic_codes: list[str],
    ) -> bytes:
        """Hand the metered usage to the consumer, wait for its commit, answer. ``encoded``: the native
        core's rows, ready for the ledger (``result.rows`` is then empty)."""
        self._metrics.spans_received.inc(result.spans_received)
        if result.rows or result.rejections or (encoded is not None and encoded.compact):
            payloads = SpanPayloads(request_of)  # decodes and indexes the request once, only if a row is kept
            pending = self._exporter.submit(
                PendingWrite(
                    rows=result.rows,
                    rejections=result.rejections,
                    encoded=encoded,
                    producer=producer.name if producer is not None else None,
                    span_payload=lambda row: payloads(row.trace_id, row.span_id),
                )
            )
            try:
                self._exporter.wait(pending, self._config.ledger_write_timeout_seconds)
            except RetryableError as exc:
                self._count("UNAVAILABLE")
                self._log_refusal(call, producer, "UNAVAILABLE", str(exc))
                raise Refusal(grpc.StatusCode.UNAVAILABLE, f"{exc}; retry", RETRY_DELAY_SECONDS) from None
            if pending.refused:  # rows the ledger can never take: kept as rejects, the rest committed
                result.rejections.extend(pending.refused)
        self._record(result, synthetic_codes)
        if result.rejections or replaced_strings:
            rejected = dict(Counter(r.reason for r in result.rejections))
            log.warning(
                "export partially rejected: %d of %d spans rejected (%s), %d invalid UTF-8 fields replaced, from %s",
                len(result.rejections),
                result.spans_received,
                ", ".join(f"{reason} {count}" for reason, count in sorted(rejected.items())) or "none",
                replaced_strings,
                producer.name if producer else call.peer,
                extra={
                    "event": "export_rejected_spans",
                    "peer": call.peer,
                    "producer": producer.name if producer else None,
                    "spans": result.spans_received,
                    "rejected": rejected,
                    "invalid_utf8_fields": replaced_strings,
                },
            )
        return self._response(result, replaced_strings)

    def _log_refusal(self, call: Call, producer: Producer | None, code: str, detail: str) -> None:
        log.warning(
            "export refused: %s: %s",
            code,
            detail,
            extra={
                "event": "export_refused",
                "grpc_code": code,
                "peer": call.peer,
                "producer": producer.name if producer else None,
            },
        )

    def _record(self, result: MeteringResult, synthetic_codes: list[str]) -> None:
        m = self._metrics
        for rejection in result.rejections:
            m.spans_rejected.labels(rejection.reason).inc()
        for code, count in result.unattributed.items():
            m.unattributed.labels(code).inc(count)
        for code, count in Counter(synthetic_codes).items():
            m.synthetic.labels(code).inc(count)
        if result.service_requests:
            durations: dict[tuple[str, str, str], list[float]] = {}
            for service, operation, outcome, duration in result.service_requests:
                durations.setdefault((service, operation, outcome), []).append(duration)
            for (service, operation, outcome), seconds in durations.items():
                m.observe_service_requests(service, operation, outcome, seconds)

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

    def _keep_request(self, kept: bytes, size_bytes: int, reason: str, message: str, call: Call) -> bool:
        """Store a refused request's bytes before answering; a failure to store is logged (False), never
        raised."""
        peer = call.peer
        row = RejectedRequestRow(
            request_key=hashlib.blake2b(kept, digest_size=16).hexdigest(),
            reason=reason,
            error_message=message[:1000],
            size_bytes=size_bytes,
            body=kept,
            peer=peer,
        )
        pending = self._exporter.submit(PendingWrite(rows=[], rejections=[], rejected_request=row))
        try:
            self._exporter.wait(pending, self._config.ledger_write_timeout_seconds)
        except RetryableError as exc:
            log.error("could not keep a refused request (%s) of %d bytes from %s: %s", reason, size_bytes, peer, exc)
            return False
        return True
