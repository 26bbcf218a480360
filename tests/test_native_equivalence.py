"""Differential tests: the native core (Rust) against the Python reference (``meter_request``).

For every input: when native returns a result, Python's ``decode_request`` must parse the body strictly
(no repaired strings) and every field of the ``MeteringResult`` (rows, synthetic rows, rejections with
reasons, messages and payloads, unattributed counts, service requests, spans received, idempotency keys),
the compact tuples and the COPY text must be identical; when Python cannot parse the body or repairs
strings, native must have fallen back. Run: ``.venv/bin/pytest tests/test_native_equivalence.py -q -s`` (``-s`` shows counts). They fail (never
skip) where the compiled module is missing: ``./scripts/bootstrap.sh`` builds it when cargo is present.
"""

from __future__ import annotations

import os
import random
import time

import pytest
import spanmeter_native
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from native_cases import (
    NOW,
    Stats,
    check,
    mutate,
    mutate_leaf,
    rand_limits,
    rand_producer,
    rand_request,
    serialize,
)

from spanmeter.collector.processors.usage import MeteringLimits

EXAMPLES = int(os.environ.get("NATIVE_EXAMPLES", "5000"))
MUTATIONS = int(os.environ.get("NATIVE_MUTATIONS", "6000"))

HYPOTHESIS_STATS = Stats()


@pytest.mark.integration  # thousands of generated cases: the integration tier's CPU budget
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(st.integers(min_value=0, max_value=2**64 - 1))
def test_generated_requests_are_metered_identically(seed):
    # hypothesis picks the seed; the structure comes from a seeded PRNG (uniform choices over the edge-value
    # pools, which st.randoms() would skew towards the first choice of every pool)
    rng = random.Random(seed)
    limits = rand_limits(rng)
    now = rng.choice([NOW, NOW + 1, 10**9, 1_700_000_000_123_456_789])
    request = rand_request(rng, limits, now)
    body = serialize(request, rng)
    check(body, limits, now, rand_producer(rng), HYPOTHESIS_STATS)


@pytest.mark.integration  # the report of the generated cases above: same tier
def test_generated_requests_report():
    """Runs after the hypothesis test (file order): print the counts; fallbacks on valid input ~0."""
    s = HYPOTHESIS_STATS
    if s.c["cases"] == 0:  # selected alone (-k): generate the cases here instead of skipping
        test_generated_requests_are_metered_identically()
    print("\n" + s.line("hypothesis"))
    print(f"  outcomes: {dict(sorted(s.coverage.items()))}")
    from spanmeter.collector.processors.meters import CURRENT_METERS
    from spanmeter.collector.processors.usage import LEDGER_REASONS, REJECT_REASONS

    # every meter billed, every reason the core decides seen (ledger_refused and key_conflict are the exporter's)
    assert all(s.coverage[f"row:{code}"] > 0 for code in CURRENT_METERS), s.coverage
    assert all(s.coverage[f"reject:{r}"] > 0 for r in REJECT_REASONS if r not in LEDGER_REASONS), s.coverage
    assert s.c["cases"] >= EXAMPLES
    # generated bodies are valid OTLP: every fallback must be explained by Python's own parse result,
    # apart from the constructs native deliberately leaves to Python (none are generated here)
    assert sum(s.unneeded.values()) == 0, s.unneeded
    assert s.c["rows"] > EXAMPLES // 5 and s.c["rejections"] > EXAMPLES // 5 and s.c["synthetic"] > EXAMPLES // 100


def _bench_bodies() -> list[bytes]:
    from _loadgen import RequestFactory, build_template

    bodies = []
    for every in (1, 10):
        factory = RequestFactory([build_template(512, every, seed=k) for k in range(4)], b"equiv!", 1, 1)
        bodies += [factory.next()[0] for _ in range(4)]
    return bodies


def test_bench_requests_never_fall_back():
    stats = Stats()
    now = time.time_ns()
    for body in _bench_bodies():
        check(body, MeteringLimits(), now, None, stats)
    print("\n" + stats.line("bench requests"))
    assert stats.c["fallback"] == 0
    assert stats.c["rows"] == 4 * 512 + 4 * 52


@pytest.mark.integration  # thousands of generated cases: the integration tier's CPU budget
def test_mutated_requests():
    rng = random.Random(20261204)
    seeds = _bench_bodies()[::3]
    for _ in range(120):
        limits = rand_limits(rng)
        seeds.append(serialize(rand_request(rng, limits, NOW), rng))
    seeds = [s for s in seeds if s]
    stats = Stats()
    for i in range(MUTATIONS):
        body = rng.choice(seeds)
        if i % 2:  # framing-preserving: one scalar changed in place (mostly still valid OTLP)
            for _ in range(rng.choice([1, 1, 2, 4])):
                body = mutate_leaf(body, rng)
        else:  # flip / insert / delete / truncate / splice bytes
            for _ in range(rng.choice([1, 1, 1, 2, 3])):
                body = mutate(body, rng, seeds)
        big = len(body) > 20_000
        now = time.time_ns() if big else NOW
        check(body, MeteringLimits() if big else rand_limits(rng), now, rand_producer(rng), stats)
    print("\n" + stats.line("mutations"))
    print(f"  fallback reasons: {dict(stats.fallback_reasons.most_common(12))}")
    assert stats.c["cases"] == MUTATIONS
    assert stats.c["native"] > MUTATIONS // 4  # framing-preserving mutants are mostly valid OTLP, metered natively


def test_random_garbage_never_crashes():
    rng = random.Random(7)
    stats = Stats()
    for n in range(3000):
        body = rng.randbytes(rng.choice([0, 1, 2, 3, 5, 8, 16, 64, 300, 4096]))
        if n % 3 == 0:  # plausible starts: a resource_spans tag and a length
            body = b"\x0a" + bytes([rng.randrange(256)]) + body
        check(body, MeteringLimits(), NOW, None, stats)
    print("\n" + stats.line("garbage"))


def test_deep_nesting_and_hostile_lengths():
    from native_cases import _len_field
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

    stats = Stats()
    natively = []
    for depth in (1, 5, 13, 14, 15, 16, 17, 40, 60, 90, 95, 100, 200, 5000):
        value = AnyValue(string_value="x").SerializeToString()
        for n in range(depth):  # hand-encoded: protobuf itself refuses to build the deepest ones
            value = _len_field(5 if n % 2 else 6, _len_field(1, value if n % 2 else _len_field(2, value)))
        kv = _len_field(1, b"gpu.model") + _len_field(2, value)
        base = ExportTraceServiceRequest()
        span = base.resource_spans.add().scope_spans.add().spans.add(trace_id=b"\x01" * 16, span_id=b"\x02" * 8, kind=2)
        span.attributes.append(KeyValue(key="http.method", value=AnyValue(string_value="GET")))
        span.attributes.append(KeyValue(key="account_id", value=AnyValue(string_value="a")))
        span.start_time_unix_nano, span.end_time_unix_nano = NOW - 10**9, NOW
        span_bytes = span.SerializeToString() + _len_field(9, kv)
        body = _len_field(1, _len_field(2, _len_field(2, span_bytes)))
        before = stats.c["native"]
        check(body, MeteringLimits(), NOW, None, stats)
        natively.append((depth, stats.c["native"] > before))
    print("\n  nesting depth -> metered natively:", natively)
    assert dict(natively)[16] and not dict(natively)[17]
    # lengths and varints beyond the buffer, overlong varints, group wire types, field 0
    for body in [b"\x0a\xff\xff\xff\xff\x0f", b"\x0a\x80\x80\x80\x80\x80\x80\x80\x80\x80\x01", b"\x0b\x0c", b"\x02\x00", b"\x00",
                 b"\x0a\x02\x12\x00" * 3, b"\x0a\x04\x12\x02\x12\x00", b"\x09" + bytes(8), b"\x0d" + bytes(4)]:  # fmt: skip
        check(body, MeteringLimits(), NOW, None, stats)
    print("\n" + stats.line("hostile"))


def test_non_canonical_but_valid_encodings():
    """Overlong (non-minimal) varints for tags, lengths and values, reserved and huge field numbers, fields
    out of order: whatever upb accepts must come out the same, whatever it refuses must fall back."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

    def v(n: int, pad: int = 0) -> bytes:  # a varint with `pad` redundant continuation bytes
        groups = []
        while True:
            groups.append(n & 0x7F)
            n >>= 7
            if not n:
                break
        groups += [0] * pad
        return bytes(g | 0x80 for g in groups[:-1]) + bytes([groups[-1]])

    def field(number: int, payload: bytes, pad_tag: int = 0, pad_len: int = 0) -> bytes:
        return v(number << 3 | 2, pad_tag) + v(len(payload), pad_len) + payload

    def kv(key: str, value: bytes) -> bytes:
        return field(1, key.encode()) + field(2, value)

    stats = Stats()
    for pad in (0, 1, 2, 4):
        gpu = v(3 << 3) + v(2, pad)  # int_value 2, overlong
        attrs = [
            kv("gpu.count", gpu),
            kv("account_id", field(1, b"acct")),
            kv("http.method", field(1, b"GET", pad, pad)),
        ]
        span = (field(1, b"\x01" * 16) + field(2, b"\x02" * 8) + v(6 << 3, pad) + v(2, pad)
                + v(7 << 3 | 1, pad) + (NOW - 10**9).to_bytes(8, "little") + v(8 << 3 | 1) + NOW.to_bytes(8, "little")
                + b"".join(field(9, a, pad, pad) for a in attrs))  # fmt: skip
        for extra in (b"", v(19000 << 3) + b"\x01", v((2**29 - 1) << 3) + b"\x01", v(5 << 3 | 5) + b"abcd"):
            body = field(1, field(2, field(2, span + extra, pad, pad), pad, pad) + field(1, b""), pad, pad)
            check(body, MeteringLimits(), NOW, None, stats)
    # the same request with canonical encoding, for reference
    request = ExportTraceServiceRequest()
    span = request.resource_spans.add().scope_spans.add().spans.add(trace_id=b"\x01" * 16, span_id=b"\x02" * 8, kind=2)
    span.attributes.append(KeyValue(key="gpu.count", value=AnyValue(int_value=2)))
    check(request.SerializeToString(), MeteringLimits(), NOW, None, stats)
    print("\n" + stats.line("non-canonical"))
    assert stats.c["native"] >= 4


def test_native_schema_matches_the_python_descriptors():
    """A field the walker does not know would be skipped as unknown: a newer opentelemetry-proto must not
    add a string field (which upb validates) without the walker learning it."""
    from google.protobuf.descriptor import FieldDescriptor as F
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    names = {F.TYPE_STRING: "string", F.TYPE_BYTES: "bytes", F.TYPE_MESSAGE: "message", F.TYPE_BOOL: "bool",
             F.TYPE_INT64: "int64", F.TYPE_INT32: "int32", F.TYPE_UINT32: "uint32", F.TYPE_DOUBLE: "double",
             F.TYPE_FIXED64: "fixed64", F.TYPE_FIXED32: "fixed32", F.TYPE_ENUM: "enum"}  # fmt: skip
    seen: dict[str, dict[int, str]] = {}

    def walk(d):
        if d.full_name in seen:
            return
        seen[d.full_name] = {f.number: names[f.type] for f in d.fields}
        for f in d.fields:
            if f.message_type is not None:
                walk(f.message_type)

    walk(ExportTraceServiceRequest.DESCRIPTOR)
    assert spanmeter_native.Meter.schema() == seen


def test_table_is_built_from_the_definitions():
    from spanmeter.collector.processors.meters import CURRENT_METERS
    from spanmeter.collector.processors.native_table import build_table

    table = build_table()
    assert [m["code"] for m in table["meters"]] == list(CURRENT_METERS)
    meter = spanmeter_native.Meter(table)
    assert meter.codes == list(CURRENT_METERS)
    bad = dict(table, meters=[dict(table["meters"][0], match=("eq", "not.a.span.key", "x"))])
    with pytest.raises(ValueError, match="not in span_keys"):
        spanmeter_native.Meter(bad)


def test_adapter_entry_point_and_its_fallbacks():
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

    from spanmeter.collector.auth import Producer
    from spanmeter.collector.otlp import decode_request
    from spanmeter.collector.processors.native import STATS, meter_request_native
    from spanmeter.collector.processors.usage import meter_request

    rng = random.Random(5)
    for _ in range(200):
        limits = rand_limits(rng)
        body = serialize(rand_request(rng, limits, NOW), rng)
        producer = rand_producer(rng)
        assert meter_request_native(body, limits, NOW, producer) == meter_request(
            decode_request(body).request, limits, NOW, producer
        )

    request = ExportTraceServiceRequest()
    span = (
        request.resource_spans.add().scope_spans.add().spans.add(trace_id=b"\x01" * 16, span_id=b"\x02" * 8, name="é")
    )
    span.attributes.append(KeyValue(key="spanmeter.work_unit", value=AnyValue(bool_value=True)))
    body = request.SerializeToString()
    assert meter_request_native(body, MeteringLimits(), NOW) is not None
    bad = body.replace("é".encode(), b"\xc3\x28")  # invalid UTF-8 in the span name: Python repairs it
    assert decode_request(bad).replaced_strings == 1
    assert meter_request_native(bad, MeteringLimits(), NOW) is None

    class OtherPolicy:
        name = "x"

        def allows(self, service_name, meter_codes):
            return True

    before = STATS["producer"]
    assert meter_request_native(body, MeteringLimits(), NOW, OtherPolicy()) is None
    assert STATS["producer"] == before + 1
    before = STATS["overflow"]
    assert meter_request_native(body, MeteringLimits(max_span_duration_seconds=10**40), NOW) is None
    assert STATS["overflow"] == before + 1
    assert STATS["panic"] == 0
    named = Producer(name="o'brien", services=None, meters=frozenset())
    result = meter_request_native(body, MeteringLimits(), NOW, named)
    assert result == meter_request(request, MeteringLimits(), NOW, named)
    assert result.rejections[0].message.startswith('producer "o\'brien" may not')


def test_threads_share_one_meter():
    """The GIL is released while metering: two threads meter at once and get the same bytes."""
    from concurrent.futures import ThreadPoolExecutor

    from native_cases import METER

    from spanmeter.collector.processors.native import _bounds

    bodies = _bench_bodies()
    now = time.time_ns()
    bounds = _bounds(MeteringLimits(), now)
    expected = [METER.meter(b, now, *bounds, None).copy_text for b in bodies]
    with ThreadPoolExecutor(2) as pool:
        got = list(pool.map(lambda b: METER.meter(b, now, *bounds, None).copy_text, bodies * 4))
    assert got == expected * 4
