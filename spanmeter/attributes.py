"""The attribute contract: the exact span and resource attribute keys spanmeter reads.

Producers (``spanmeter.instrumentation`` or any OpenTelemetry SDK) set these keys; the collector's
processors read them. They are part of the public contract: renaming one is a breaking change that needs
a new meter version and a CHANGELOG entry. The README's attribute table mirrors this module.

Attribution keys are read from the span's attributes first and fall back to its resource's attributes.
The same three keys are used as W3C baggage keys between services.
"""

from __future__ import annotations

__all__ = [
    "ACCOUNT_ID",
    "ATTRIBUTION_KEYS",
    "CELERY_ACTION",
    "CELERY_ACTION_RUN",
    "CELERY_TASK_NAME",
    "GEN_AI_BILLABLE_OPERATIONS",
    "GEN_AI_OPERATION_NAME",
    "GEN_AI_PROVIDER_NAME",
    "GEN_AI_REQUEST_MODEL",
    "GEN_AI_RESPONSE_MODEL",
    "GEN_AI_SYSTEM",
    "GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS",
    "GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS",
    "GEN_AI_USAGE_COMPLETION_TOKENS",
    "GEN_AI_USAGE_INPUT_TOKENS",
    "GEN_AI_USAGE_OUTPUT_TOKENS",
    "GEN_AI_USAGE_PROMPT_TOKENS",
    "GEN_AI_USAGE_REASONING_OUTPUT_TOKENS",
    "GPU_COUNT",
    "GPU_MODEL",
    "HTTP_METHOD",
    "HTTP_REQUEST_METHOD",
    "HTTP_ROUTE",
    "JOB_ID",
    "PLAN_CODE",
    "RESERVED_PREFIX",
    "SERVICE_NAME",
    "SYNTHETIC",
    "WORK_UNIT",
]

# Attribution (span attribute, else resource attribute; same keys in W3C baggage).
ACCOUNT_ID = "account_id"
JOB_ID = "job_id"
PLAN_CODE = "plan_code"  # informational: prices come from subscriptions, not from spans
ATTRIBUTION_KEYS = (ACCOUNT_ID, JOB_ID, PLAN_CODE)

# spanmeter's own markers.
RESERVED_PREFIX = "spanmeter."
WORK_UNIT = "spanmeter.work_unit"  # bool true: the span is a billable unit of worker time
SYNTHETIC = "spanmeter.synthetic"  # bool true: synthetic traffic, metered in metrics, never billed

# GPU sections.
GPU_COUNT = "gpu.count"  # int >= 1
GPU_MODEL = "gpu.model"  # free text, e.g. "h100"

# Celery (opentelemetry-instrumentation-celery, legacy names it still emits).
CELERY_ACTION = "celery.action"
CELERY_ACTION_RUN = "run"
CELERY_TASK_NAME = "celery.task_name"

# HTTP server spans (stable name first, legacy second).
HTTP_REQUEST_METHOD = "http.request.method"
HTTP_METHOD = "http.method"
HTTP_ROUTE = "http.route"  # the route template ("api/documents/<int:pk>/"): the request SLIs' operation

# GenAI semantic conventions (current names first, legacy names second).
GEN_AI_OPERATION_NAME = "gen_ai.operation.name"
GEN_AI_BILLABLE_OPERATIONS = frozenset({"chat", "text_completion", "generate_content", "embeddings"})
GEN_AI_USAGE_INPUT_TOKENS = "gen_ai.usage.input_tokens"
GEN_AI_USAGE_OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
GEN_AI_USAGE_PROMPT_TOKENS = "gen_ai.usage.prompt_tokens"  # legacy input
GEN_AI_USAGE_COMPLETION_TOKENS = "gen_ai.usage.completion_tokens"  # legacy output
GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS = "gen_ai.usage.cache_read.input_tokens"  # subset of input
GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS = "gen_ai.usage.cache_creation.input_tokens"  # subset of input
GEN_AI_USAGE_REASONING_OUTPUT_TOKENS = "gen_ai.usage.reasoning.output_tokens"  # subset of output
GEN_AI_RESPONSE_MODEL = "gen_ai.response.model"
GEN_AI_REQUEST_MODEL = "gen_ai.request.model"
GEN_AI_PROVIDER_NAME = "gen_ai.provider.name"
GEN_AI_SYSTEM = "gen_ai.system"  # legacy provider

# Resource.
SERVICE_NAME = "service.name"
