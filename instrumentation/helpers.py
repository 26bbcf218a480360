"""Helpers for what auto-instrumentation cannot see: attribution outside a request, GPU sections, LLM
token usage. Without a configured TracerProvider they are no-ops; they never raise into application code.

    from spanmeter.instrumentation.helpers import attribution, gpu_section, record_llm_usage

    with attribution(account_id="acme", job_id="nightly-42", plan_code="growth"):  # beat job, command
        with gpu_section(count=2, model="h100"):            # bills duration × 2 GPU-seconds
            detect_tables(document)
        response = client.chat.completions.create(...)
        record_llm_usage(input_tokens=response.usage.prompt_tokens,
                         output_tokens=response.usage.completion_tokens,
                         model=response.model, provider="openai")
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from opentelemetry import baggage, context, trace
from opentelemetry.trace import Span

from spanmeter import attributes as A

__all__ = ["attribution", "gpu_section", "record_llm_usage"]

log = logging.getLogger(__name__)
_TRACER_NAME = "spanmeter.instrumentation"


@contextmanager
def attribution(
    account_id: str, job_id: str | None = None, plan_code: str | None = None, synthetic: bool = False
) -> Iterator[None]:
    """Attribute everything started inside the block (spans, enqueued tasks) to ``account_id``.

    Sets the keys as baggage (spanmeter's span processor stamps them on every span that starts; the
    baggage propagator carries them across HTTP and the broker) and on the current span if it records.
    """
    token = None
    try:
        ctx = context.get_current()
        values = {A.ACCOUNT_ID: account_id, A.JOB_ID: job_id, A.PLAN_CODE: plan_code}
        if synthetic:
            values[A.SYNTHETIC] = "true"
        current = trace.get_current_span()
        for key, value in values.items():
            if value is not None:
                ctx = baggage.set_baggage(key, str(value), ctx)
                if current.is_recording():
                    current.set_attribute(key, True if key == A.SYNTHETIC else str(value))
        token = context.attach(ctx)
    except Exception:
        log.debug("setting attribution failed", exc_info=True)
    try:
        yield
    finally:
        if token is not None:
            try:
                context.detach(token)
            except Exception:
                log.debug("restoring the context failed", exc_info=True)


@contextmanager
def gpu_section(count: int, model: str | None = None, name: str = "gpu.section") -> Iterator[Span | None]:
    """A span marking ``count`` GPUs busy for the duration of the block (billed as GPU-seconds)."""
    span = None
    try:
        attributes: dict[str, object] = {A.GPU_COUNT: count}
        if model:
            attributes[A.GPU_MODEL] = model
        span = trace.get_tracer(_TRACER_NAME).start_span(name, attributes=attributes)
    except Exception:
        log.debug("starting a GPU section span failed", exc_info=True)
    if span is None:
        yield None
        return
    with trace.use_span(span, end_on_exit=True, record_exception=True, set_status_on_exception=True):
        yield span


def record_llm_usage(
    input_tokens: int | None = None,
    output_tokens: int | None = None,
    *,
    model: str | None = None,
    provider: str | None = None,
    operation: str = "chat",
    cache_read_input_tokens: int | None = None,
    reasoning_output_tokens: int | None = None,
    span: Span | None = None,
) -> None:
    """Record a model call's token usage on ``span`` (default: the current span), GenAI names."""
    try:
        target = span if span is not None else trace.get_current_span()
        if not target.is_recording():
            return
        values = {
            A.GEN_AI_OPERATION_NAME: operation,
            A.GEN_AI_USAGE_INPUT_TOKENS: input_tokens,
            A.GEN_AI_USAGE_OUTPUT_TOKENS: output_tokens,
            A.GEN_AI_RESPONSE_MODEL: model,
            A.GEN_AI_PROVIDER_NAME: provider,
            A.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS: cache_read_input_tokens,
            A.GEN_AI_USAGE_REASONING_OUTPUT_TOKENS: reasoning_output_tokens,
        }
        for key, value in values.items():
            if value is not None:
                target.set_attribute(key, value)
    except Exception:
        log.debug("recording LLM usage failed", exc_info=True)
