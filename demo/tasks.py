"""The pipeline's Celery tasks. Auto-instrumentation bills their run time; the two helpers add what it
cannot see: a GPU section and an LLM call's token usage."""

from __future__ import annotations

import time

from opentelemetry import trace

from spanmeter.instrumentation.helpers import gpu_section, record_llm_usage

from . import workload
from .celery_app import app

tracer = trace.get_tracer("docpipe")


class ModelUnavailable(Exception):
    """The classification model answered 503 (the flaky documents' first attempt)."""


@app.task(bind=True, name="docpipe.extract_text")
def extract_text(self, document: dict) -> None:
    time.sleep(workload.extract_seconds(document["pages"]))  # OCR / parsing
    detect_tables.delay(document)  # the request's account and job travel with the message
    classify_document.delay(document)


@app.task(bind=True, name="docpipe.detect_tables")
def detect_tables(self, document: dict) -> None:
    with gpu_section(
        count=document["gpus"], model=workload.gpu_model(document["gpus"]), name="detect_tables.inference"
    ):
        time.sleep(workload.gpu_seconds(document["pages"]))


@app.task(bind=True, name="docpipe.classify_document", max_retries=3)
def classify_document(self, document: dict) -> str:
    if document.get("flaky") and self.request.retries == 0:
        time.sleep(0.05)
        raise self.retry(exc=ModelUnavailable("classifier returned 503"), countdown=0.2)
    model = workload.model_for(document["pages"])
    with tracer.start_as_current_span(f"chat {model}", kind=trace.SpanKind.CLIENT):
        time.sleep(workload.LLM_CALL_SECONDS)
        record_llm_usage(
            input_tokens=workload.input_tokens(document["pages"]),
            output_tokens=workload.output_tokens(document["pages"]),
            model=model,
            provider=workload.PROVIDER,
        )
    return "invoice" if document["pages"] > 2 else "receipt"
