"""Which spans bill: the SDK-side mirror of the collector's meter matching (``spanmeter.collector.processors``).

``is_billable(kind, attributes)`` answers from a span's kind and attributes (span attributes only: resource
attribution does not decide *whether* a span matches a meter, only *whom* it bills). A test keeps this
predicate and the collector's matching in agreement on the same spans.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from opentelemetry.trace import SpanKind

from spanmeter import attributes as A

__all__ = ["is_billable"]


def is_billable(kind: SpanKind, attributes: Mapping[str, Any] | None) -> bool:
    if not attributes:
        return False
    get = attributes.get
    if get(A.CELERY_ACTION) == A.CELERY_ACTION_RUN:
        return True
    work_unit = get(A.WORK_UNIT)
    if work_unit is True or (isinstance(work_unit, str) and work_unit.lower() == "true"):
        return True
    if A.GPU_COUNT in attributes:
        return True
    operation = get(A.GEN_AI_OPERATION_NAME)
    if operation is None or operation in A.GEN_AI_BILLABLE_OPERATIONS:
        for key in (
            A.GEN_AI_USAGE_INPUT_TOKENS,
            A.GEN_AI_USAGE_PROMPT_TOKENS,
            A.GEN_AI_USAGE_OUTPUT_TOKENS,
            A.GEN_AI_USAGE_COMPLETION_TOKENS,
        ):
            if key in attributes:
                return True
    return kind == SpanKind.SERVER and (A.HTTP_REQUEST_METHOD in attributes or A.HTTP_METHOD in attributes)
