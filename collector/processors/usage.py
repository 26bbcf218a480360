"""Span → usage events: the pure heart of the collector.

``meter_request(request, limits, now_unix_nano)`` walks an OTLP ``ExportTraceServiceRequest`` once and
returns a :class:`MeteringResult`: the usage events to write, the spans to reject (with a reason), and the
counts the receiver reports as metrics. It does no I/O and reads no clock, so every rule is testable with
a hand-built request. It meters with the current meter definitions, or with the :class:`~.rules.MeterSet`
it is given; nothing here names a meter: every meter-specific fact is a rule of its definition
(:mod:`.meters`), applied by :mod:`.rules`.

Rules, in the order they are applied to each span:

1. Match meters: each definition's ``match`` predicate, in the set's order. A span that matches no meter
   is not billed and not checked further: most spans are not billable and must cost as little as possible.
2. Validate the matched span as a whole; the first failing check rejects the whole span:
   ``unauthorized_producer`` (an authenticated producer sending a service or meter it may not),
   ``invalid_id`` (trace id not 16 bytes / all zero, span id not 8 bytes / all zero), ``negative_duration``,
   ``duration_too_long``, ``future_timestamp`` (end beyond now + clock skew), ``stale_timestamp``
   (end older than the maximum age), then each matched meter's count rule in order (v1:
   ``invalid_gpu_count``, ``gpu.count`` not an integer in 1..4096; ``invalid_tokens``, a token count that
   is not a whole number in 0..1e9), then ``unattributed`` (no ``account_id`` while a matched meter's
   policy is ``reject``).
3. One event per matched meter, with its ``quantity`` rule (v1: durations rounded UP to the next 100 ms,
   ``ceil(ns / 1e8) / 10`` seconds, exact Decimal; GPU seconds that times ``gpu.count``; tokens the
   integer counts, the current GenAI name winning over the legacy one; API requests 1) and its
   ``metadata`` rules after the common keys (``span.name``, ``service.name``, ``status``).
4. Synthetic spans (``spanmeter.synthetic = true``) are validated and metered like any other, then diverted
   to ``synthetic_rows``: counted in metrics, never written to the ledger.

Independently of the meters, every entry span (``SERVER`` or ``CONSUMER``) yields one request SLI
observation in ``service_requests`` (see :mod:`.requests`).

Every event carries a deterministic idempotency key: the first 128 bits of BLAKE2b over
``trace_id ‖ span_id ‖ meter_code``, so the same span at any receiver, in any retry, yields the same key.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Protocol

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

from spanmeter import attributes as A

from .meters import MeterDefinition, OnUnattributed
from .requests import ENTRY_KINDS, ServiceRequest, service_request
from .rules import (
    CURRENT_METER_SET,
    Attributes,
    MeterSet,
    add_metadata,
    attribution,
    count_refusal,
    is_true,
    quantity,
    string,
    text,
)

__all__ = [
    "CHECK_MESSAGES",
    "LEDGER_REASONS",
    "REJECT_REASONS",
    "MeteringLimits",
    "MeteringResult",
    "ProducerPolicy",
    "Rejection",
    "SpanPayloads",
    "UsageEvent",
    "account_message",
    "idempotency_key",
    "meter_request",
    "rounded_tenths_of_second",
    "span_keys",
    "unauthorized_message",
]

NANOS_PER_100MS = 100_000_000

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
# The messages of the checks every matched span passes (a meter's own count check carries its own):
# "{max_duration_s}" and "{codes}" are filled in. The native core receives these as they are.
CHECK_MESSAGES = {
    "invalid_id": "trace id must be 16 non-zero bytes and span id 8 non-zero bytes",
    "negative_duration": "span ends before it starts",
    "duration_too_long": "span lasts longer than {max_duration_s} s",
    "future_timestamp": "span ends in the future (beyond the allowed clock skew)",
    "stale_timestamp": "span ended before the oldest accepted time",
    "unattributed": "no account_id on the span or its resource ({codes} requires one)",
}


class ProducerPolicy(Protocol):
    """What the processors need to know about an authenticated producer (see ``collector.auth``)."""

    @property
    def name(self) -> str: ...

    def allows(self, service_name: str | None, meter_codes: Iterable[str]) -> bool: ...

    def allows_account(self, account_id: str | None) -> bool: ...


def unauthorized_message(producer: ProducerPolicy) -> str:
    return f"producer {producer.name!r} may not send this service's spans or these meters"


def account_message(producer: ProducerPolicy) -> str:
    return f"producer {producer.name!r} may not bill this account"


_ZERO_TRACE = bytes(16)
_ZERO_SPAN = bytes(8)
_STATUS_ERROR = Status.StatusCode.STATUS_CODE_ERROR

# The span attribute keys the metering loop reads besides the meters' own (see span_keys): attribution, the
# synthetic flag and the request SLIs; everything else is skipped in one set lookup.
_BASE_SPAN_KEYS = frozenset(
    {
        A.ACCOUNT_ID,
        A.JOB_ID,
        A.PLAN_CODE,
        A.SYNTHETIC,
        A.CELERY_TASK_NAME,
        A.HTTP_REQUEST_METHOD,
        A.HTTP_METHOD,
        A.HTTP_ROUTE,
    }
)
_RESOURCE_KEYS = frozenset({A.ACCOUNT_ID, A.JOB_ID, A.PLAN_CODE, A.SERVICE_NAME, A.SYNTHETIC})


def span_keys(meters: MeterSet) -> frozenset[str]:
    """The only span attribute keys metering with ``meters`` reads."""
    return _BASE_SPAN_KEYS | meters.attribute_keys


_SPAN_KEYS = span_keys(CURRENT_METER_SET)


@dataclass(frozen=True, slots=True)
class MeteringLimits:
    """Validation bounds; built from the collector configuration."""

    max_span_duration_seconds: int = 7 * 86_400
    max_span_age_seconds: int = 30 * 86_400
    max_clock_skew_seconds: int = 300


@dataclass(slots=True)
class UsageEvent:
    """One metered usage event: a row of the ledger's ``usage_events`` (see the glossary in
    :mod:`spanmeter.collector.processors`)."""

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
    rows: list[UsageEvent] = field(default_factory=list)
    synthetic_rows: list[UsageEvent] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    unattributed: Counter[str] = field(default_factory=Counter)  # count-only meters, by meter code
    # entry spans, for the request SLIs: ServiceRequest, or on the receiver's native path the core's plain
    # (service, operation, outcome, duration_seconds) tuples (same order, no named tuple built per span)
    service_requests: list[ServiceRequest | tuple[str, str, str, float]] = field(default_factory=list)


def idempotency_key(trace_id: bytes, span_id: bytes, meter_code: str) -> str:
    return hashlib.blake2b(trace_id + span_id + meter_code.encode(), digest_size=16).hexdigest()


def rounded_tenths_of_second(duration_nanos: int) -> int:
    """Duration in tenths of a second, rounded up (the 100 ms minimum billable increment)."""
    return -(-duration_nanos // NANOS_PER_100MS)


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
        account_id=attribution(found.get(A.ACCOUNT_ID)),
        job_id=attribution(found.get(A.JOB_ID)),
        plan_code=attribution(found.get(A.PLAN_CODE)),
        service_name=string(found.get(A.SERVICE_NAME)),
        synthetic=is_true(found.get(A.SYNTHETIC)),
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
    meters: MeterSet = CURRENT_METER_SET,
) -> MeteringResult:
    """Meter every span of one Export request with ``meters`` (the current definitions unless given).
    Pure: same input, same output.

    ``producer``, when given, is the authenticated sender: a billable span whose ``service.name`` or
    meters it may not send is rejected ``unauthorized_producer`` before any other check.
    """
    run = _Run(
        result=MeteringResult(),
        producer=producer,
        max_duration_ns=limits.max_span_duration_seconds * 1_000_000_000,
        oldest_end_ns=now_unix_nano - limits.max_span_age_seconds * 1_000_000_000,
        newest_end_ns=now_unix_nano + limits.max_clock_skew_seconds * 1_000_000_000,
    )
    keys = span_keys(meters)
    bare_kinds = meters.bare_kinds
    received = 0
    for resource_spans in request.resource_spans:
        resource: _ResourceContext | None = None
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                received += 1
                attrs: Attributes = {}
                for kv in span.attributes:
                    key = kv.key
                    if key in keys:
                        attrs[key] = kv.value
                if span.kind in ENTRY_KINDS:
                    if resource is None:
                        resource = _resource_context(resource_spans)
                    if producer is None or producer.allows(resource.service_name, ()):
                        run.result.service_requests.append(service_request(span, attrs, resource.service_name))
                if not attrs and span.kind not in bare_kinds:
                    continue  # fast path: nothing here can match a meter
                matched = meters.match(span.kind, attrs)
                if not matched:
                    continue
                if resource is None:
                    resource = _resource_context(resource_spans)
                _meter_span(run, _MatchedSpan(resource_spans, scope_spans, span, attrs, resource, matched))
    run.result.spans_received = received
    return run.result


@dataclass(frozen=True, slots=True)
class _Run:
    """What every span of one request is metered against, and where its outcome goes."""

    result: MeteringResult
    producer: ProducerPolicy | None
    max_duration_ns: int
    oldest_end_ns: int
    newest_end_ns: int


@dataclass(slots=True)  # not frozen: one per matched span, and a frozen init costs a setattr per field
class _MatchedSpan:
    """A span that matched meters, with where it sits in the request."""

    resource_spans: ResourceSpans
    scope_spans: ScopeSpans
    span: Span
    attrs: Attributes
    resource: _ResourceContext
    matched: list[MeterDefinition]


def _meter_span(run: _Run, s: _MatchedSpan) -> None:
    """Validate the span as a whole; then one row per matched meter, a rejection, or unattributed counts."""
    account_id = attribution(s.attrs.get(A.ACCOUNT_ID)) or s.resource.account_id
    counts: list[int] = []  # each matched meter's validated count
    refused = _refusal(run, s, account_id, counts)
    if refused is not None:
        run.result.rejections.append(_rejection(s, account_id, *refused))
    elif account_id is None:  # only count-only meters matched
        for meter in s.matched:
            run.result.unattributed[meter.code] += 1
    else:
        _add_events(run.result, s, account_id, counts)


def _refusal(run: _Run, s: _MatchedSpan, account_id: str | None, counts: list[int]) -> tuple[str, str] | None:
    """The first failing check's (reason, message), or None; fills ``counts``."""
    producer, span = run.producer, s.span
    trace_id, span_id = span.trace_id, span.span_id
    start_ns, end_ns = span.start_time_unix_nano, span.end_time_unix_nano
    if producer is not None and not producer.allows(s.resource.service_name, [m.code for m in s.matched]):
        return "unauthorized_producer", unauthorized_message(producer)
    if producer is not None and not producer.allows_account(account_id):
        return "unauthorized_producer", account_message(producer)
    if len(trace_id) != 16 or trace_id == _ZERO_TRACE or len(span_id) != 8 or span_id == _ZERO_SPAN:
        return _check("invalid_id")
    if end_ns < start_ns:
        return _check("negative_duration")
    if end_ns - start_ns > run.max_duration_ns:
        return _check("duration_too_long", "{max_duration_s}", str(run.max_duration_ns // 10**9))
    if end_ns > run.newest_end_ns:
        return _check("future_timestamp")
    if end_ns < run.oldest_end_ns:
        return _check("stale_timestamp")
    refused = count_refusal(s.matched, s.attrs, counts)
    if refused is None and account_id is None:
        must_attribute = [m.code for m in s.matched if m.on_unattributed is OnUnattributed.REJECT]
        if must_attribute:
            return _check("unattributed", "{codes}", ", ".join(must_attribute))
    return refused


def _check(reason: str, placeholder: str = "", value: str = "") -> tuple[str, str]:
    message = CHECK_MESSAGES[reason]
    return reason, message.replace(placeholder, value) if placeholder else message


def _rejection(s: _MatchedSpan, account_id: str | None, reason: str, message: str) -> Rejection:
    payload = _payload(s.resource_spans, s.scope_spans, s.span)
    return Rejection(
        reason=reason,
        message=message or reason,
        rejection_key=hashlib.blake2b(payload, digest_size=16).hexdigest(),
        trace_id=s.span.trace_id.hex(),
        span_id=s.span.span_id.hex(),
        meter_codes=tuple(m.code for m in s.matched),
        account_id=account_id,
        service_name=s.resource.service_name,
        end_time_unix_nano=s.span.end_time_unix_nano,
        payload=payload,
    )


def _add_events(result: MeteringResult, s: _MatchedSpan, account_id: str, counts: list[int]) -> None:
    """One usage event per matched meter: its quantity and metadata from the meter's rules."""
    span, attrs, resource = s.span, s.attrs, s.resource
    job_id = attribution(attrs.get(A.JOB_ID)) or resource.job_id
    plan_code = attribution(attrs.get(A.PLAN_CODE)) or resource.plan_code
    synthetic = resource.synthetic or is_true(attrs.get(A.SYNTHETIC))
    base_metadata: dict[str, Any] = {"span.name": text(span.name)}
    if resource.service_name is not None:
        base_metadata["service.name"] = resource.service_name
    if span.status.code == _STATUS_ERROR:
        base_metadata["status"] = "error"
    end_ns = span.end_time_unix_nano
    tenths = rounded_tenths_of_second(end_ns - span.start_time_unix_nano)
    trace_hex, span_hex = span.trace_id.hex(), span.span_id.hex()
    target = result.synthetic_rows if synthetic else result.rows
    for meter, counted in zip(s.matched, counts, strict=True):
        metadata = dict(base_metadata)
        add_metadata(meter.metadata, attrs, counted, metadata)
        target.append(
            UsageEvent(
                meter=meter,
                idempotency_key=idempotency_key(span.trace_id, span.span_id, meter.code),
                account_id=account_id,
                job_id=job_id,
                plan_code=plan_code,
                quantity=quantity(meter.quantity, tenths, counted),
                end_time_unix_nano=end_ns,
                trace_id=trace_hex,
                span_id=span_hex,
                metadata=metadata,
            )
        )
