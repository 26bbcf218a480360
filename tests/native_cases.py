"""Request generators and the differential check shared by the equivalence tests and the benchmark."""

from __future__ import annotations

import random
import sys
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "bench"))  # the ingest bench's request templates

import spanmeter_native  # noqa: E402
from google.protobuf.message import DecodeError  # noqa: E402
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest  # noqa: E402
from opentelemetry.proto.common.v1.common_pb2 import (  # noqa: E402
    AnyValue,
    ArrayValue,
    EntityRef,
    InstrumentationScope,
    KeyValue,
    KeyValueList,
)
from opentelemetry.proto.resource.v1.resource_pb2 import Resource  # noqa: E402
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span  # noqa: E402

from spanmeter.billing.ledger.writer import encode_copy  # noqa: E402
from spanmeter.collector.auth import Producer  # noqa: E402
from spanmeter.collector.exporters.rows import compact_row, usage_event_tuple  # noqa: E402
from spanmeter.collector.otlp import UnparseableRequest, count_spans, decode_request  # noqa: E402
from spanmeter.collector.processors.native import _bounds, meter, to_metering_result  # noqa: E402
from spanmeter.collector.processors.native_table import producer_argument  # noqa: E402
from spanmeter.collector.processors.rules import CURRENT_METER_SET, MeterSet  # noqa: E402
from spanmeter.collector.processors.usage import _RESOURCE_KEYS, _SPAN_KEYS, MeteringLimits, meter_request  # noqa: E402

METER = meter()
NOW = 1_795_000_000 * 10**9
KEYS = [*sorted(_SPAN_KEYS | _RESOURCE_KEYS), "other", "account_id ", "Account_id", "gpu.count.x", ""]
SPECIAL = [
    "run", "Run", "chat", "text_completion", "generate_content", "embeddings", "invoke_agent", "true", "TRUE",
    "True", "tRuE", "true ", "truе", "", "acct-1", "\x00", "a\x00b", "GET", "h100", "/api/<int:pk>/", "0", "-1",
    "İ", "\u212a",
]  # fmt: skip
CHARS = (
    "abcxyz09 _-./:\"'{}"
    + "\x00\\\t\n\r\x08\x0c\x1f\x7f\x80"
    + "é€\u2028\ufffd\ufeffİ\u212a\u0130ß"
    + "😀\U0010ffff\U00010000"
)
INTS = [0, 1, -1, 2, 4095, 4096, 4097, 10**9, 10**9 + 1, 2**31, 2**63 - 1, -(2**63), 123456789]
DOUBLES = [
    0.0, -0.0, 1.0, 1.5, 2.0, 4096.0, 4097.0, 1e9, 1e9 + 1, 999999999.5, float("nan"), float("inf"),
    float("-inf"), -1.0, 2.0**63, 2.0**64, 1e300, 5e-324, 3.0,
]  # fmt: skip
PRODUCER_NAMES = ["docs", "o'brien", 'qu"ote', "é\\x"]
SERVICES = ["svc-a", "svc-b", "", "svc-\x00", "s\tx"]


def rand_text(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.35:
        return rng.choice(SPECIAL)
    if roll < 0.85:
        return "".join(rng.choice(CHARS) for _ in range(rng.randint(0, 12)))
    # long strings around the 128 / 256 / 512 code point bounds, sometimes with non-BMP characters
    n = rng.choice([127, 128, 129, 255, 256, 257, 511, 512, 513, 600])
    filler = rng.choice(["a", "é", "😀", "\x00", "\\"])
    return filler * n if rng.random() < 0.5 else "".join(rng.choice(CHARS) for _ in range(n))


def rand_value(rng: random.Random, depth: int = 0) -> AnyValue:
    kind = rng.randrange(10 if depth < 3 else 7)
    if kind in (0, 1):
        return AnyValue(string_value=rand_text(rng))
    if kind == 2:
        return AnyValue(int_value=rng.choice(INTS) if rng.random() < 0.7 else rng.randint(-(2**63), 2**63 - 1))
    if kind == 3:
        return AnyValue(double_value=rng.choice(DOUBLES) if rng.random() < 0.7 else rng.uniform(-1e10, 1e10))
    if kind == 4:
        return AnyValue(bool_value=rng.random() < 0.5)
    if kind == 5:
        return rng.choice(
            [
                AnyValue(),
                AnyValue(bytes_value=rng.randbytes(rng.randint(0, 6))),
                AnyValue(string_value_strindex=rng.randint(0, 5)),
            ]
        )
    if kind == 6:
        return AnyValue(string_value=rng.choice(SPECIAL))
    if kind in (7, 8):
        return AnyValue(array_value=ArrayValue(values=[rand_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]))
    return AnyValue(kvlist_value=KeyValueList(values=[rand_kv(rng, depth + 1) for _ in range(rng.randint(0, 3))]))


def rand_kv(rng: random.Random, depth: int = 0) -> KeyValue:
    key = rng.choice(KEYS)
    if rng.random() < 0.05:
        return KeyValue(key=key)  # no value at all: still "present"
    return KeyValue(key=key, value=rand_value(rng, depth))


def rand_attrs(rng: random.Random, n: int) -> list[KeyValue]:
    attrs = [rand_kv(rng) for _ in range(rng.randint(0, n))]
    if attrs and rng.random() < 0.3:  # duplicate keys: the later one wins
        attrs.append(KeyValue(key=rng.choice(attrs).key, value=rand_value(rng)))
    return attrs


def billable_attrs(rng: random.Random) -> list[KeyValue]:
    """Attributes that usually match a meter and usually pass validation."""

    def kv(k, v):
        if isinstance(v, bool):
            return KeyValue(key=k, value=AnyValue(bool_value=v))
        if isinstance(v, int):
            return KeyValue(key=k, value=AnyValue(int_value=v))
        if isinstance(v, float):
            return KeyValue(key=k, value=AnyValue(double_value=v))
        return KeyValue(key=k, value=AnyValue(string_value=v))

    out = []
    for _ in range(rng.randint(1, 3)):
        pick = rng.randrange(6)
        if pick == 0:
            out += [kv("celery.action", "run"), kv("celery.task_name", rand_text(rng))]
        elif pick == 1:
            out += [kv("spanmeter.work_unit", rng.choice([True, "true", "TRUE", "yes"]))]
        elif pick == 2:
            out += [
                kv("gpu.count", rng.choice([1, 2, 8, 4096, 3.0])),
                kv("gpu.model", rng.choice(["h100", "a100", "", rand_text(rng)])),
            ]
        elif pick == 3:
            out += [kv(rng.choice(["gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens"]), rng.choice([0, 12, 1000, 5.0, 10**9])),
                    kv(rng.choice(["gen_ai.usage.output_tokens", "gen_ai.usage.completion_tokens"]), rng.choice([0, 7, 99])),
                    kv(rng.choice(["gen_ai.usage.cache_read.input_tokens", "gen_ai.usage.cache_creation.input_tokens"]), rng.choice([3, -1, 2.5, 4.0])),
                    kv("gen_ai.usage.reasoning.output_tokens", rng.choice([1, 10**10])),
                    kv(rng.choice(["gen_ai.response.model", "gen_ai.request.model"]), rand_text(rng)),
                    kv(rng.choice(["gen_ai.provider.name", "gen_ai.system"]), rand_text(rng))]  # fmt: skip
            if rng.random() < 0.5:
                out.append(kv("gen_ai.operation.name", rng.choice(["chat", "embeddings", "invoke_agent", ""])))
        elif pick == 4:
            out += [kv(rng.choice(["http.request.method", "http.method"]), rng.choice(["GET", "POST", ""])),
                    kv("http.route", rng.choice(["/a/<pk>", "", rand_text(rng)]))]  # fmt: skip
        else:
            out += [kv(rng.choice(["account_id", "job_id", "plan_code"]), rng.choice([rand_text(rng), 42, -7]))]
    if rng.random() < 0.1:
        out.append(kv("spanmeter.synthetic", rng.choice([True, "true", "True", False, "false", 1])))
    if rng.random() < 0.8:
        out.append(kv("account_id", rng.choice(["acct_00001", "acct\t\\n", "ü" * 3, 17])))
    rng.shuffle(out)
    return out


def rand_times(rng: random.Random, limits: MeteringLimits, now: int) -> tuple[int, int]:
    max_d, oldest, newest = _bounds(limits, now)
    if rng.random() < 0.6 and oldest <= newest:  # plausible: ends within the window, lasts < 1 min
        end = rng.randint(max(oldest, 0), min(newest, 2**64 - 1))
        return max(end - rng.randint(0, min(max_d, 6 * 10**10)) if max_d > 0 else end, 0), end
    end = rng.choice(
        [now, now - 10**9, newest, newest + 1, newest - 1, oldest, oldest - 1, oldest + 1, 0, 2**64 - 1,
         rng.randint(oldest, newest) if oldest <= newest else now, rng.randrange(2**64)]
    )  # fmt: skip
    end = min(max(end, 0), 2**64 - 1)
    d = rng.choice(
        [
            0,
            1,
            10**8 - 1,
            10**8,
            10**8 + 1,
            10**9,
            max_d,
            max_d + 1,
            max_d - 1,
            -1,
            -(10**9),
            rng.randint(0, 10**11),
            2**64,
        ]
    )
    start = min(max(end - d, 0), 2**64 - 1)
    return start, end


def rand_limits(rng: random.Random) -> MeteringLimits:
    return rng.choice(
        [
            MeteringLimits(),
            MeteringLimits(),
            MeteringLimits(1, 10, 0),
            MeteringLimits(0, 0, 0),
            MeteringLimits(86_400, 10**12, 10**9),
        ]
    )


def rand_producer(rng: random.Random):
    if rng.random() < 0.6:
        return None
    services = rng.choice([None, frozenset({"svc-a"}), frozenset(SERVICES), frozenset()])
    meters = rng.choice([None, frozenset({"worker_seconds", "api_requests"}), frozenset(METER.codes), frozenset()])
    accounts = rng.choice(
        [None, None, frozenset({"acct_00001"}), frozenset({"acct*"}), frozenset({"ü*", "acct\t\\n"}), frozenset({"*x"})]
    )
    return Producer(name=rng.choice(PRODUCER_NAMES), services=services, meters=meters, accounts=accounts)


def rand_request(rng: random.Random, limits: MeteringLimits, now: int) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    for _ in range(rng.randint(0, 3)):
        rs = request.resource_spans.add()
        if rng.random() < 0.9:
            rs.resource.CopyFrom(Resource(attributes=rand_attrs(rng, 5)))
            if rng.random() < 0.05:
                rs.resource.attributes.append(KeyValue(key="spanmeter.synthetic", value=AnyValue(bool_value=True)))
            if rng.random() < 0.5:
                rs.resource.attributes.append(
                    KeyValue(key="service.name", value=AnyValue(string_value=rng.choice(SERVICES)))
                )
            if rng.random() < 0.1:
                rs.resource.entity_refs.append(EntityRef(type=rand_text(rng), id_keys=[rand_text(rng)]))
            if rng.random() < 0.1:
                rs.resource.dropped_attributes_count = rng.randint(0, 2**32 - 1)
        if rng.random() < 0.2:
            rs.schema_url = rand_text(rng)
        for _ in range(rng.randint(0, 3)):
            ss = rs.scope_spans.add()
            if rng.random() < 0.5:
                ss.scope.CopyFrom(InstrumentationScope(name=rand_text(rng), version="1", attributes=rand_attrs(rng, 2)))
            for _ in range(rng.randint(0, 5)):
                span = ss.spans.add()
                roll = rng.random()
                span.trace_id = (
                    rng.randbytes(16) if roll < 0.8 else rng.choice([bytes(16), b"", b"\x01" * 15, b"\x01" * 17])
                )
                roll = rng.random()
                span.span_id = rng.randbytes(8) if roll < 0.8 else rng.choice([bytes(8), b"", b"\x02" * 7, b"\x02" * 9])
                span.kind = rng.choice([0, 1, 2, 2, 3, 4, 5, 5, 6, 2**31 - 1, -1])
                span.start_time_unix_nano, span.end_time_unix_nano = rand_times(rng, limits, now)
                if rng.random() < 0.9:
                    span.name = rand_text(rng)
                if rng.random() < 0.4:
                    span.status.code = rng.choice([0, 1, 2, 3, -2])
                    if rng.random() < 0.3:
                        span.status.message = rand_text(rng)
                if rng.random() < 0.1:
                    span.trace_state = rand_text(rng)
                    span.parent_span_id = rng.randbytes(8)
                    span.flags = rng.randint(0, 2**32 - 1)
                    span.dropped_attributes_count = 3
                if rng.random() < 0.1:
                    span.events.add(time_unix_nano=5, name=rand_text(rng), attributes=rand_attrs(rng, 2))
                if rng.random() < 0.1:
                    span.links.add(
                        trace_id=rng.randbytes(16),
                        span_id=rng.randbytes(8),
                        trace_state="x",
                        attributes=rand_attrs(rng, 2),
                    )
                attrs = billable_attrs(rng) if rng.random() < 0.6 else []
                attrs += rand_attrs(rng, 6)
                rng.shuffle(attrs)
                span.attributes.extend(attrs)
    return request


def _len_field(field: int, payload: bytes) -> bytes:
    out = bytearray()
    tag = (field << 3) | 2
    for v in (tag, len(payload)):
        while True:
            b = v & 0x7F
            v >>= 7
            if v:
                out.append(b | 0x80)
            else:
                out.append(b)
                break
    return bytes(out) + payload


def serialize(request: ExportTraceServiceRequest, rng: random.Random) -> bytes:
    """The request's bytes, sometimes in a valid but non-canonical layout: the resource after its scope_spans,
    scalar fields of a span sent twice (the last wins), unknown fields."""
    if rng.random() < 0.6:
        return request.SerializeToString()
    out = bytearray()
    for rs in request.resource_spans:
        if rng.random() < 0.5:
            rs_bytes = ResourceSpans(scope_spans=rs.scope_spans).SerializeToString()
            rs_bytes += ResourceSpans(resource=rs.resource, schema_url=rs.schema_url).SerializeToString()
        else:
            parts = []
            for ss in rs.scope_spans:
                spans = b""
                for span in ss.spans:
                    decoy = Span(
                        name=rand_text(rng),
                        kind=rng.choice([1, 2, 5]),
                        trace_id=rng.randbytes(16),
                        end_time_unix_nano=7,
                    )
                    body = span.SerializeToString()
                    if rng.random() < 0.5:
                        body = decoy.SerializeToString() + body
                    if rng.random() < 0.3:
                        body += b"\xf8\x06\x01"  # unknown varint field 111
                    spans += _len_field(2, body)
                parts.append(
                    _len_field(2, ScopeSpans(scope=ss.scope, schema_url=ss.schema_url).SerializeToString() + spans)
                )
            rs_bytes = ResourceSpans(resource=rs.resource, schema_url=rs.schema_url).SerializeToString() + b"".join(
                parts
            )
        out += _len_field(1, rs_bytes)
    if rng.random() < 0.3:
        out += _len_field(77, b"unknown\xff")  # unknown length-delimited field: not a string, not validated
    return bytes(out)


# ---------------------------------------------------------------------------------------------------
def python_copy(rows) -> bytes:
    """The COPY text the ledger writer stages for the reference's rows (what the native core must equal)."""
    return encode_copy(map(usage_event_tuple, rows))


class Stats:
    def __init__(self) -> None:
        self.c: Counter = Counter()
        self.fallback_reasons: Counter = Counter()
        self.unneeded: Counter = Counter()  # fallbacks on bodies Python parses strictly as-is
        self.coverage: Counter = Counter()  # rows per meter, rejections per reason, other outcomes

    def line(self, label: str) -> str:
        c = self.c
        return (
            f"{label}: {c['cases']} cases; native results {c['native']} (rows {c['rows']}, synthetic {c['synthetic']}, "
            f"rejections {c['rejections']}, service requests {c['service_requests']}); fallbacks {c['fallback']} "
            f"(python unparseable {c['py_unparseable']}, strict parse failed/repaired {c['py_repaired']}, "
            f"python strict-ok {sum(self.unneeded.values())}: {dict(self.unneeded)})"
        )


def check(
    body: bytes,
    limits: MeteringLimits,
    now: int,
    producer,
    stats: Stats,
    meters: MeterSet = CURRENT_METER_SET,
    core: spanmeter_native.Meter | None = None,
) -> None:
    """The differential oracle for one body: metered with ``meters`` by the reference and by ``core`` (the
    native core built from ``build_table(meters)``; the current one unless given)."""
    stats.c["cases"] += 1
    max_d, oldest, newest = _bounds(limits, now)
    native = (core or METER).meter_or_reason(body, now, max_d, oldest, newest, producer_argument(producer))
    try:
        decoded = decode_request(body)
        py_error = None
    except UnparseableRequest as exc:
        decoded, py_error = None, exc
    try:  # decode_request's first, strict step (it may then succeed leniently with 0 replaced strings, when
        ExportTraceServiceRequest.FromString(body)  # the invalid string was overwritten by a later duplicate)
        strict = True
    except DecodeError:
        strict = False
    # the span counters (framing only: what the receiver's span limit reads before decoding) agree with
    # each other on every body, and with the decode on every body the strict parse accepts
    framed = spanmeter_native.count_spans(body)
    assert framed == count_spans(body), (framed, count_spans(body))
    if strict and framed is not None:
        assert framed == sum(len(ss.spans) for rs in decoded.request.resource_spans for ss in rs.scope_spans)
    if isinstance(native, str):
        stats.c["fallback"] += 1
        stats.fallback_reasons[native] += 1
        if decoded is None:
            stats.c["py_unparseable"] += 1
        elif not strict:
            stats.c["py_repaired"] += 1
        else:
            stats.unneeded[native] += 1
        return
    assert isinstance(native, spanmeter_native.MeterResult)
    assert py_error is None, f"native accepted a body Python cannot parse: {py_error}"
    assert strict, "native accepted a body the strict parse refuses"
    assert decoded.replaced_strings == 0, "native accepted a body Python had to repair"
    expected = meter_request(decoded.request, limits, now, producer, meters)
    got = to_metering_result(native, body, meters=meters)
    stats.c["native"] += 1
    stats.c["rows"] += len(expected.rows)
    stats.c["synthetic"] += len(expected.synthetic_rows)
    stats.c["rejections"] += len(expected.rejections)
    stats.c["service_requests"] += len(expected.service_requests)
    cov = stats.coverage
    cov.update(f"row:{r.meter.code}" for r in expected.rows)
    cov.update(f"synthetic:{r.meter.code}" for r in expected.synthetic_rows)
    cov.update(f"reject:{r.reason}" for r in expected.rejections)
    cov.update(f"unattributed:{code}" for code in expected.unattributed)
    cov.update(f"sli:{r.outcome}" for r in expected.service_requests)
    cov.update(f"md:{k}" for r in expected.rows for k in r.metadata)
    assert got.spans_received == expected.spans_received
    assert native.copy_text == python_copy(expected.rows)
    for mine, ref in ((got.rows, expected.rows), (got.synthetic_rows, expected.synthetic_rows)):
        assert len(mine) == len(ref)
        for a, b in zip(mine, ref, strict=True):
            assert a == b
            assert a.meter is b.meter
            assert str(a.quantity) == str(b.quantity)
            assert list(a.metadata.items()) == list(b.metadata.items())
            assert [type(v) for v in a.metadata.values()] == [type(v) for v in b.metadata.values()]
    for compact, ref in ((native.rows, expected.rows), (native.synthetic_rows, expected.synthetic_rows)):
        assert compact == [compact_row(r) for r in ref]  # what the exporter's metrics read, from either path
    assert got.rejections == expected.rejections
    assert got.unattributed == expected.unattributed
    assert got.service_requests == expected.service_requests
    assert [type(x.duration_seconds) for x in got.service_requests] == [float] * len(got.service_requests)
    assert got == expected


def mutate(body: bytes, rng: random.Random, others: list[bytes]) -> bytes:
    b = bytearray(body)
    if not b:
        return rng.randbytes(rng.randint(0, 16))
    kind = rng.randrange(8)
    if kind == 0:  # bit flips
        for _ in range(rng.randint(1, 4)):
            p = rng.randrange(len(b))
            b[p] ^= 1 << rng.randrange(8)
    elif kind == 1:  # truncation
        del b[rng.randrange(len(b)) :]
    elif kind == 2:  # splice two bodies
        other = rng.choice(others) or b"\x00"
        cut = rng.randrange(len(b))
        b = b[:cut] + other[rng.randrange(len(other)) :]
    elif kind == 3:  # random bytes over a region
        s = rng.randrange(len(b))
        b[s : s + rng.randint(1, 8)] = rng.randbytes(rng.randint(1, 8))
    elif kind == 4:  # duplication / insertion
        s = rng.randrange(len(b))
        b[s:s] = b[s : s + rng.randint(1, 32)]
    elif kind == 5:  # deletion
        s = rng.randrange(len(b))
        del b[s : s + rng.randint(1, 8)]
    elif kind == 6:  # a byte set to a "dangerous" value (0x80 continuation, 0xff, wire-type changes)
        p = rng.randrange(len(b))
        b[p] = rng.choice([0x00, 0x80, 0xFF, 0xC0, 0xED, 0x7F, b[p] ^ 0x07, b[p] + 1 & 0xFF, b[p] - 1 & 0xFF])
    else:  # a single byte inserted
        p = rng.randrange(len(b) + 1)
        b[p:p] = bytes([rng.randrange(256)])
    return bytes(b)


def leaves(body: bytes) -> list[tuple[int, int, int]]:
    """(start, end, wire type) of every scalar value in a valid body, following the OTLP descriptors."""
    from google.protobuf.descriptor import FieldDescriptor as F

    out: list[tuple[int, int, int]] = []

    def varint(p: int) -> tuple[int, int]:
        v = s = 0
        while True:
            x = body[p]
            p += 1
            v |= (x & 0x7F) << s
            s += 7
            if not x & 0x80:
                return v, p

    def walk(start: int, end: int, desc) -> None:
        p = start
        while p < end:
            tag, p = varint(p)
            number, wt = tag >> 3, tag & 7
            field = desc.fields_by_number.get(number)
            if wt == 0:
                _, q = varint(p)
            elif wt == 1:
                q = p + 8
            elif wt == 5:
                q = p + 4
            elif wt == 2:
                n, p = varint(p)
                q = p + n
                if field is not None and field.type == F.TYPE_MESSAGE:
                    walk(p, q, field.message_type)
                    p = q
                    continue
            else:
                return
            out.append((p, q, wt))
            p = q

    try:
        walk(0, len(body), ExportTraceServiceRequest.DESCRIPTOR)
    except IndexError:
        return []
    return out


def mutate_leaf(body: bytes, rng: random.Random) -> bytes:
    """A framing-preserving mutation: one scalar value changed in place (same length)."""
    spots = leaves(body)
    if not spots:
        return mutate(body, rng, [body])
    start, end, wt = rng.choice(spots)
    b = bytearray(body)
    if end == start:
        return body
    if wt in (1, 5):  # fixed64 / fixed32 / double: random bytes, or a small delta around the value
        if rng.random() < 0.5:
            b[start:end] = rng.randbytes(end - start)
        else:
            width = end - start
            v = int.from_bytes(b[start:end], "little") + rng.choice([-1, 1, -(10**9), 10**9, 10**8])
            b[start:end] = (v % (1 << (8 * width))).to_bytes(width, "little")
    elif wt == 0:  # varint: new low bits, same length and continuation bits
        for i in range(start, end):
            b[i] = (b[i] & 0x80) | rng.randrange(128)
    else:  # string / bytes content
        for _ in range(rng.randint(1, 3)):
            i = rng.randrange(start, end)
            b[i] = rng.choice([rng.randrange(0x20, 0x7F), 0x00, 0x5C, 0x09, 0x0A, rng.randrange(256)])
    return bytes(b)
