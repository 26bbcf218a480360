"""Hostile attribute values end to end: each has a defined outcome, the collector keeps serving, nothing is
lost. (The pure rules for the same values are in test_processors.py.)"""

from __future__ import annotations

from decimal import Decimal

import grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace.export import SpanExportResult

from support import SpanFactory, exporter, ledger, raw_export, request_bytes, totals

MS = 1_000_000
INJECTION = "acct'); DROP TABLE usage_events; --"


def _varint(n: int) -> bytes:
    out = b""
    while True:
        low, n = n & 0x7F, n >> 7
        if not n:
            return out + bytes([low])
        out += bytes([low | 0x80])


def _field(number: int, payload: bytes) -> bytes:
    return _varint((number << 3) | 2) + _varint(len(payload)) + payload


def _deeply_nested_request(depth: int, account: str) -> bytes:
    """A billable span with an attribute nested `depth` arrays deep (built by hand: the SDK refuses)."""
    f = SpanFactory({"service.name": "hostile"})
    body = request_bytes([f.span("run", {"account_id": account, "celery.action": "run"}, 100 * MS)])
    value = _field(1, b"leaf")
    for _ in range(depth):
        value = _field(5, _field(1, value))  # AnyValue.array_value { values: [value] }
    return _rebuild(ExportTraceServiceRequest.FromString(body), _field(9, _field(1, b"deep") + _field(2, value)))


def _rebuild(request: ExportTraceServiceRequest, extra_span_bytes: bytes) -> bytes:
    rs = request.resource_spans[0]
    ss = rs.scope_spans[0]
    span = ss.spans[0].SerializeToString() + extra_span_bytes
    scope_spans = _field(1, ss.scope.SerializeToString()) + _field(2, span)
    resource_spans = _field(1, rs.resource.SerializeToString()) + _field(2, scope_spans)
    return _field(1, resource_spans)


def test_sql_injection_is_just_text(collector, module_db):
    f = SpanFactory({"service.name": "hostile"})
    spans = [
        f.span(
            "run",
            {
                "account_id": INJECTION,
                "job_id": "'; DELETE FROM usage_events; --",
                "celery.action": "run",
                "celery.task_name": "x\"}'::jsonb",
            },
            300 * MS,
        )
    ]
    assert exporter(collector.endpoint).export(spans) == SpanExportResult.SUCCESS
    assert totals(module_db, INJECTION) == {"worker_seconds": Decimal("0.3")}
    assert ledger(
        module_db, "SELECT job_id, metadata->>'celery.task_name' FROM usage_events WHERE account_id = %s", (INJECTION,)
    ) == [("'; DELETE FROM usage_events; --", "x\"}'::jsonb")]


def test_enormous_strings_are_capped_or_refused_for_attribution(collector, module_db):
    f = SpanFactory({"service.name": "hostile"})
    huge = "x" * (4 * 1024 * 1024)
    spans = [
        f.span(huge, {"account_id": "acct-huge", "celery.action": "run", "noise": huge}, 100 * MS),
        f.span("run", {"account_id": "y" * 100_000, "celery.action": "run"}, 100 * MS),
    ]
    assert exporter(collector.endpoint).export(spans) == SpanExportResult.SUCCESS
    # the span name is kept, capped at 512 characters; an account id over 256 characters attributes nobody
    assert ledger(
        module_db, "SELECT length(metadata->>'span.name') FROM usage_events WHERE account_id = 'acct-huge'"
    ) == [(512,)]
    assert ledger(
        module_db, "SELECT count(*) FROM rejected_spans WHERE reason = 'unattributed' AND service_name = 'hostile'"
    ) == [(1,)]


def test_deeply_nested_arrays(collector, module_db):
    # within protobuf's nesting limit the attribute is carried and ignored; beyond it the request is not
    # OTLP we can read: INVALID_ARGUMENT, and its bytes are kept
    shallow = raw_export(collector.endpoint, _deeply_nested_request(40, "acct-nest"))
    assert shallow.code == grpc.StatusCode.OK
    assert totals(module_db, "acct-nest") == {"worker_seconds": Decimal("0.1")}
    body = _deeply_nested_request(5000, "acct-nest-deep")
    deep = raw_export(collector.endpoint, body)
    assert deep.code == grpc.StatusCode.INVALID_ARGUMENT
    assert ledger(module_db, "SELECT size_bytes FROM rejected_requests WHERE size_bytes = %s", (len(body),)) == [
        (len(body),)
    ]
    assert totals(module_db, "acct-nest-deep") == {}


def test_special_numbers(collector, module_db):
    f = SpanFactory({"service.name": "hostile-numbers"})
    acct = {"account_id": "acct-num"}
    spans = [
        f.span("nan", {**acct, "gen_ai.usage.input_tokens": float("nan")}, MS),
        f.span("inf", {**acct, "gen_ai.usage.output_tokens": float("inf")}, MS),
        f.span("ovf", {**acct, "gen_ai.usage.input_tokens": 2**63 - 1}, MS),
        f.span("neg", {**acct, "gen_ai.usage.input_tokens": -(2**63)}, MS),
        f.span("gpu", {**acct, "gpu.count": float("nan")}, MS),
        f.span("negzero", {**acct, "gen_ai.usage.input_tokens": -0.0, "gen_ai.usage.output_tokens": 7.0}, MS),
    ]
    assert exporter(collector.endpoint).export(spans) == SpanExportResult.SUCCESS
    rows = ledger(
        module_db,
        "SELECT reason, count(*) FROM rejected_spans WHERE service_name = 'hostile-numbers' GROUP BY 1 ORDER BY 1",
    )
    assert rows == [("invalid_gpu_count", 1), ("invalid_tokens", 4)]
    # -0.0 is zero; 7.0 is a whole number: accepted
    assert totals(module_db, "acct-num") == {"input_tokens": Decimal("0"), "output_tokens": Decimal("7")}
