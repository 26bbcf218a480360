"""Send a few billable spans to a running `spanmeter serve` with the official OTLP/gRPC exporter.

    .venv/bin/python examples/send_spans.py            # endpoint from OTEL_EXPORTER_OTLP_ENDPOINT or 127.0.0.1:4317
    .venv/bin/spanmeter usage --account acme

It emits, for account "acme" on plan "starter": a Celery-style task run of 1.23 s (bills 1.3 worker
seconds), a 2 s GPU section on 2 GPUs (4.0 GPU seconds), an LLM chat call with 1200 input and 300 output
tokens, and one HTTP server request.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence

from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind


class Outcome(SpanExporter):
    """Passes spans to ``exporter`` and remembers whether every export succeeded."""

    def __init__(self, exporter: SpanExporter) -> None:
        self.exporter = exporter
        self.failed = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        result = self.exporter.export(spans)
        if result is not SpanExportResult.SUCCESS:
            self.failed += len(spans)
        return result

    def shutdown(self) -> None:
        self.exporter.shutdown()


def main() -> int:
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")
    provider = TracerProvider(resource=Resource.create({"service.name": "example-worker", "plan_code": "starter"}))
    outcome = Outcome(OTLPSpanExporter(endpoint=endpoint, insecure=True, timeout=10))
    provider.add_span_processor(BatchSpanProcessor(outcome))
    tracer = provider.get_tracer("spanmeter.example")
    now = time.time_ns()
    attribution = {"account_id": "acme", "job_id": "job-42"}
    with tracer.start_as_current_span(
        "POST /documents",
        kind=SpanKind.SERVER,
        start_time=now - 3_000_000_000,
        attributes={**attribution, "http.request.method": "POST"},
        end_on_exit=False,
    ) as s:
        s.end(end_time=now - 2_900_000_000)
    task = tracer.start_span(
        "run/extract_text",
        kind=SpanKind.CONSUMER,
        start_time=now - 2_000_000_000,
        attributes={**attribution, "celery.action": "run", "celery.task_name": "extract_text"},
    )
    task.end(end_time=now - 2_000_000_000 + 1_230_000_000)
    gpu = tracer.start_span(
        "detect_tables", start_time=now - 4_000_000_000, attributes={**attribution, "gpu.count": 2, "gpu.model": "l4"}
    )
    gpu.end(end_time=now - 2_000_000_000)
    llm = tracer.start_span(
        "chat gpt-4o-mini",
        kind=SpanKind.CLIENT,
        start_time=now - 1_000_000_000,
        attributes={
            **attribution,
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": "openai",
            "gen_ai.request.model": "gpt-4o-mini",
            "gen_ai.usage.input_tokens": 1200,
            "gen_ai.usage.output_tokens": 300,
        },
    )
    llm.end(end_time=now - 500_000_000)
    provider.shutdown()  # flushes; the exporter returns once the collector has committed
    if outcome.failed:
        print(
            f"could not send {outcome.failed} of 4 spans to {endpoint}: is `spanmeter serve` running there? "
            "(set OTEL_EXPORTER_OTLP_ENDPOINT for another address)",
            file=sys.stderr,
        )
        return 1
    print(f"sent 4 spans for account acme to {endpoint}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
