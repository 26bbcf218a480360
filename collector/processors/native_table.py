"""The metering table handed to ``spanmeter_native.Meter(table)``: every meter-specific fact, built from the
Python definitions (``spanmeter.attributes``, ``collector.processors.meters``, ``usage.py``'s constants).

The Rust core knows the algorithm of ``usage.meter_request`` (match → validate → quantities → metadata →
rows) and a small rule vocabulary; it names no meter code and no attribute key. A new meter version changes
this table (and ``usage.py``), not Rust.

Format 1 (plain Python values)::

    span_keys / resource_keys        the only attribute keys read (usage._SPAN_KEYS / _RESOURCE_KEYS)
    span_*_key / resource_*_key      attribution keys (account, job, plan), service.name, synthetic
    attribution_max_length           _attribution's bound (code points); text_limit: _text's cap
    base_metadata                    [("span_name", out) | ("service_name", out) | ("status_is", out, code, text)]
    label_metadata_key               the metadata key returned in the compact row tuple (gpu model)
    rejects                          {check: (reason, message)}: the fixed checks' reasons and messages;
                                     "{max_duration_s}" / "{codes}" are filled in by the core
    requests                         the request-SLI rules of collector.processors.requests
    meters: [{code, version, unit, reject_unattributed,
              match:     predicate: ("eq", key, text) | ("true", key) | ("present", key) | ("kind", int)
                                    | ("absent_or_in", key, [texts]) | ("all", [p...]) | ("any", [p...])
              count:     None | {keys: [current, legacy...], min, max, reject: (reason, message)}
                         (validated in meter order, after the id/time checks; the first failure rejects)
              quantity:  ("duration_tenths",) | ("duration_tenths_x_count",) | ("count",) | ("const", n)
              metadata:  [("string", out, [keys...])      `_string(a) or _string(b) ...`, when not None
                          | ("meter_count", out)           the validated count
                          | ("opt_count", out, key, max)]  `_count(key, max)` when valid
             }]
"""

from __future__ import annotations

from typing import Any

from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from spanmeter import attributes as A
from spanmeter.collector.auth import Producer
from spanmeter.collector.processors import requests as R
from spanmeter.collector.processors import usage as U
from spanmeter.collector.processors.meters import (
    API_REQUESTS,
    CURRENT_METERS,
    GPU_SECONDS,
    INPUT_TOKENS,
    OUTPUT_TOKENS,
    WORKER_SECONDS,
    MeterDefinition,
    OnUnattributed,
)

__all__ = ["TABLE_FORMAT", "account_message", "build_table", "producer_argument", "unauthorized_message"]

TABLE_FORMAT = 1
_AUTH_ALLOWS = Producer.allows  # the rule the core reproduces from (services, meters)
_AUTH_ALLOWS_ACCOUNT = Producer.allows_account  # and from (exact accounts, prefixes)
_SERVER = int(Span.SpanKind.SPAN_KIND_SERVER)
_ERROR = int(Status.StatusCode.STATUS_CODE_ERROR)


def _reason(name: str) -> str:
    assert name in U.REJECT_REASONS, name
    return name


def _meter(
    defn: MeterDefinition,
    match: tuple[Any, ...],
    count: dict[str, Any] | None,
    quantity: tuple[Any, ...],
    metadata: list[tuple[Any, ...]],
) -> dict[str, Any]:
    return {
        "code": defn.code,
        "version": defn.version,
        "unit": defn.unit,
        "reject_unattributed": defn.on_unattributed is OnUnattributed.REJECT,
        "match": match,
        "count": count,
        "quantity": quantity,
        "metadata": metadata,
    }


def _genai(defn: MeterDefinition, current: str, legacy: str, subsets: tuple[str, ...]) -> dict[str, Any]:
    return _meter(
        defn,
        (
            "all",
            [
                ("absent_or_in", A.GEN_AI_OPERATION_NAME, sorted(A.GEN_AI_BILLABLE_OPERATIONS)),
                ("any", [("present", current), ("present", legacy)]),
            ],
        ),
        {
            "keys": [current, legacy],
            "min": 0,
            "max": U.MAX_TOKENS_PER_SPAN,
            # usage._meter_span: f"{meter.code} must be a whole number from 0 to {MAX_TOKENS_PER_SPAN}"
            "reject": (
                _reason("invalid_tokens"),
                f"{defn.code} must be a whole number from 0 to {U.MAX_TOKENS_PER_SPAN}",
            ),
        },
        ("count",),
        [
            ("string", "gen_ai.model", [A.GEN_AI_RESPONSE_MODEL, A.GEN_AI_REQUEST_MODEL]),
            ("string", A.GEN_AI_PROVIDER_NAME, [A.GEN_AI_PROVIDER_NAME, A.GEN_AI_SYSTEM]),
            ("string", A.GEN_AI_OPERATION_NAME, [A.GEN_AI_OPERATION_NAME]),
            *[("opt_count", key, key, U.MAX_TOKENS_PER_SPAN) for key in subsets],
        ],
    )


def build_table() -> dict[str, Any]:
    """The table for ``usage.meter_request`` as it stands (meters in its match order)."""
    meters = [
        _meter(
            WORKER_SECONDS,
            ("any", [("eq", A.CELERY_ACTION, A.CELERY_ACTION_RUN), ("true", A.WORK_UNIT)]),
            None,
            ("duration_tenths",),
            [("string", A.CELERY_TASK_NAME, [A.CELERY_TASK_NAME])],
        ),
        _meter(
            GPU_SECONDS,
            ("present", A.GPU_COUNT),
            {
                "keys": [A.GPU_COUNT],
                "min": 1,
                "max": U.MAX_GPU_COUNT,
                "reject": (_reason("invalid_gpu_count"), f"gpu.count must be an integer from 1 to {U.MAX_GPU_COUNT}"),
            },
            ("duration_tenths_x_count",),
            [("meter_count", A.GPU_COUNT), ("string", A.GPU_MODEL, [A.GPU_MODEL])],
        ),
        _genai(
            INPUT_TOKENS,
            A.GEN_AI_USAGE_INPUT_TOKENS,
            A.GEN_AI_USAGE_PROMPT_TOKENS,
            (A.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS, A.GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS),
        ),
        _genai(
            OUTPUT_TOKENS,
            A.GEN_AI_USAGE_OUTPUT_TOKENS,
            A.GEN_AI_USAGE_COMPLETION_TOKENS,
            (A.GEN_AI_USAGE_REASONING_OUTPUT_TOKENS,),
        ),
        _meter(
            API_REQUESTS,
            ("all", [("kind", _SERVER), ("any", [("present", A.HTTP_REQUEST_METHOD), ("present", A.HTTP_METHOD)])]),
            None,
            ("const", 1),
            [("string", "http.request.method", [A.HTTP_REQUEST_METHOD, A.HTTP_METHOD])],
        ),
    ]
    # Every current meter must be described, in usage.py's order, with its current definition.
    assert [m["code"] for m in meters] == list(CURRENT_METERS), "the native table is missing a meter"
    return {
        "format": TABLE_FORMAT,
        "span_keys": sorted(U._SPAN_KEYS),
        "resource_keys": sorted(U._RESOURCE_KEYS),
        "span_account_key": A.ACCOUNT_ID,
        "span_job_key": A.JOB_ID,
        "span_plan_key": A.PLAN_CODE,
        "span_synthetic_key": A.SYNTHETIC,
        "resource_account_key": A.ACCOUNT_ID,
        "resource_job_key": A.JOB_ID,
        "resource_plan_key": A.PLAN_CODE,
        "resource_service_key": A.SERVICE_NAME,
        "resource_synthetic_key": A.SYNTHETIC,
        "attribution_max_length": U.MAX_ATTRIBUTION_LENGTH,
        "text_limit": U.MAX_METADATA_TEXT,
        "base_metadata": [
            ("span_name", "span.name"),
            ("service_name", A.SERVICE_NAME),
            ("status_is", "status", _ERROR, "error"),
        ],
        "label_metadata_key": A.GPU_MODEL,
        "meters": meters,
        "rejects": {
            "unauthorized_producer": _reason("unauthorized_producer"),
            "invalid_id": (_reason("invalid_id"), "trace id must be 16 non-zero bytes and span id 8 non-zero bytes"),
            "negative_duration": (_reason("negative_duration"), "span ends before it starts"),
            "duration_too_long": (_reason("duration_too_long"), "span lasts longer than {max_duration_s} s"),
            "future_timestamp": (
                _reason("future_timestamp"),
                "span ends in the future (beyond the allowed clock skew)",
            ),
            "stale_timestamp": (_reason("stale_timestamp"), "span ended before the oldest accepted time"),
            "unattributed": (
                _reason("unattributed"),
                "no account_id on the span or its resource ({codes} requires one)",
            ),
        },
        "requests": {
            "entry_kinds": sorted(int(k) for k in R.ENTRY_KINDS),
            "unknown_service": R.UNKNOWN_SERVICE,
            "max_operation_length": R.MAX_OPERATION_LENGTH,
            "route_key": A.HTTP_ROUTE,
            "method_keys": [A.HTTP_REQUEST_METHOD, A.HTTP_METHOD],
            "task_key": A.CELERY_TASK_NAME,
            "unnamed": "unnamed",
            "outcome_ok": R.OUTCOMES[0],
            "outcome_error": R.OUTCOMES[1],
            "status_error": _ERROR,
        },
    }


def unauthorized_message(producer: Any) -> str:
    # usage._meter_span: f"producer {producer.name!r} may not send this service's spans or these meters"
    return f"producer {producer.name!r} may not send this service's spans or these meters"


def account_message(producer: Any) -> str:
    # usage._meter_span: f"producer {producer.name!r} may not bill this account"
    return f"producer {producer.name!r} may not bill this account"


def producer_argument(producer: Any) -> tuple[Any, ...] | None:
    """The ``producer`` argument of ``Meter.meter`` for a ``collector.auth.Producer`` (or None):
    (services, meters, message, exact accounts, account prefixes, account message); None for "any"."""
    if producer is None:
        return None
    services, meters = getattr(producer, "services", ...), getattr(producer, "meters", ...)
    accounts = getattr(producer, "accounts", ...)
    if (
        services is ...
        or meters is ...
        or accounts is ...
        or type(producer).allows is not _AUTH_ALLOWS
        or type(producer).allows_account is not _AUTH_ALLOWS_ACCOUNT
    ):
        # another ProducerPolicy: its allows() may be anything, so the caller falls back to Python
        raise TypeError(f"no native form for producer policy {type(producer).__name__}")
    exact = prefixes = None
    if accounts is not None:
        exact = {a for a in accounts if not a.endswith("*")}
        prefixes = sorted(a[:-1] for a in accounts if a.endswith("*"))
    return (services, meters, unauthorized_message(producer), exact, prefixes, account_message(producer))
