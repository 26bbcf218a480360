"""Span → request SLI observation: SLOs for the instrumented services from the spans already received.

Every *entry* span, a ``SERVER`` span (an HTTP request) or a ``CONSUMER`` span (a Celery task run, a
message handled), is one request of its service. :func:`service_request` turns it into a
:class:`ServiceRequest` (service, operation, outcome, duration); the receiver counts it in
``spanmeter_service_requests_total{service,operation,outcome}`` and
``spanmeter_service_request_duration_seconds{service,operation}`` once the Export call succeeded (a
refused call is retried by the exporter and counted then; a retry of an *acknowledged* call, which OTLP
exporters do not make, would count twice: these are operational SLIs, the ledger is what bills).

- ``service``: the resource's ``service.name`` (``unknown_service`` when missing, as the SDKs default).
- ``operation``: bounded by construction, never a raw URL: ``"{method} {http.route}"`` for HTTP server
  spans that carry the route template, else the Celery task name (``celery.task_name``), else the span
  name, which the HTTP and messaging semantic conventions keep low-cardinality. The receiver still caps
  distinct values (``SPANMETER_SLI_MAX_SERIES``) and maps the rest to ``_overflow``.
- ``outcome``: ``error`` when the span's status is ``ERROR`` (the HTTP instrumentations set it for 5xx
  responses, Celery for a task that raised, including one that is then retried), else ``ok``.
- No ``account_id``: per-account figures come from the ledger, never from metric labels.
- An authenticated producer counts only for the services its allow-list names (the metering loop checks),
  so a token for one service cannot page another service's SLO.

Pure: no I/O, no clock.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from spanmeter import attributes as A

__all__ = ["ENTRY_KINDS", "OUTCOMES", "UNKNOWN_SERVICE", "ServiceRequest", "service_request"]

OUTCOMES = ("ok", "error")
UNKNOWN_SERVICE = "unknown_service"
MAX_OPERATION_LENGTH = 128
ENTRY_KINDS = frozenset({Span.SpanKind.SPAN_KIND_SERVER, Span.SpanKind.SPAN_KIND_CONSUMER})
_STATUS_ERROR = Status.StatusCode.STATUS_CODE_ERROR


class ServiceRequest(NamedTuple):
    service: str
    operation: str
    outcome: str  # "ok" | "error"
    duration_seconds: float


def service_request(span: Span, attrs: dict[str, Any], service_name: str | None) -> ServiceRequest:
    """The SLI observation of one entry span; ``attrs`` holds the span's attributes the metering loop kept."""
    return ServiceRequest(
        service=service_name or UNKNOWN_SERVICE,
        operation=_operation(span, attrs)[:MAX_OPERATION_LENGTH],
        outcome="error" if span.status.code == _STATUS_ERROR else "ok",
        duration_seconds=max(span.end_time_unix_nano - span.start_time_unix_nano, 0) / 1e9,
    )


def _operation(span: Span, attrs: dict[str, Any]) -> str:
    route = attrs.get(A.HTTP_ROUTE)
    if route is not None and route.string_value:
        method = attrs.get(A.HTTP_REQUEST_METHOD) or attrs.get(A.HTTP_METHOD)
        return f"{method.string_value} {route.string_value}" if method is not None else route.string_value
    task = attrs.get(A.CELERY_TASK_NAME)
    if task is not None and task.string_value:
        return str(task.string_value)
    return span.name or "unnamed"
