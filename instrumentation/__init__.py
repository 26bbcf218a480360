"""Instrumentation for services that spanmeter meters.

Available now (the building blocks; the one-import Django/Celery set-up and ``spanmeter demo`` come with
issue 3/5):

- :mod:`.sampling`: :class:`~.sampling.BillingSafeSampler`: a sampler never drops billable usage.
- :mod:`.processors`: :class:`~.processors.SpanmeterSpanProcessor` exports sampled spans plus every
  billable unsampled span; :class:`~.processors.AttributionSpanProcessor` stamps baggage attribution on
  every span at start.
- :mod:`.propagation`: :class:`~.propagation.AttributionSafeBaggagePropagator` strips reserved keys from
  inbound HTTP baggage, so clients cannot choose whom they bill.
- :mod:`.helpers`: ``attribution(...)``, ``gpu_section(...)``, ``record_llm_usage(...)``.

A manual set-up with the official SDK::

    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
    from spanmeter.instrumentation.processors import AttributionSpanProcessor, SpanmeterSpanProcessor
    from spanmeter.instrumentation.sampling import BillingSafeSampler

    provider = TracerProvider(resource=Resource.create({"service.name": "docs-worker"}),
                              sampler=BillingSafeSampler(ParentBased(TraceIdRatioBased(0.1))))
    provider.add_span_processor(AttributionSpanProcessor())
    provider.add_span_processor(SpanmeterSpanProcessor(OTLPSpanExporter(endpoint="http://127.0.0.1:4317")))
    trace.set_tracer_provider(provider)

What "nothing lost" means in-process: the batch queue drops spans when it is full and the exporter gives
up after its timeout; put an OpenTelemetry Collector with a persistent queue in front of spanmeter.
"""
