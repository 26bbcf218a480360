"""Overload and oversized requests: every overload answer is retryable, and a request too large to commit in
time is refused before it is decoded, and kept."""

from __future__ import annotations

from decimal import Decimal

import grpc
import psutil
import psycopg
from google.rpc import error_details_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from support import EXPORT_METHOD, Collector, SpanFactory, ledger, raw_export, request_bytes, totals, wait_until

MS = 1_000_000


def _body(factory: SpanFactory, account: str, spans: int) -> bytes:
    return request_bytes(
        [factory.span("run", {"account_id": account, "celery.action": "run"}, 100 * MS) for _ in range(spans)]
    )


def test_500_concurrent_calls_are_refused_only_retryably_then_all_acknowledged_exactly_once(fresh_db):
    """gRPC's own concurrency cap answered RESOURCE_EXHAUSTED (OTLP: drop the batch) before spanmeter's
    bound could answer UNAVAILABLE; now every refusal says "retry", and retried calls land exactly once."""
    collector = Collector(fresh_db, env={"SPANMETER_LEDGER_WRITE_TIMEOUT_SECONDS": "30"}).start()
    channels = [grpc.insecure_channel(collector.endpoint) for _ in range(5)]
    try:
        factory = SpanFactory({"service.name": "burst"})
        bodies = [_body(factory, f"acct-{n % 5}", 2) for n in range(500)]
        blocker = psycopg.connect(fresh_db)
        blocker.execute("LOCK TABLE usage_events IN EXCLUSIVE MODE")  # the first calls wait for their commit
        calls = [
            channels[n % 5]
            .unary_unary(
                EXPORT_METHOD, request_serializer=None, response_deserializer=ExportTraceServiceResponse.FromString
            )
            .future(body, timeout=60)
            for n, body in enumerate(bodies)
        ]
        bound = 32  # SPANMETER_MAX_INFLIGHT_REQUESTS' default: the calls held while the ledger is locked
        wait_until(lambda: sum(c.done() for c in calls) >= len(calls) - bound, 60, what="every call over the bound")
        blocker.commit()
        blocker.close()
        codes = []
        for call in calls:
            error = call.exception(60)
            codes.append(grpc.StatusCode.OK if error is None else error.code())
            if error is not None:
                trailers = dict(error.trailing_metadata() or ())
                assert error.code() == grpc.StatusCode.UNAVAILABLE, (error.code(), error.details())
                assert "google.rpc.retryinfo-bin" in trailers, error.details()
                assert error_details_pb2.RetryInfo.FromString(trailers["google.rpc.retryinfo-bin"]).retry_delay.seconds
        assert codes.count(grpc.StatusCode.UNAVAILABLE) >= 400  # the burst really went over the bound
        assert grpc.StatusCode.RESOURCE_EXHAUSTED not in codes
        for body, code in zip(bodies, codes, strict=True):  # what an exporter's retry does
            while code != grpc.StatusCode.OK:
                result = raw_export(collector.endpoint, body)
                assert result.code in (grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE), result.details
                code = result.code
        assert ledger(fresh_db, "SELECT count(*), count(DISTINCT span_id) FROM usage_events") == [(1000, 1000)]
        for account in range(5):
            assert totals(fresh_db, f"acct-{account}") == {"worker_seconds": Decimal("20.0")}  # 200 spans x 0.1 s
        m = collector.metrics()
        assert m['spanmeter_spans_billed_total{meter="worker_seconds"}'] == 1000
        assert m.get('spanmeter_export_requests_total{grpc_code="RESOURCE_EXHAUSTED"}', 0) == 0
    finally:
        for channel in channels:
            channel.close()
        collector.kill()


def test_a_request_over_the_span_limit_is_refused_before_decoding_and_kept_whole(fresh_db):
    collector = Collector(fresh_db, env={"SPANMETER_MAX_SPANS_PER_REQUEST": "1000"}).start()
    try:
        factory = SpanFactory({"service.name": "big"})
        spans = [factory.span("run", {"account_id": "acct-big", "celery.action": "run"}, 100 * MS) for _ in range(1500)]
        body = request_bytes(spans)
        result = raw_export(collector.endpoint, body)
        assert result.code == grpc.StatusCode.RESOURCE_EXHAUSTED  # as over the size limit: the sender must split
        assert "google.rpc.retryinfo-bin" not in result.trailers
        assert "1500 spans" in result.details and "SPANMETER_MAX_SPANS_PER_REQUEST" in result.details
        # kept whole, so its usage can be recovered; nothing of it was metered or billed
        assert ledger(fresh_db, "SELECT reason, size_bytes, body FROM rejected_requests") == [
            ("too_many_spans", len(body), body)
        ]
        m = collector.metrics()
        assert m['spanmeter_export_requests_total{grpc_code="RESOURCE_EXHAUSTED"}'] == 1
        assert m["spanmeter_spans_received_total"] == 0
        # the same spans in batches under the limit are taken, exactly once
        for start in range(0, 1500, 500):
            assert raw_export(collector.endpoint, request_bytes(spans[start : start + 500])).code == grpc.StatusCode.OK
        assert totals(fresh_db, "acct-big") == {"worker_seconds": Decimal("150.0")}
    finally:
        collector.kill()


def _minimal_spans_request(spans: int) -> bytes:
    """ExportTraceServiceRequest{ResourceSpans{ScopeSpans{Span{} x spans}}}: 2 bytes per span on the wire."""

    def field(number: int, payload: bytes) -> bytes:
        length, out = len(payload), bytearray()
        while True:
            byte, length = length & 0x7F, length >> 7
            out.append(byte | (0x80 if length else 0))
            if not length:
                break
        return bytes([number << 3 | 2]) + bytes(out) + payload

    return field(1, field(2, b"\x12\x00" * spans))


def test_a_flood_of_tiny_spans_is_refused_early_with_bounded_memory(fresh_db):
    """650,000 spans in 1.3 MB: refused from the framing, before the decode (which took 19 s and 1.5 GB)."""
    collector = Collector(fresh_db).start()
    try:
        process = psutil.Process(collector.proc.pid)
        assert raw_export(collector.endpoint, _minimal_spans_request(10)).code == grpc.StatusCode.OK  # warm
        before = process.memory_info().rss
        body = _minimal_spans_request(650_000)
        for _ in range(3):
            result = raw_export(collector.endpoint, body)
            assert result.code == grpc.StatusCode.RESOURCE_EXHAUSTED, result.details
            assert "650000 spans" in result.details
        grown_mib = (process.memory_info().rss - before) / 2**20
        assert grown_mib < 64, f"RSS grew {grown_mib:.0f} MiB"
        assert ledger(fresh_db, "SELECT count(*) FROM rejected_requests WHERE reason = 'too_many_spans'") == [(1,)]
        assert collector.metrics()["spanmeter_spans_received_total"] == 10
    finally:
        collector.kill()
