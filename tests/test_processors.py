"""The pure metering rules, table-driven: hand-built OTLP spans in, usage rows or rejections out."""

from __future__ import annotations

from decimal import Decimal

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from spanmeter.collector.processors import MeteringLimits, meter_request
from spanmeter.collector.processors.usage import idempotency_key, rounded_tenths_of_second

NOW = 1_795_000_000 * 10**9
MS = 1_000_000
LIMITS = MeteringLimits()


def value(v) -> AnyValue:
    if isinstance(v, bool):
        return AnyValue(bool_value=v)
    if isinstance(v, int):
        return AnyValue(int_value=v)
    if isinstance(v, float):
        return AnyValue(double_value=v)
    return AnyValue(string_value=v)


def request(
    attrs: dict,
    duration_ns: int = 100 * MS,
    resource: dict | None = None,
    kind: int = Span.SPAN_KIND_INTERNAL,
    span_id: bytes = b"\x01" * 8,
) -> ExportTraceServiceRequest:
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    for k, v in (resource or {}).items():
        rs.resource.attributes.append(KeyValue(key=k, value=value(v)))
    span = rs.scope_spans.add().spans.add()
    span.trace_id, span.span_id, span.name, span.kind = b"\x02" * 16, span_id, "s", kind
    span.end_time_unix_nano = NOW - 10**9
    span.start_time_unix_nano = span.end_time_unix_nano - duration_ns
    for k, v in attrs.items():
        span.attributes.append(KeyValue(key=k, value=value(v)))
    return req


def usage(attrs: dict, **kw) -> dict[str, Decimal]:
    result = meter_request(request(attrs, **kw), LIMITS, NOW)
    assert not result.rejections, [r.reason for r in result.rejections]
    return {row.meter.code: row.quantity for row in result.rows}


def reason(attrs: dict, **kw) -> str:
    result = meter_request(request(attrs, **kw), LIMITS, NOW)
    assert not result.rows
    return result.rejections[0].reason


A = {"account_id": "a"}


@pytest.mark.parametrize(("nanos", "tenths"), [(0, 0), (1, 1), (100 * MS, 1), (100 * MS + 1, 2), (1234 * MS, 13)])
def test_durations_round_up_to_100ms(nanos, tenths):
    assert rounded_tenths_of_second(nanos) == tenths


@pytest.mark.parametrize(
    ("attrs", "kw", "expected"),
    [
        ({**A, "celery.action": "run"}, {"duration_ns": 1234 * MS}, {"worker_seconds": Decimal("1.3")}),
        ({**A, "spanmeter.work_unit": True}, {}, {"worker_seconds": Decimal("0.1")}),
        ({**A, "spanmeter.work_unit": "true"}, {}, {"worker_seconds": Decimal("0.1")}),
        ({**A, "spanmeter.work_unit": False}, {}, {}),
        ({**A, "celery.action": "apply_async"}, {}, {}),
        ({**A, "gpu.count": 3}, {"duration_ns": 150 * MS}, {"gpu_seconds": Decimal("0.6")}),
        ({**A, "gpu.count": 2.0}, {"duration_ns": 100 * MS}, {"gpu_seconds": Decimal("0.2")}),
        (
            {**A, "celery.action": "run", "gpu.count": 1},
            {"duration_ns": 50 * MS},
            {"worker_seconds": Decimal("0.1"), "gpu_seconds": Decimal("0.1")},
        ),
        (
            {**A, "gen_ai.usage.input_tokens": 10, "gen_ai.usage.output_tokens": 0},
            {},
            {"input_tokens": Decimal(10), "output_tokens": Decimal(0)},
        ),
        ({**A, "gen_ai.usage.prompt_tokens": 4}, {}, {"input_tokens": Decimal(4)}),
        (
            {**A, "gen_ai.usage.completion_tokens": 6, "gen_ai.usage.output_tokens": 5},
            {},
            {"output_tokens": Decimal(5)},
        ),
        (
            {**A, "gen_ai.operation.name": "text_completion", "gen_ai.usage.input_tokens": 1},
            {},
            {"input_tokens": Decimal(1)},
        ),
        (
            {**A, "gen_ai.operation.name": "generate_content", "gen_ai.usage.output_tokens": 2},
            {},
            {"output_tokens": Decimal(2)},
        ),
        ({**A, "gen_ai.operation.name": "invoke_agent", "gen_ai.usage.input_tokens": 9}, {}, {}),
        ({**A, "gen_ai.operation.name": "execute_tool", "gen_ai.usage.input_tokens": 9}, {}, {}),
        ({**A, "http.request.method": "POST"}, {"kind": Span.SPAN_KIND_SERVER}, {"api_requests": Decimal(1)}),
        ({**A, "http.method": "GET"}, {"kind": Span.SPAN_KIND_SERVER}, {"api_requests": Decimal(1)}),
        ({**A, "http.method": "GET"}, {"kind": Span.SPAN_KIND_CLIENT}, {}),
        ({**A}, {"kind": Span.SPAN_KIND_SERVER}, {}),
        ({"celery.action": "run"}, {"resource": {"account_id": "from-resource"}}, {"worker_seconds": Decimal("0.1")}),
    ],
)
def test_meters(attrs, kw, expected):
    assert usage(attrs, **kw) == expected


@pytest.mark.parametrize(
    ("attrs", "kw", "expected_reason"),
    [
        ({"celery.action": "run"}, {}, "unattributed"),
        ({"celery.action": "run", "account_id": ""}, {}, "unattributed"),
        ({"celery.action": "run", "account_id": "x" * 257}, {}, "unattributed"),
        ({"celery.action": "run", "account_id": True}, {}, "unattributed"),
        ({**A, "celery.action": "run"}, {"duration_ns": -1}, "negative_duration"),
        ({**A, "celery.action": "run"}, {"duration_ns": 7 * 86_400 * 10**9 + 1}, "duration_too_long"),
        ({**A, "gpu.count": 0}, {}, "invalid_gpu_count"),
        ({**A, "gpu.count": -2}, {}, "invalid_gpu_count"),
        ({**A, "gpu.count": 4097}, {}, "invalid_gpu_count"),
        ({**A, "gpu.count": 1.5}, {}, "invalid_gpu_count"),
        ({**A, "gpu.count": "2"}, {}, "invalid_gpu_count"),
        ({**A, "gen_ai.usage.input_tokens": -1}, {}, "invalid_tokens"),
        ({**A, "gen_ai.usage.input_tokens": 2**63 - 1}, {}, "invalid_tokens"),
        ({**A, "gen_ai.usage.output_tokens": float("nan")}, {}, "invalid_tokens"),
        ({**A, "gen_ai.usage.output_tokens": float("inf")}, {}, "invalid_tokens"),
        ({**A, "gen_ai.usage.output_tokens": "12"}, {}, "invalid_tokens"),
        ({**A, "gen_ai.usage.input_tokens": 5, "gen_ai.usage.output_tokens": -0.5}, {}, "invalid_tokens"),
        ({**A, "celery.action": "run"}, {"span_id": bytes(8)}, "invalid_id"),
        ({**A, "celery.action": "run"}, {"span_id": b"\x01" * 4}, "invalid_id"),
    ],
)
def test_rejections(attrs, kw, expected_reason):
    assert reason(attrs, **kw) == expected_reason


def test_timestamps_outside_the_window_are_rejected():
    future = request({**A, "celery.action": "run"})
    future.resource_spans[0].scope_spans[0].spans[0].end_time_unix_nano = NOW + 301 * 10**9
    future.resource_spans[0].scope_spans[0].spans[0].start_time_unix_nano = NOW + 300 * 10**9
    assert meter_request(future, LIMITS, NOW).rejections[0].reason == "future_timestamp"
    stale = request({**A, "celery.action": "run"})
    span = stale.resource_spans[0].scope_spans[0].spans[0]
    span.end_time_unix_nano = NOW - 30 * 86_400 * 10**9 - 1
    span.start_time_unix_nano = span.end_time_unix_nano - 1
    assert meter_request(stale, LIMITS, NOW).rejections[0].reason == "stale_timestamp"
    assert meter_request(stale, MeteringLimits(max_span_age_seconds=31 * 86_400), NOW).rows


def test_count_only_and_synthetic_and_non_billable():
    result = meter_request(request({"http.method": "GET"}, kind=Span.SPAN_KIND_SERVER), LIMITS, NOW)
    assert (result.rows, result.rejections, dict(result.unattributed)) == ([], [], {"api_requests": 1})
    synthetic = meter_request(
        request({**A, "celery.action": "run"}, resource={"spanmeter.synthetic": True}), LIMITS, NOW
    )
    assert synthetic.rows == [] and [r.meter.code for r in synthetic.synthetic_rows] == ["worker_seconds"]
    plain = meter_request(request({"db.system": "postgresql"}), LIMITS, NOW)
    assert (plain.spans_received, plain.rows, plain.rejections) == (1, [], [])


def test_attribution_values_are_normalised():
    result = meter_request(request({"account_id": 42, "job_id": "j\x00b", "celery.action": "run"}), LIMITS, NOW)
    row = result.rows[0]
    assert (row.account_id, row.job_id) == ("42", "j\ufffdb")  # PostgreSQL text cannot hold NUL


def test_idempotency_keys_are_deterministic_per_span_and_meter():
    a = meter_request(request({**A, "celery.action": "run", "gpu.count": 1}), LIMITS, NOW).rows
    b = meter_request(request({**A, "celery.action": "run", "gpu.count": 1}), LIMITS, NOW + 10**9).rows
    assert [r.idempotency_key for r in a] == [r.idempotency_key for r in b]
    assert len({r.idempotency_key for r in a}) == 2
    assert a[0].idempotency_key == idempotency_key(b"\x02" * 16, b"\x01" * 8, "worker_seconds")
    other = meter_request(request({**A, "celery.action": "run"}, span_id=b"\x03" * 8), LIMITS, NOW).rows
    assert other[0].idempotency_key != a[0].idempotency_key


def test_rejection_keys_are_stable_across_retries():
    first = meter_request(request({"celery.action": "run"}), LIMITS, NOW).rejections[0]
    again = meter_request(request({"celery.action": "run"}), LIMITS, NOW + 5 * 10**9).rejections[0]
    assert first.rejection_key == again.rejection_key and first.payload == again.payload


def test_entry_spans_yield_request_slis_only_for_services_the_producer_may_send():
    from spanmeter.collector.auth import Producer
    from spanmeter.collector.processors.requests import ServiceRequest

    route = {"http.request.method": "GET", "http.route": "docs/<int:pk>/"}
    web = request(route, duration_ns=250 * MS, resource={"service.name": "web"}, kind=Span.SPAN_KIND_SERVER)
    assert meter_request(web, LIMITS, NOW).service_requests == [ServiceRequest("web", "GET docs/<int:pk>/", "ok", 0.25)]
    internal = request(route, resource={"service.name": "web"})
    assert meter_request(internal, LIMITS, NOW).service_requests == []  # not an entry span
    only_worker = Producer(name="worker-token", services=frozenset({"worker"}), meters=None)
    assert meter_request(web, LIMITS, NOW, only_worker).service_requests == []  # cannot speak for "web"
