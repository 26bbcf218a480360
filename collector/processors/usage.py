"""Span → usage rows: the pure heart of the collector.

``meter_request(request, limits, now_unix_nano)`` walks an OTLP ``ExportTraceServiceRequest`` once and
returns a :class:`MeteringResult`: the usage rows to write, the spans to reject (with a reason), and the
counts the receiver reports as metrics. It does no I/O and reads no clock, so every rule is testable with
a hand-built request.

Rules, in the order they are applied to each span:

1. Match meters (see :mod:`.meters`). A span that matches no meter is not billed and not checked further:
   most spans are not billable and must cost as little as possible.
2. Validate the matched span as a whole; the first failing check rejects the whole span:
   ``unauthorized_producer`` (an authenticated producer sending a service or meter it may not),
   ``invalid_id`` (trace id not 16 bytes / all zero, span id not 8 bytes / all zero), ``negative_duration``,
   ``duration_too_long``, ``future_timestamp`` (end beyond now + clock skew), ``stale_timestamp``
   (end older than the maximum age), ``invalid_gpu_count`` (``gpu.count`` not an integer in 1..4096),
   ``invalid_tokens`` (a token count that is not a whole number in 0..1e9), ``unattributed`` (no
   ``account_id`` while a matched meter's policy is ``reject``).
3. Compute quantities: durations are rounded UP to the next 100 ms (``ceil(ns / 1e8) / 10`` seconds,
   exact Decimal), GPU seconds are that times ``gpu.count``; tokens are the integer counts, the current
   GenAI name winning over the legacy one; API requests are 1.
4. Synthetic spans (``spanmeter.synthetic = true``) are validated and metered like any other, then diverted
   to ``synthetic_rows``: counted in metrics, never written to the ledger.

Independently of the meters, every entry span (``SERVER`` or ``CONSUMER``) yields one request SLI
observation in ``service_requests`` (see :mod:`.requests`).

Every row carries a deterministic idempotency key: the first 128 bits of BLAKE2b over
``trace_id ‖ span_id ‖ meter_code``, so the same span at any receiver, in any retry, yields the same key.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Protocol

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

from spanmeter import attributes as A

from .meters import (
    API_REQUESTS,
    GPU_SECONDS,
    INPUT_TOKENS,
    OUTPUT_TOKENS,
    WORKER_SECONDS,
    MeterDefinition,
    OnUnattributed,
)
from .requests import ENTRY_KINDS, ServiceRequest, service_request

__all__ = [
    "LEDGER_REASONS",
    "REJECT_REASONS",
    "MeteringLimits",
    "MeteringResult",
    "ProducerPolicy",
    "Rejection",
    "SpanPayloads",
    "UsageRow",
    "idempotency_key",
    "meter_request",
    "rounded_tenths_of_second",
]

NANOS_PER_100MS = 100_000_000
MAX_GPU_COUNT = 4096
MAX_TOKENS_PER_SPAN = 1_000_000_000
MAX_ATTRIBUTION_LENGTH = 256
MAX_METADATA_TEXT = 512

REJECT_REASONS = (
    "ledger_refused",  # set by the ledger exporter: the database refused the row's value (see billing.ledger.errors)
    "key_conflict",  # set by the ledger exporter: the key is already billed with other content
    "no_partition",  # set by the ledger exporter: the span's month has no ledger partition (replayable)
    "archived_period",  # set by the ledger exporter: the span's month was archived (restore, then replay)
    "unattributed",
    "unauthorized_producer",
    "invalid_id",
    "negative_duration",
    "duration_too_long",
    "future_timestamp",
    "stale_timestamp",
    "invalid_tokens",
    "invalid_gpu_count",
)
# the reasons only the ledger exporter gives, after metering (the metering cores never do)
LEDGER_REASONS = ("ledger_refused", "key_conflict", "no_partition", "archived_period")


class ProducerPolicy(Protocol):
    """What the processors need to know about an authenticated producer (see ``collector.auth``)."""

    name: str

    def allows(self, service_name: str | None, meter_codes: Iterable[str]) -> bool: ...

    def allows_account(self, account_id: str | None) -> bool: ...


_ZERO_TRACE = bytes(16)
_ZERO_SPAN = bytes(8)
_SERVER = Span.SpanKind.SPAN_KIND_SERVER
_STATUS_ERROR = Status.StatusCode.STATUS_CODE_ERROR

# The only span attribute keys the metering loop looks at; everything else is skipped in one set lookup.
_SPAN_KEYS = frozenset(
    {
        A.ACCOUNT_ID,
        A.JOB_ID,
        A.PLAN_CODE,
        A.WORK_UNIT,
        A.SYNTHETIC,
        A.GPU_COUNT,
        A.GPU_MODEL,
        A.CELERY_ACTION,
        A.CELERY_TASK_NAME,
        A.HTTP_REQUEST_METHOD,
        A.HTTP_METHOD,
        A.HTTP_ROUTE,
        A.GEN_AI_OPERATION_NAME,
        A.GEN_AI_USAGE_INPUT_TOKENS,
        A.GEN_AI_USAGE_OUTPUT_TOKENS,
        A.GEN_AI_USAGE_PROMPT_TOKENS,
        A.GEN_AI_USAGE_COMPLETION_TOKENS,
        A.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS,
        A.GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS,
        A.GEN_AI_USAGE_REASONING_OUTPUT_TOKENS,
        A.GEN_AI_RESPONSE_MODEL,
        A.GEN_AI_REQUEST_MODEL,
        A.GEN_AI_PROVIDER_NAME,
        A.GEN_AI_SYSTEM,
    }
)
_RESOURCE_KEYS = frozenset({A.ACCOUNT_ID, A.JOB_ID, A.PLAN_CODE, A.SERVICE_NAME, A.SYNTHETIC})


@dataclass(frozen=True, slots=True)
class MeteringLimits:
    """Validation bounds; built from the collector configuration."""

    max_span_duration_seconds: int = 7 * 86_400
    max_span_age_seconds: int = 30 * 86_400
    max_clock_skew_seconds: int = 300


@dataclass(slots=True)
class UsageRow:
    meter: MeterDefinition
    idempotency_key: str  # 32 lower-case hex digits (a uuid)
    account_id: str
    job_id: str | None
    plan_code: str | None
    quantity: Decimal
    end_time_unix_nano: int
    trace_id: str  # 32 lower-case hex digits
    span_id: str  # 16 lower-case hex digits
    metadata: dict[str, Any]


@dataclass(slots=True)
class Rejection:
    reason: str
    message: str
    rejection_key: str  # 32 hex digits: BLAKE2b-128 of the stored payload (retries keep one row)
    trace_id: str
    span_id: str
    meter_codes: tuple[str, ...]
    account_id: str | None
    service_name: str | None
    end_time_unix_nano: int
    payload: bytes  # a serialized ResourceSpans holding the resource, the scope and this one span


@dataclass(slots=True)
class MeteringResult:
    spans_received: int = 0
    rows: list[UsageRow] = field(default_factory=list)
    synthetic_rows: list[UsageRow] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    unattributed: Counter[str] = field(default_factory=Counter)  # count-only meters, by meter code
    service_requests: list[ServiceRequest] = field(default_factory=list)  # entry spans, for the request SLIs


def idempotency_key(trace_id: bytes, span_id: bytes, meter_code: str) -> str:
    return hashlib.blake2b(trace_id + span_id + meter_code.encode(), digest_size=16).hexdigest()


def rounded_tenths_of_second(duration_nanos: int) -> int:
    """Duration in tenths of a second, rounded up (the 100 ms minimum billable increment)."""
    return -(-duration_nanos // NANOS_PER_100MS)


def _text(value: str, limit: int = MAX_METADATA_TEXT) -> str:
    # Postgres text and jsonb cannot hold NUL; cap length so one span cannot bloat the ledger.
    if "\x00" in value:
        value = value.replace("\x00", "\ufffd")
    return value[:limit]


def _attribution(value: Any) -> str | None:
    """An attribution value: a non-empty string (or an integer, written in decimal) of sane length."""
    if value is None:
        return None
    kind = value.WhichOneof("value")
    if kind == "string_value":
        text = value.string_value
    elif kind == "int_value":
        text = str(value.int_value)
    else:
        return None
    if not text or len(text) > MAX_ATTRIBUTION_LENGTH:
        return None
    return _text(text)


def _string(value: Any) -> str | None:
    if value is None or value.WhichOneof("value") != "string_value":
        return None
    return _text(value.string_value)


def _is_true(value: Any) -> bool:
    if value is None:
        return False
    kind = value.WhichOneof("value")
    if kind == "bool_value":
        return bool(value.bool_value)
    if kind == "string_value":
        return bool(value.string_value.lower() == "true")
    return False


_INVALID = object()


def _count(value: Any, upper: int) -> Any:
    """A whole number in 0..upper, or _INVALID. Integral doubles are accepted (some SDKs send them)."""
    if value is None:
        return None
    kind = value.WhichOneof("value")
    if kind == "int_value":
        number = value.int_value
    elif kind == "double_value":
        d = value.double_value
        if not math.isfinite(d) or d != int(d):
            return _INVALID
        number = int(d)
    else:
        return _INVALID
    if number < 0 or number > upper:
        return _INVALID
    return number


@dataclass(frozen=True, slots=True)
class _ResourceContext:
    """What the resource contributes to every span under it, computed once per resource."""

    account_id: str | None
    job_id: str | None
    plan_code: str | None
    service_name: str | None
    synthetic: bool


def _resource_context(resource_spans: ResourceSpans) -> _ResourceContext:
    found: dict[str, Any] = {}
    for kv in resource_spans.resource.attributes:
        if kv.key in _RESOURCE_KEYS:
            found[kv.key] = kv.value
    return _ResourceContext(
        account_id=_attribution(found.get(A.ACCOUNT_ID)),
        job_id=_attribution(found.get(A.JOB_ID)),
        plan_code=_attribution(found.get(A.PLAN_CODE)),
        service_name=_string(found.get(A.SERVICE_NAME)),
        synthetic=_is_true(found.get(A.SYNTHETIC)),
    )


def _payload(resource_spans: ResourceSpans, scope_spans: ScopeSpans, span: Span) -> bytes:
    single = ResourceSpans(resource=resource_spans.resource, schema_url=resource_spans.schema_url)
    single.scope_spans.append(ScopeSpans(scope=scope_spans.scope, schema_url=scope_spans.schema_url))
    single.scope_spans[0].spans.append(span)
    return single.SerializeToString(deterministic=True)


class SpanPayloads:
    """The stored payloads of one request's spans, found by ids: the request is decoded (``request_of``) and
    indexed once, on the first lookup, so keeping every span of a large request costs one pass, not one per
    span (a request of conflicting rows must not cost quadratic time). The first span with given ids wins."""

    __slots__ = ("_index", "_request_of")

    def __init__(self, request_of: Callable[[], ExportTraceServiceRequest]) -> None:
        self._request_of = request_of
        self._index: dict[tuple[bytes, bytes], tuple[ResourceSpans, ScopeSpans, Span]] | None = None

    def __call__(self, trace_hex: str, span_hex: str) -> bytes:
        if self._index is None:
            index: dict[tuple[bytes, bytes], tuple[ResourceSpans, ScopeSpans, Span]] = {}
            for resource_spans in self._request_of().resource_spans:
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        index.setdefault((span.trace_id, span.span_id), (resource_spans, scope_spans, span))
            self._index = index
        found = self._index.get((bytes.fromhex(trace_hex), bytes.fromhex(span_hex)))
        return _payload(*found) if found is not None else b""


def meter_request(
    request: ExportTraceServiceRequest,
    limits: MeteringLimits,
    now_unix_nano: int,
    producer: ProducerPolicy | None = None,
) -> MeteringResult:
    """Meter every span of one Export request. Pure: same input, same output.

    ``producer``, when given, is the authenticated sender: a billable span whose ``service.name`` or
    meters it may not send is rejected ``unauthorized_producer`` before any other check.
    """
    result = MeteringResult()
    max_duration_ns = limits.max_span_duration_seconds * 1_000_000_000
    oldest_end_ns = now_unix_nano - limits.max_span_age_seconds * 1_000_000_000
    newest_end_ns = now_unix_nano + limits.max_clock_skew_seconds * 1_000_000_000
    received = 0
    for resource_spans in request.resource_spans:
        resource: _ResourceContext | None = None
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                received += 1
                attrs: dict[str, Any] = {}
                for kv in span.attributes:
                    key = kv.key
                    if key in _SPAN_KEYS:
                        attrs[key] = kv.value
                if span.kind in ENTRY_KINDS:
                    if resource is None:
                        resource = _resource_context(resource_spans)
                    if producer is None or producer.allows(resource.service_name, ()):
                        result.service_requests.append(service_request(span, attrs, resource.service_name))
                if not attrs and span.kind != _SERVER:
                    continue  # fast path: nothing here can match a meter
                matched = _match_meters(span, attrs)
                if not matched:
                    continue
                if resource is None:
                    resource = _resource_context(resource_spans)
                _meter_span(
                    result,
                    producer,
                    resource_spans,
                    scope_spans,
                    span,
                    attrs,
                    resource,
                    matched,
                    max_duration_ns,
                    oldest_end_ns,
                    newest_end_ns,
                )
    result.spans_received = received
    return result


def _match_meters(span: Span, attrs: dict[str, Any]) -> list[MeterDefinition]:
    matched: list[MeterDefinition] = []
    action = attrs.get(A.CELERY_ACTION)
    if (action is not None and action.string_value == A.CELERY_ACTION_RUN) or _is_true(attrs.get(A.WORK_UNIT)):
        matched.append(WORKER_SECONDS)
    if A.GPU_COUNT in attrs:
        matched.append(GPU_SECONDS)
    operation = attrs.get(A.GEN_AI_OPERATION_NAME)
    if operation is None or operation.string_value in A.GEN_AI_BILLABLE_OPERATIONS:
        if A.GEN_AI_USAGE_INPUT_TOKENS in attrs or A.GEN_AI_USAGE_PROMPT_TOKENS in attrs:
            matched.append(INPUT_TOKENS)
        if A.GEN_AI_USAGE_OUTPUT_TOKENS in attrs or A.GEN_AI_USAGE_COMPLETION_TOKENS in attrs:
            matched.append(OUTPUT_TOKENS)
    if span.kind == _SERVER and (A.HTTP_REQUEST_METHOD in attrs or A.HTTP_METHOD in attrs):
        matched.append(API_REQUESTS)
    return matched


def _meter_span(
    result: MeteringResult,
    producer: ProducerPolicy | None,
    resource_spans: ResourceSpans,
    scope_spans: ScopeSpans,
    span: Span,
    attrs: dict[str, Any],
    resource: _ResourceContext,
    matched: list[MeterDefinition],
    max_duration_ns: int,
    oldest_end_ns: int,
    newest_end_ns: int,
) -> None:
    trace_id = span.trace_id
    span_id = span.span_id
    start_ns = span.start_time_unix_nano
    end_ns = span.end_time_unix_nano
    account_id = _attribution(attrs.get(A.ACCOUNT_ID)) or resource.account_id

    service_name = resource.service_name
    reason = message = None
    tokens: dict[str, int] = {}
    gpu_count = 0
    if producer is not None and not producer.allows(service_name, [m.code for m in matched]):
        reason = "unauthorized_producer"
        message = f"producer {producer.name!r} may not send this service's spans or these meters"
    elif producer is not None and not producer.allows_account(account_id):
        reason = "unauthorized_producer"
        message = f"producer {producer.name!r} may not bill this account"
    elif len(trace_id) != 16 or trace_id == _ZERO_TRACE or len(span_id) != 8 or span_id == _ZERO_SPAN:
        reason, message = "invalid_id", "trace id must be 16 non-zero bytes and span id 8 non-zero bytes"
    elif end_ns < start_ns:
        reason, message = "negative_duration", "span ends before it starts"
    elif end_ns - start_ns > max_duration_ns:
        reason, message = "duration_too_long", f"span lasts longer than {max_duration_ns // 10**9} s"
    elif end_ns > newest_end_ns:
        reason, message = "future_timestamp", "span ends in the future (beyond the allowed clock skew)"
    elif end_ns < oldest_end_ns:
        reason, message = "stale_timestamp", "span ended before the oldest accepted time"
    else:
        if GPU_SECONDS in matched:
            count = _count(attrs.get(A.GPU_COUNT), MAX_GPU_COUNT)
            if count is _INVALID or count is None or count < 1:
                reason, message = "invalid_gpu_count", f"gpu.count must be an integer from 1 to {MAX_GPU_COUNT}"
            else:
                gpu_count = count
        if reason is None:
            for meter, current, legacy in (
                (INPUT_TOKENS, A.GEN_AI_USAGE_INPUT_TOKENS, A.GEN_AI_USAGE_PROMPT_TOKENS),
                (OUTPUT_TOKENS, A.GEN_AI_USAGE_OUTPUT_TOKENS, A.GEN_AI_USAGE_COMPLETION_TOKENS),
            ):
                if meter not in matched:
                    continue
                value = attrs.get(current)
                count = _count(value if value is not None else attrs.get(legacy), MAX_TOKENS_PER_SPAN)
                if count is _INVALID:
                    reason = "invalid_tokens"
                    message = f"{meter.code} must be a whole number from 0 to {MAX_TOKENS_PER_SPAN}"
                    break
                tokens[meter.code] = count
        if reason is None and account_id is None:
            must_attribute = [m.code for m in matched if m.on_unattributed is OnUnattributed.REJECT]
            if must_attribute:
                reason = "unattributed"
                message = f"no account_id on the span or its resource ({', '.join(must_attribute)} requires one)"

    trace_hex = trace_id.hex()
    span_hex = span_id.hex()
    if reason is not None:
        payload = _payload(resource_spans, scope_spans, span)
        result.rejections.append(
            Rejection(
                reason=reason,
                message=message or reason,
                rejection_key=hashlib.blake2b(payload, digest_size=16).hexdigest(),
                trace_id=trace_hex,
                span_id=span_hex,
                meter_codes=tuple(m.code for m in matched),
                account_id=account_id,
                service_name=service_name,
                end_time_unix_nano=end_ns,
                payload=payload,
            )
        )
        return

    if account_id is None:  # only count-only meters matched
        for meter in matched:
            result.unattributed[meter.code] += 1
        return

    job_id = _attribution(attrs.get(A.JOB_ID)) or resource.job_id
    plan_code = _attribution(attrs.get(A.PLAN_CODE)) or resource.plan_code
    synthetic = resource.synthetic or _is_true(attrs.get(A.SYNTHETIC))
    base_metadata: dict[str, Any] = {"span.name": _text(span.name)}
    if service_name is not None:
        base_metadata["service.name"] = service_name
    if span.status.code == _STATUS_ERROR:
        base_metadata["status"] = "error"
    tenths = rounded_tenths_of_second(end_ns - start_ns)
    target = result.synthetic_rows if synthetic else result.rows

    for meter in matched:
        metadata = dict(base_metadata)
        if meter is WORKER_SECONDS:
            quantity = Decimal(tenths).scaleb(-1)
            task = _string(attrs.get(A.CELERY_TASK_NAME))
            if task is not None:
                metadata["celery.task_name"] = task
        elif meter is GPU_SECONDS:
            quantity = Decimal(tenths * gpu_count).scaleb(-1)
            metadata["gpu.count"] = gpu_count
            model = _string(attrs.get(A.GPU_MODEL))
            if model is not None:
                metadata["gpu.model"] = model
        elif meter is API_REQUESTS:
            quantity = Decimal(1)
            method = _string(attrs.get(A.HTTP_REQUEST_METHOD)) or _string(attrs.get(A.HTTP_METHOD))
            if method is not None:
                metadata["http.request.method"] = method
        else:  # input_tokens / output_tokens
            quantity = Decimal(tokens[meter.code])
            _genai_metadata(metadata, attrs, meter)
        target.append(
            UsageRow(
                meter=meter,
                idempotency_key=idempotency_key(trace_id, span_id, meter.code),
                account_id=account_id,
                job_id=job_id,
                plan_code=plan_code,
                quantity=quantity,
                end_time_unix_nano=end_ns,
                trace_id=trace_hex,
                span_id=span_hex,
                metadata=metadata,
            )
        )


def _genai_metadata(metadata: dict[str, Any], attrs: dict[str, Any], meter: MeterDefinition) -> None:
    model = _string(attrs.get(A.GEN_AI_RESPONSE_MODEL)) or _string(attrs.get(A.GEN_AI_REQUEST_MODEL))
    if model is not None:
        metadata["gen_ai.model"] = model
    provider = _string(attrs.get(A.GEN_AI_PROVIDER_NAME)) or _string(attrs.get(A.GEN_AI_SYSTEM))
    if provider is not None:
        metadata["gen_ai.provider.name"] = provider
    operation = _string(attrs.get(A.GEN_AI_OPERATION_NAME))
    if operation is not None:
        metadata["gen_ai.operation.name"] = operation
    # Subsets of the billed count: kept for explanation, never billed again.
    subsets = (
        (A.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS, A.GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS)
        if meter is INPUT_TOKENS
        else (A.GEN_AI_USAGE_REASONING_OUTPUT_TOKENS,)
    )
    for key in subsets:
        count = _count(attrs.get(key), MAX_TOKENS_PER_SPAN)
        if count is not None and count is not _INVALID:
            metadata[key] = count
