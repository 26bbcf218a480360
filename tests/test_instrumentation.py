"""The instrumentation building blocks, with the real SDK: billing-safe sampling, attribution stamping,
baggage that clients cannot forge, the GPU and token helpers, and, end to end against a real collector,
that a 0.1 ratio sampler loses not one billable span."""

from __future__ import annotations

import subprocess
import sys
import time
from decimal import Decimal

import pytest
from opentelemetry import baggage, context, trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, ParentBased, TraceIdRatioBased
from opentelemetry.trace import SpanKind

from spanmeter.collector.processors import MeteringLimits, meter_request
from spanmeter.instrumentation.billable import is_billable
from spanmeter.instrumentation.helpers import attribution, gpu_section, record_llm_usage
from spanmeter.instrumentation.processors import AttributionSpanProcessor, SpanmeterSpanProcessor
from spanmeter.instrumentation.propagation import AttributionSafeBaggagePropagator
from spanmeter.instrumentation.sampling import BillingSafeSampler
from support import exporter, ledger, totals


@pytest.fixture(scope="module")
def global_provider():
    """The process-wide provider the helpers use: everything unsampled, exported through spanmeter's
    processor into memory."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(sampler=BillingSafeSampler(ParentBased(ALWAYS_OFF)))
    provider.add_span_processor(AttributionSpanProcessor())
    provider.add_span_processor(SpanmeterSpanProcessor(memory, schedule_delay_millis=50))
    trace.set_tracer_provider(provider)
    assert trace.get_tracer_provider() is provider, "another test set the global provider first"
    return provider, memory


def _exported(provider, memory) -> dict[str, dict]:
    provider.force_flush()
    spans = {s.name: dict(s.attributes) for s in memory.get_finished_spans()}
    memory.clear()
    return spans


def test_unsampled_billable_spans_are_exported_and_nothing_else(global_provider):
    provider, memory = global_provider
    tracer = trace.get_tracer("test")
    with (
        attribution(account_id="acct-helpers", job_id="job-9", plan_code="growth"),
        tracer.start_as_current_span("request", kind=SpanKind.SERVER) as root,
    ):
        assert not root.get_span_context().trace_flags.sampled  # the app's sampler said no
        with gpu_section(count=2, model="h100"):
            pass
        with tracer.start_as_current_span("llm call"):
            record_llm_usage(1200, 300, model="gpt-4o", provider="openai", cache_read_input_tokens=200)
        with tracer.start_as_current_span("plain db query"):
            pass
    exported = _exported(provider, memory)
    assert set(exported) == {"gpu.section", "llm call"}  # not the root, not the db query
    assert exported["gpu.section"] == {
        "account_id": "acct-helpers",
        "job_id": "job-9",
        "plan_code": "growth",
        "gpu.count": 2,
        "gpu.model": "h100",
    }
    llm = exported["llm call"]
    assert (llm["gen_ai.usage.input_tokens"], llm["gen_ai.usage.output_tokens"]) == (1200, 300)
    assert llm["gen_ai.usage.cache_read.input_tokens"] == 200 and llm["account_id"] == "acct-helpers"
    # outside the block: no attribution is stamped
    with gpu_section(count=1):
        pass
    assert "account_id" not in _exported(provider, memory)["gpu.section"]


def test_sampled_spans_are_all_exported():
    memory = InMemorySpanExporter()
    provider = TracerProvider(sampler=BillingSafeSampler(ALWAYS_ON))
    provider.add_span_processor(SpanmeterSpanProcessor(memory))
    with provider.get_tracer("t").start_as_current_span("anything"):
        pass
    provider.force_flush()
    assert [s.name for s in memory.get_finished_spans()] == ["anything"]
    assert BillingSafeSampler(ALWAYS_OFF).get_description() == "BillingSafeSampler{AlwaysOffSampler}"


def test_inbound_baggage_cannot_carry_attribution():
    carrier = {"baggage": "account_id=evil,job_id=x,plan_code=scale,spanmeter.synthetic=true,team=blue"}
    extracted = AttributionSafeBaggagePropagator().extract(carrier)
    assert dict(baggage.get_all(extracted)) == {"team": "blue"}
    # what trusted code sets travels on (outgoing requests, Celery messages)
    ctx = baggage.set_baggage("account_id", "acme", extracted)
    out: dict[str, str] = {}
    AttributionSafeBaggagePropagator().inject(out, ctx)
    assert "account_id=acme" in out["baggage"] and "team=blue" in out["baggage"]


def test_reserved_baggage_from_another_propagator_is_stripped_too():
    """Without a W3C ``baggage`` header, entries an earlier propagator extracted (Jaeger's ``uberctx-*``,
    OT's ``ot-baggage-*``) must still lose the reserved keys."""
    from opentelemetry.propagators.composite import CompositePropagator
    from opentelemetry.propagators.textmap import TextMapPropagator

    class PrefixBaggage(TextMapPropagator):  # what Jaeger's propagator does with uberctx-* headers
        def extract(self, carrier, context=None, getter=None):
            for key, value in carrier.items():
                if key.startswith("uberctx-"):
                    context = baggage.set_baggage(key[len("uberctx-") :], value, context)
            return context if context is not None else context_api_current()

        def inject(self, carrier, context=None, setter=None):
            pass

        @property
        def fields(self):
            return set()

    def context_api_current():
        return context.get_current()

    composite = CompositePropagator([PrefixBaggage(), AttributionSafeBaggagePropagator()])
    extracted = composite.extract({"uberctx-account_id": "victim", "uberctx-team": "blue"}, context.Context())
    assert dict(baggage.get_all(extracted)) == {"team": "blue"}
    plain = AttributionSafeBaggagePropagator().extract({}, baggage.set_baggage("team", "blue", context.Context()))
    assert dict(baggage.get_all(plain)) == {"team": "blue"}


def _server_span(provider: TracerProvider):
    return provider.get_tracer("t").start_span("GET /x", kind=SpanKind.SERVER, attributes={"http.route": "x/"})


@pytest.mark.parametrize(
    "provider_kwargs, values",
    [
        ({}, {"account_id": "acme", "job_id": "j1", "plan_code": "growth", "spanmeter.synthetic": True}),
        ({}, {"http.route": "changed/", "account_id": "acme"}),  # a re-set key moves to the end, as in the SDK
    ],
)
def test_fast_attribute_write_stores_what_set_attributes_stores(provider_kwargs, values, monkeypatch):
    from opentelemetry.sdk.trace import Span

    from spanmeter.instrumentation.django import set_span_attributes

    provider = TracerProvider(**provider_kwargs)
    fast, slow = _server_span(provider), _server_span(provider)
    with monkeypatch.context() as patch:  # the fast path must not fall back to the SDK's call here
        patch.setattr(Span, "set_attributes", lambda *_: pytest.fail("fell back to set_attributes"))
        set_span_attributes(fast, dict(values))
    slow.set_attributes(dict(values))
    fast.end()
    slow.end()
    assert list(fast.attributes.items()) == list(slow.attributes.items())
    assert fast.dropped_attributes == slow.dropped_attributes == 0


def test_fast_attribute_write_converts_what_the_sdk_converts():
    """A custom resolver may hand a UUID or a str subclass: stored exactly as ``set_attributes`` stores it."""
    import enum
    import uuid

    from spanmeter.instrumentation.django import set_span_attributes

    class Plan(enum.StrEnum):
        GROWTH = "growth"

    values = {"job_id": uuid.UUID(int=7), "plan_code": Plan.GROWTH, "account_id": "acme"}
    provider = TracerProvider()
    fast, slow = _server_span(provider), _server_span(provider)
    set_span_attributes(fast, dict(values))
    slow.set_attributes(dict(values))
    assert dict(fast.attributes) == dict(slow.attributes)
    assert [type(v) for v in fast.attributes.values()] == [type(v) for v in slow.attributes.values()]


def test_fast_attribute_write_defers_to_the_sdk_at_its_limits(caplog):
    from opentelemetry.sdk.trace import SpanLimits

    from spanmeter.instrumentation.django import set_span_attributes

    # value-length limit: the SDK truncates, and so must we
    provider = TracerProvider(span_limits=SpanLimits(max_span_attribute_length=4))
    span = _server_span(provider)
    set_span_attributes(span, {"account_id": "acme-long-name"})
    assert span.attributes["account_id"] == "acme"
    # attribute-count limit: the SDK evicts the oldest and counts it dropped
    provider = TracerProvider(span_limits=SpanLimits(max_span_attributes=2))
    span = _server_span(provider)
    set_span_attributes(span, {"account_id": "acme", "job_id": "j1"})
    assert dict(span.attributes) == {"account_id": "acme", "job_id": "j1"} and span.dropped_attributes == 1
    # an ended span is not changed
    span = _server_span(TracerProvider())
    span.end()
    set_span_attributes(span, {"account_id": "acme"})
    assert "account_id" not in span.attributes


@pytest.mark.integration  # a subprocess or a real server
def test_helpers_are_no_ops_without_a_provider_and_never_raise():
    script = (
        "from spanmeter.instrumentation.helpers import attribution, gpu_section, record_llm_usage\n"
        "with attribution(account_id=None):\n"  # nonsense input: still no exception
        "    with gpu_section(count='two') as span:\n"
        "        record_llm_usage(input_tokens=object(), output_tokens=5)\n"
        "print('ok', span is not None and span.is_recording())\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok False"


@pytest.mark.parametrize(
    ("kind", "attributes"),
    [
        (SpanKind.CONSUMER, {"celery.action": "run"}),
        (SpanKind.PRODUCER, {"celery.action": "apply_async"}),
        (SpanKind.INTERNAL, {"spanmeter.work_unit": True}),
        (SpanKind.INTERNAL, {"spanmeter.work_unit": False}),
        (SpanKind.INTERNAL, {"gpu.count": 1}),
        (SpanKind.CLIENT, {"gen_ai.usage.input_tokens": 3}),
        (SpanKind.CLIENT, {"gen_ai.operation.name": "invoke_agent", "gen_ai.usage.input_tokens": 3}),
        (SpanKind.CLIENT, {"gen_ai.operation.name": "embeddings", "gen_ai.usage.prompt_tokens": 3}),
        (SpanKind.SERVER, {"http.request.method": "GET"}),
        (SpanKind.CLIENT, {"http.request.method": "GET"}),
        (SpanKind.SERVER, {"http.method": "GET"}),
        (SpanKind.SERVER, {}),
        (SpanKind.INTERNAL, {"db.system": "postgresql"}),
    ],
)
def test_the_sdk_side_predicate_agrees_with_the_collector(kind, attributes):
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    provider.get_tracer("t").start_span("s", kind=kind, attributes={"account_id": "a", **attributes}).end()
    span = memory.get_finished_spans()[0]
    result = meter_request(encode_spans([span]), MeteringLimits(), time.time_ns())
    metered = bool(result.rows or result.rejections or result.unattributed or result.synthetic_rows)
    assert is_billable(span.kind, span.attributes) == metered


def test_a_ten_percent_sampler_loses_no_billable_span(collector, module_db):
    provider = TracerProvider(
        resource=Resource.create({"service.name": "sampled-app"}),
        sampler=BillingSafeSampler(ParentBased(TraceIdRatioBased(0.1))),
    )
    provider.add_span_processor(AttributionSpanProcessor())
    provider.add_span_processor(SpanmeterSpanProcessor(exporter(collector.endpoint), schedule_delay_millis=100))
    tracer = provider.get_tracer("app")
    before = collector.metrics()["spanmeter_spans_received_total"]
    sampled_roots = 0
    for number in range(200):
        token = context.attach(baggage.set_baggage("account_id", "acct-sampled"))
        try:
            with tracer.start_as_current_span(f"GET /docs/{number}") as root:
                sampled_roots += root.get_span_context().trace_flags.sampled
                with tracer.start_as_current_span("extract", attributes={"spanmeter.work_unit": True}) as work:
                    work.set_attribute("job_id", f"job-{number}")
                with tracer.start_as_current_span("cache lookup"):
                    pass
        finally:
            context.detach(token)
    provider.force_flush()
    provider.shutdown()
    # every work unit billed (each lasts far under 100 ms: 0.1 s each), whatever the sampler said
    assert totals(module_db, "acct-sampled") == {"worker_seconds": Decimal("20.0")}
    assert ledger(module_db, "SELECT count(DISTINCT job_id) FROM usage_events WHERE account_id = 'acct-sampled'") == [
        (200,)
    ]
    # unsampled non-billable spans stayed home: only sampled traces sent their roots and cache lookups
    received = collector.metrics()["spanmeter_spans_received_total"] - before
    assert received == 200 + 2 * sampled_roots
    assert 0 < sampled_roots < 60


@pytest.mark.parametrize(
    "delegate",
    [ParentBased(ALWAYS_ON), ParentBased(TraceIdRatioBased(0.5)), ParentBased(ALWAYS_OFF), TraceIdRatioBased(0.5)],
    ids=["parentbased-always-on", "parentbased-ratio", "parentbased-always-off", "ratio"],
)
def test_billing_safe_sampler_decides_as_its_delegate_except_drop(delegate):
    from opentelemetry.sdk.trace.sampling import Decision
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, set_span_in_context

    def parent(remote: bool, sampled: bool):
        flags = TraceFlags(TraceFlags.SAMPLED if sampled else TraceFlags.DEFAULT)
        return set_span_in_context(NonRecordingSpan(SpanContext(0x1234, 0x5678, remote, flags)))

    contexts = [None] + [parent(remote, sampled) for remote in (True, False) for sampled in (True, False)]
    safe = BillingSafeSampler(delegate)
    # a ParentBased delegate is rewritten so that the tracer calls it directly (no wrapper on the sampled path)
    assert ("should_sample" in vars(safe)) == isinstance(delegate, ParentBased)
    decisions = set()
    for ctx in contexts:
        for trace_id in (1, 2**127, 2**128 - 1):  # both sides of a 0.5 ratio
            attributes = {"gpu.count": 2}
            expected = delegate.should_sample(ctx, trace_id, "s", SpanKind.INTERNAL, attributes)
            got = safe.should_sample(ctx, trace_id, "s", SpanKind.INTERNAL, attributes)
            if expected.decision is Decision.DROP:
                assert got.decision is Decision.RECORD_ONLY and dict(got.attributes) == attributes
            else:
                assert got.decision is expected.decision and got.attributes == expected.attributes
            decisions.add(expected.decision)
    assert decisions == {Decision.RECORD_AND_SAMPLE, Decision.DROP}  # both paths were exercised


def test_billing_safe_sampler_fast_path_keeps_subclass_overrides():
    from opentelemetry.sdk.trace.sampling import Decision, ParentBasedTraceIdRatio

    # the SDK's parentbased_traceidratio gets the fast path (same decision logic as ParentBased)
    assert "should_sample" in vars(BillingSafeSampler(ParentBasedTraceIdRatio(0.5)))

    class Custom(ParentBased):  # overrides the decision: must not be bypassed
        def should_sample(self, *args, **kwargs):
            return super().should_sample(*args, **kwargs).__class__(Decision.DROP)

    class Wrapper(BillingSafeSampler):  # a subclass of ours may override should_sample: no fast path
        pass

    assert "should_sample" not in vars(BillingSafeSampler(Custom(ALWAYS_ON)))
    got = BillingSafeSampler(Custom(ALWAYS_ON)).should_sample(None, 1, "s", SpanKind.INTERNAL, {"a": 1})
    assert got.decision is Decision.RECORD_ONLY
    assert "should_sample" not in vars(Wrapper(ParentBased(ALWAYS_ON)))
