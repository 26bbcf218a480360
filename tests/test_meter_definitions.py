"""Meters are data: a new meter, or a new version of one, is a new ``MeterDefinition`` registered in a meter
set, and both metering cores (the Python reference, ``usage.meter_request``; the native core,
``spanmeter_native.Meter(build_table(meters))``) meter with it, with no edit of usage.py, rules.py,
native_table.py or Rust. The v1 definitions, frozen, still serialize to the table the native core has
always been given."""

from __future__ import annotations

import random
from dataclasses import replace
from decimal import Decimal

import pytest
import spanmeter_native
from native_cases import NOW, Stats, check, rand_limits, rand_producer, rand_request, rand_value, serialize
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from spanmeter import attributes as A
from spanmeter.billing.ledger.writer import encode_copy
from spanmeter.collector.exporters.rows import compact_row, usage_event_tuple
from spanmeter.collector.processors import CURRENT_METER_SET, MeteringLimits, MeterSet, meter_request
from spanmeter.collector.processors.meters import (
    API_REQUESTS,
    GPU_SECONDS,
    INPUT_TOKENS,
    OUTPUT_TOKENS,
    WORKER_SECONDS,
    AbsentOrIn,
    AllOf,
    Constant,
    Counted,
    CountedValue,
    CountRule,
    FirstString,
    KindIs,
    MeterDefinition,
    MeterRouting,
    OnUnattributed,
    OptionalCount,
    Present,
)
from spanmeter.collector.processors.native import _bounds, to_metering_result
from spanmeter.collector.processors.native_table import build_table
from spanmeter.collector.processors.usage import idempotency_key

LIMITS = MeteringLimits()
MS = 1_000_000

# -- the test-local meters: only definitions ------------------------------------------------------------------

# worker_seconds v2: v1's rules plus two metadata keys, one of them read from an attribute no v1 rule reads
WORKER_SECONDS_V2 = replace(
    WORKER_SECONDS,
    version=2,
    description="v1 plus the retry number and the queue (test)",
    metadata=(
        *WORKER_SECONDS.metadata,
        OptionalCount("celery.retries", "celery.retries", 100),
        FirstString("messaging.destination.name", ("messaging.destination.name",)),
    ),
)
# a brand-new meter with a count rule of its own (its own reject message)
CACHE_READ_TOKENS = MeterDefinition(
    code="cache_read_tokens",
    version=1,
    unit="{token}",
    description="cached input tokens of model calls, billed apart (test)",
    on_unattributed=OnUnattributed.REJECT,
    match=AllOf(
        (
            AbsentOrIn(A.GEN_AI_OPERATION_NAME, A.GEN_AI_BILLABLE_OPERATIONS),
            Present(A.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS),
        )
    ),
    count=CountRule(
        (A.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS,),
        0,
        10**9,
        "invalid_tokens",
        "cache_read_tokens must be a whole number from 0 to 1000000000",
    ),
    quantity=Counted(),
    metadata=(
        FirstString("gen_ai.model", (A.GEN_AI_RESPONSE_MODEL, A.GEN_AI_REQUEST_MODEL)),
        CountedValue("cached"),
    ),
    routing=MeterRouting("spanmeter_billable_tokens_total", ("plan", "=cache_read")),
)
# a brand-new meter every CONSUMER span matches, attributes or not, counted only when attributed
MESSAGES = MeterDefinition(
    code="messages",
    version=1,
    unit="{message}",
    description="one per CONSUMER span (test)",
    on_unattributed=OnUnattributed.COUNT_ONLY,
    match=KindIs(Span.SpanKind.SPAN_KIND_CONSUMER),
    quantity=Constant(1),
    metadata=(FirstString("messaging.system", ("messaging.system",)),),
)
V2_SET = MeterSet(
    (WORKER_SECONDS_V2, GPU_SECONDS, INPUT_TOKENS, OUTPUT_TOKENS, API_REQUESTS, CACHE_READ_TOKENS, MESSAGES)
)
NEW_KEYS = ("celery.retries", "messaging.destination.name", "messaging.system")


@pytest.fixture(scope="module")
def v2_core() -> spanmeter_native.Meter:
    return spanmeter_native.Meter(build_table(V2_SET))


def _value(v: object) -> AnyValue:
    if isinstance(v, bool):
        return AnyValue(bool_value=v)
    if isinstance(v, int):
        return AnyValue(int_value=v)
    return AnyValue(string_value=str(v))


def _request(*spans: tuple[dict[str, object], int]) -> bytes:
    """One resource (account acct-1 unless a span says otherwise), one span per (attributes, kind)."""
    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    rs.resource.attributes.append(KeyValue(key="service.name", value=_value("docs")))
    scope = rs.scope_spans.add()
    for n, (attrs, kind) in enumerate(spans, start=1):
        span = scope.spans.add()
        span.trace_id, span.span_id, span.name, span.kind = b"\x02" * 16, bytes([n]) * 8, f"s{n}", kind
        span.end_time_unix_nano = NOW - 10**9
        span.start_time_unix_nano = span.end_time_unix_nano - 1234 * MS
        for key, v in attrs.items():
            span.attributes.append(KeyValue(key=key, value=_value(v)))
    return request.SerializeToString()


def _both(body: bytes, core: spanmeter_native.Meter, meters: MeterSet):
    """(the reference's result, the native result converted, the native result as the core hands it over)"""
    expected = meter_request(ExportTraceServiceRequest.FromString(body), LIMITS, NOW, meters=meters)
    native = core.meter(body, NOW, *_bounds(LIMITS, NOW), None)
    assert native is not None, "the native core handed the request back"
    return expected, to_metering_result(native, body, meters=meters), native


INTERNAL, CONSUMER = Span.SpanKind.SPAN_KIND_INTERNAL, Span.SpanKind.SPAN_KIND_CONSUMER
ACCT = {"account_id": "acct-1"}
CELERY = {**ACCT, "celery.action": "run", "celery.task_name": "ocr", "celery.retries": 2,
          "messaging.destination.name": "gpu-queue", "gpu.count": 2, "gpu.model": "h100"}  # fmt: skip
GENAI = {**ACCT, "gen_ai.operation.name": "chat", "gen_ai.usage.input_tokens": 1200,
         "gen_ai.usage.output_tokens": 300, "gen_ai.usage.cache_read.input_tokens": 700,
         "gen_ai.response.model": "m-1"}  # fmt: skip


def test_a_v2_meter_and_new_meters_are_metered_identically_by_both_cores(v2_core):
    body = _request(
        (CELERY, INTERNAL),
        (GENAI, INTERNAL),
        ({**ACCT, "messaging.system": "rabbitmq"}, CONSUMER),
        ({}, CONSUMER),  # no attributes, no account: count-only
        ({**GENAI, "gen_ai.usage.cache_read.input_tokens": -1}, INTERNAL),  # the new meter's own check
    )
    expected, got, native = _both(body, v2_core, V2_SET)
    assert got == expected
    assert [(r.meter.code, r.meter.version, r.quantity) for r in expected.rows] == [
        ("worker_seconds", 2, Decimal("1.3")),
        ("gpu_seconds", 1, Decimal("2.6")),
        ("input_tokens", 1, Decimal(1200)),
        ("output_tokens", 1, Decimal(300)),
        ("cache_read_tokens", 1, Decimal(700)),
        ("messages", 1, Decimal(1)),
    ]
    worker, cache_read = expected.rows[0], expected.rows[4]
    assert worker.meter is WORKER_SECONDS_V2 and got.rows[0].meter is WORKER_SECONDS_V2
    assert list(worker.metadata.items()) == [
        ("span.name", "s1"),
        ("service.name", "docs"),
        ("celery.task_name", "ocr"),
        ("celery.retries", 2),
        ("messaging.destination.name", "gpu-queue"),
    ]
    assert list(cache_read.metadata.items()) == [
        ("span.name", "s2"),
        ("service.name", "docs"),
        ("gen_ai.model", "m-1"),
        ("cached", 700),
    ]
    # the key is the span's and the meter code's, whatever the version: a v2 row of a span a v1 row billed is
    # the same event (the ledger keeps the first)
    assert worker.idempotency_key == idempotency_key(b"\x02" * 16, b"\x01" * 8, "worker_seconds")
    # the ledger's bytes: the native core's COPY text is the reference's, and says version 2
    assert native.copy_text == encode_copy(map(usage_event_tuple, expected.rows))
    assert b"\tworker_seconds\t2\t1.3\ts\t" in native.copy_text
    assert native.rows == [compact_row(r) for r in expected.rows]
    assert expected.unattributed == {"messages": 1}
    [rejection] = expected.rejections
    assert (rejection.reason, rejection.message, rejection.meter_codes) == (
        "invalid_tokens",
        "cache_read_tokens must be a whole number from 0 to 1000000000",
        ("input_tokens", "output_tokens", "cache_read_tokens"),
    )


def test_the_same_request_under_the_current_meters_is_v1(v2_core):
    body = _request((CELERY, INTERNAL), (GENAI, INTERNAL), ({}, CONSUMER))
    current, got, _ = _both(body, spanmeter_native.Meter(build_table()), CURRENT_METER_SET)
    assert got == current
    assert [(r.meter.code, r.meter.version) for r in current.rows] == [
        ("worker_seconds", 1), ("gpu_seconds", 1), ("input_tokens", 1), ("output_tokens", 1),
        ("cache_read_tokens", 1),  # a current meter since 6/7: the cached subset of the input count, on its own row
    ]  # fmt: skip
    assert "celery.retries" not in current.rows[0].metadata and not current.unattributed
    v2, _, _ = _both(body, v2_core, V2_SET)
    assert v2.rows[0].idempotency_key == current.rows[0].idempotency_key


@pytest.mark.integration  # a thousand generated requests: the integration tier's CPU budget, as the equivalence tests
def test_generated_requests_are_metered_identically_with_the_v2_set(v2_core):
    stats = Stats()
    for seed in range(1500):
        rng = random.Random(seed)
        limits = rand_limits(rng)
        request = rand_request(rng, limits, NOW)
        for rs in request.resource_spans:  # the attributes only the test-local definitions read
            for ss in rs.scope_spans:
                for span in ss.spans:
                    for key in NEW_KEYS:
                        if rng.random() < 0.3:
                            value = AnyValue(int_value=rng.randint(0, 3)) if rng.random() < 0.5 else rand_value(rng)
                            span.attributes.append(KeyValue(key=key, value=value))
        check(serialize(request, rng), limits, NOW, rand_producer(rng), stats, meters=V2_SET, core=v2_core)
    print("\n" + stats.line("v2 set"))
    for code in ("worker_seconds", "cache_read_tokens", "messages"):
        assert stats.coverage[f"row:{code}"] > 0, stats.coverage
    assert stats.coverage["md:celery.retries"] > 0 and stats.coverage["md:messaging.system"] > 0, stats.coverage
    assert stats.coverage["unattributed:messages"] > 0, stats.coverage


def test_the_v1_definitions_serialize_to_the_table_the_native_core_always_had():
    # the five meters of 1/7, unchanged since (the token subsets of 6/7 are new definitions beside them)
    table = build_table(MeterSet((WORKER_SECONDS, GPU_SECONDS, INPUT_TOKENS, OUTPUT_TOKENS, API_REQUESTS)))
    assert table["meters"] == V1_TABLE_METERS  # == tells tuples from lists, as the native core's parser does
    assert table["span_keys"] == V1_SPAN_KEYS


def test_a_meter_set_is_one_version_of_each_meter_and_definitions_are_checked():
    with pytest.raises(ValueError, match="one version of each meter"):
        MeterSet((WORKER_SECONDS, WORKER_SECONDS_V2))
    with pytest.raises(ValueError, match="no count rule"):
        replace(GPU_SECONDS, version=9, count=None)
    with pytest.raises(ValueError, match=r"not one of usage\.REJECT_REASONS"):
        build_table(MeterSet((replace(CACHE_READ_TOKENS, count=replace(CACHE_READ_TOKENS.count, reason="nope")),)))
    assert V2_SET.bare_kinds == {CONSUMER} and CURRENT_METER_SET.bare_kinds == frozenset()


V1_TABLE_METERS = [
    {
        "code": "worker_seconds",
        "version": 1,
        "unit": "s",
        "reject_unattributed": True,
        "match": ("any", [("eq", "celery.action", "run"), ("true", "spanmeter.work_unit")]),
        "count": None,
        "quantity": ("duration_tenths",),
        "metadata": [("string", "celery.task_name", ["celery.task_name"])],
    },
    {
        "code": "gpu_seconds",
        "version": 1,
        "unit": "s",
        "reject_unattributed": True,
        "match": ("present", "gpu.count"),
        "count": {
            "keys": ["gpu.count"],
            "min": 1,
            "max": 4096,
            "reject": ("invalid_gpu_count", "gpu.count must be an integer from 1 to 4096"),
        },
        "quantity": ("duration_tenths_x_count",),
        "metadata": [("meter_count", "gpu.count"), ("string", "gpu.model", ["gpu.model"])],
    },
    {
        "code": "input_tokens",
        "version": 1,
        "unit": "{token}",
        "reject_unattributed": True,
        "match": (
            "all",
            [
                (
                    "absent_or_in",
                    "gen_ai.operation.name",
                    ["chat", "embeddings", "generate_content", "text_completion"],
                ),
                ("any", [("present", "gen_ai.usage.input_tokens"), ("present", "gen_ai.usage.prompt_tokens")]),
            ],
        ),
        "count": {
            "keys": ["gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens"],
            "min": 0,
            "max": 1000000000,
            "reject": ("invalid_tokens", "input_tokens must be a whole number from 0 to 1000000000"),
        },
        "quantity": ("count",),
        "metadata": [
            ("string", "gen_ai.model", ["gen_ai.response.model", "gen_ai.request.model"]),
            ("string", "gen_ai.provider.name", ["gen_ai.provider.name", "gen_ai.system"]),
            ("string", "gen_ai.operation.name", ["gen_ai.operation.name"]),
            ("opt_count", "gen_ai.usage.cache_read.input_tokens", "gen_ai.usage.cache_read.input_tokens", 1000000000),
            (
                "opt_count",
                "gen_ai.usage.cache_creation.input_tokens",
                "gen_ai.usage.cache_creation.input_tokens",
                1000000000,
            ),
        ],
    },
    {
        "code": "output_tokens",
        "version": 1,
        "unit": "{token}",
        "reject_unattributed": True,
        "match": (
            "all",
            [
                (
                    "absent_or_in",
                    "gen_ai.operation.name",
                    ["chat", "embeddings", "generate_content", "text_completion"],
                ),
                ("any", [("present", "gen_ai.usage.output_tokens"), ("present", "gen_ai.usage.completion_tokens")]),
            ],
        ),
        "count": {
            "keys": ["gen_ai.usage.output_tokens", "gen_ai.usage.completion_tokens"],
            "min": 0,
            "max": 1000000000,
            "reject": ("invalid_tokens", "output_tokens must be a whole number from 0 to 1000000000"),
        },
        "quantity": ("count",),
        "metadata": [
            ("string", "gen_ai.model", ["gen_ai.response.model", "gen_ai.request.model"]),
            ("string", "gen_ai.provider.name", ["gen_ai.provider.name", "gen_ai.system"]),
            ("string", "gen_ai.operation.name", ["gen_ai.operation.name"]),
            ("opt_count", "gen_ai.usage.reasoning.output_tokens", "gen_ai.usage.reasoning.output_tokens", 1000000000),
        ],
    },
    {
        "code": "api_requests",
        "version": 1,
        "unit": "{request}",
        "reject_unattributed": False,
        "match": ("all", [("kind", 2), ("any", [("present", "http.request.method"), ("present", "http.method")])]),
        "count": None,
        "quantity": ("const", 1),
        "metadata": [("string", "http.request.method", ["http.request.method", "http.method"])],
    },
]
V1_SPAN_KEYS = [
    "account_id",
    "celery.action",
    "celery.task_name",
    "gen_ai.operation.name",
    "gen_ai.provider.name",
    "gen_ai.request.model",
    "gen_ai.response.model",
    "gen_ai.system",
    "gen_ai.usage.cache_creation.input_tokens",
    "gen_ai.usage.cache_read.input_tokens",
    "gen_ai.usage.completion_tokens",
    "gen_ai.usage.input_tokens",
    "gen_ai.usage.output_tokens",
    "gen_ai.usage.prompt_tokens",
    "gen_ai.usage.reasoning.output_tokens",
    "gpu.count",
    "gpu.model",
    "http.method",
    "http.request.method",
    "http.route",
    "job_id",
    "plan_code",
    "spanmeter.synthetic",
    "spanmeter.work_unit",
]
