"""Fuzzing the Export handler and the span → usage processors.

1. Structure-aware (hypothesis): generated OTLP requests with hostile attribute values go through the pure
   processor; it never raises, and every span ends in exactly one place (billed, rejected, counted, or not
   billable).
2. Wire level: 10,000 requests, mutated from valid billable ones (bit flips, truncation, splices, random
   bytes, generated structures), are sent to a real `spanmeter serve` with a real database. Every answer
   is OK (with any rejections counted and kept) or INVALID_ARGUMENT; never UNKNOWN or INTERNAL; the
   process never logs an unexpected error and keeps serving.
"""

from __future__ import annotations

import random
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from spanmeter.collector.processors import CURRENT_METERS, REJECT_REASONS, MeteringLimits, meter_request
from support import EXPORT_METHOD, SpanFactory, request_bytes

NOW = 1_795_000_000 * 10**9
KEYS = [
    "account_id",
    "job_id",
    "plan_code",
    "spanmeter.work_unit",
    "spanmeter.synthetic",
    "gpu.count",
    "gpu.model",
    "celery.action",
    "http.request.method",
    "http.method",
    "gen_ai.operation.name",
    "gen_ai.usage.input_tokens",
    "gen_ai.usage.output_tokens",
    "gen_ai.usage.prompt_tokens",
    "gen_ai.usage.completion_tokens",
    "gen_ai.usage.cache_read.input_tokens",
    "service.name",
    "other",
]

scalars = st.one_of(
    st.text(max_size=40).map(lambda s: AnyValue(string_value=s)),
    st.sampled_from(["run", "chat", "embeddings", "invoke_agent", "true", "", "acct-1", "\x00"]).map(
        lambda s: AnyValue(string_value=s)
    ),
    st.integers(min_value=-(2**63), max_value=2**63 - 1).map(lambda i: AnyValue(int_value=i)),
    st.floats(allow_nan=True, allow_infinity=True).map(lambda d: AnyValue(double_value=d)),
    st.booleans().map(lambda b: AnyValue(bool_value=b)),
    st.binary(max_size=20).map(lambda b: AnyValue(bytes_value=b)),
    st.just(AnyValue()),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3).map(lambda items: AnyValue(array_value=ArrayValue(values=items))),
    max_leaves=6,
)
attributes = st.lists(st.tuples(st.sampled_from(KEYS), values), max_size=8)
times = st.integers(min_value=0, max_value=2**64 - 1) | st.integers(min_value=NOW - 10**12, max_value=NOW + 10**12)


@st.composite
def requests(draw) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    for _ in range(draw(st.integers(0, 2))):
        rs = request.resource_spans.add()
        for key, value in draw(attributes):
            rs.resource.attributes.append(KeyValue(key=key, value=value))
        for _ in range(draw(st.integers(0, 2))):
            ss = rs.scope_spans.add()
            for _ in range(draw(st.integers(0, 3))):
                span = ss.spans.add()
                # hostile ids (zero, wrong length) or valid ones unique to this span, so outcomes can be traced
                serial = sum(len(s.spans) for r in request.resource_spans for s in r.scope_spans)
                span.trace_id = draw(st.sampled_from([bytes(16), b"\x01" * 15, serial.to_bytes(16, "big") or b""]))
                span.span_id = draw(st.sampled_from([bytes(8), b"\x02" * 9, (serial + 1).to_bytes(8, "big")]))
                span.kind = draw(st.sampled_from(list(Span.SpanKind.values())))
                span.start_time_unix_nano = draw(times)
                span.end_time_unix_nano = draw(times)
                span.status.code = draw(st.sampled_from([0, 1, 2]))
                for key, value in draw(attributes):
                    span.attributes.append(KeyValue(key=key, value=value))
    return request


@pytest.mark.integration  # thousands of generated cases: the integration tier's CPU budget
@settings(max_examples=3000, deadline=None, suppress_health_check=list(HealthCheck))
@given(requests())
def test_processor_never_raises_and_accounts_for_every_span(request):
    result = meter_request(request, MeteringLimits(), NOW)
    spans = sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
    assert result.spans_received == spans
    # each span has at most one outcome: rejected (once), billed (rows for one or more meters), counted
    # as unattributed, or not billable
    rejected = [(r.trace_id, r.span_id) for r in result.rejections]
    billed = {(r.trace_id, r.span_id) for r in result.rows + result.synthetic_rows}
    assert not set(rejected) & billed
    assert len(rejected) + len(billed) + result.unattributed["api_requests"] <= spans
    for rejection in result.rejections:
        assert rejection.reason in REJECT_REASONS and rejection.payload
    for row in result.rows + result.synthetic_rows:
        assert row.meter is CURRENT_METERS[row.meter.code]
        assert row.quantity.is_finite() and row.quantity >= 0
        assert row.account_id and "\x00" not in row.account_id and len(row.account_id) <= 256
        assert len(row.trace_id) == 32 and len(row.span_id) == 16 and len(row.idempotency_key) == 32


def _random_value(rng: random.Random, depth: int = 0) -> AnyValue:
    kind = rng.randrange(7 if depth < 3 else 6)
    if kind == 0:
        return AnyValue(string_value=rng.choice(["run", "chat", "true", "", "acct-1", "\x00", "é" * rng.randint(0, 9)]))
    if kind == 1:
        return AnyValue(int_value=rng.choice([0, 1, -1, 4096, 4097, 2**63 - 1, -(2**63), rng.randint(-9, 10**10)]))
    if kind == 2:
        return AnyValue(double_value=rng.choice([0.0, -0.0, 1.5, 2.0, float("nan"), float("inf"), -1e308]))
    if kind == 3:
        return AnyValue(bool_value=rng.random() < 0.5)
    if kind == 4:
        return AnyValue(bytes_value=rng.randbytes(rng.randint(0, 8)))
    if kind == 5:
        return AnyValue()
    return AnyValue(array_value=ArrayValue(values=[_random_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]))


def _random_request(rng: random.Random) -> ExportTraceServiceRequest:
    """A structure-aware random request (seeded), with the keys the processors look at."""
    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    for _ in range(rng.randint(0, 3)):
        rs.resource.attributes.append(KeyValue(key=rng.choice(KEYS), value=_random_value(rng)))
    spans = rs.scope_spans.add().spans
    for _ in range(rng.randint(1, 4)):
        span = spans.add()
        span.trace_id, span.span_id = rng.choice([rng.randbytes(16), bytes(16)]), rng.choice([rng.randbytes(8), b"x"])
        span.kind = rng.choice(list(Span.SpanKind.values()))
        span.end_time_unix_nano = NOW + rng.randint(-(10**15), 10**12) if rng.random() < 0.9 else rng.randrange(2**64)
        span.start_time_unix_nano = max(0, span.end_time_unix_nano - rng.randint(-(10**9), 10**11))
        for _ in range(rng.randint(0, 6)):
            span.attributes.append(KeyValue(key=rng.choice(KEYS), value=_random_value(rng)))
    return request


def _mutations(seed_bodies: list[bytes], count: int, rng: random.Random):
    for number in range(count):
        body = bytearray(rng.choice(seed_bodies))
        kind = number % 5
        if kind == 0:  # bit flips
            for _ in range(rng.randint(1, 8)):
                position = rng.randrange(len(body))
                body[position] ^= 1 << rng.randrange(8)
        elif kind == 1:  # truncation
            del body[rng.randrange(1, len(body)) :]
        elif kind == 2:  # splice two requests
            other = rng.choice(seed_bodies)
            cut = rng.randrange(len(body))
            body = body[:cut] + other[rng.randrange(len(other)) :]
        elif kind == 3:  # random bytes over a region
            start = rng.randrange(len(body))
            body[start : start + rng.randint(1, 32)] = rng.randbytes(rng.randint(1, 32))
        else:  # byte duplication / insertion
            start = rng.randrange(len(body))
            body[start:start] = body[start : start + rng.randint(1, 64)]
        yield bytes(body)


def test_ten_thousand_mutated_requests_through_the_real_server(collector):
    f = SpanFactory({"service.name": "fuzz", "account_id": "acct-fuzz"})
    seeds = [
        request_bytes(
            [
                f.span(
                    "run",
                    {
                        "celery.action": "run",
                        "gpu.count": 2,
                        "gen_ai.usage.input_tokens": 5,
                        "http.request.method": "GET",
                    },
                    10**8,
                )
            ]
        ),
        request_bytes([f.span(f"s{i}", {"celery.action": "run", "job_id": f"j{i}"}, 10**7 * i) for i in range(1, 6)]),
        request_bytes([f.span("chat", {"gen_ai.operation.name": "chat", "gen_ai.usage.output_tokens": 9}, 10**6)]),
    ]
    rng = random.Random(20261121)
    bodies = list(_mutations(seeds, 9_000, rng))
    bodies += [_random_request(rng).SerializeToString() for _ in range(1_000)]
    before = collector.metrics()
    outcomes: Counter = Counter()
    with grpc.insecure_channel(collector.endpoint) as channel:
        call = channel.unary_unary(
            EXPORT_METHOD, request_serializer=None, response_deserializer=ExportTraceServiceResponse.FromString
        )

        def send(body: bytes) -> grpc.StatusCode:
            try:
                call(body, timeout=60)
                return grpc.StatusCode.OK
            except grpc.RpcError as err:
                return err.code()

        with ThreadPoolExecutor(8) as pool:
            outcomes.update(pool.map(send, bodies))
    assert sum(outcomes.values()) == 10_000
    assert set(outcomes) <= {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT}, outcomes
    after = collector.metrics()
    counted = {
        code: after[f'spanmeter_export_requests_total{{grpc_code="{code}"}}']
        - before[f'spanmeter_export_requests_total{{grpc_code="{code}"}}']
        for code in ("OK", "INVALID_ARGUMENT")
    }
    assert counted == {
        "OK": outcomes[grpc.StatusCode.OK],
        "INVALID_ARGUMENT": outcomes[grpc.StatusCode.INVALID_ARGUMENT],
    }
    assert outcomes[grpc.StatusCode.OK] > 1000 and outcomes[grpc.StatusCode.INVALID_ARGUMENT] > 1000
    assert not any("unexpected error" in line or "Traceback" in line for line in collector.output)
    assert collector.get("/healthz")[0] == 200
