"""Meter definitions: which spans bill what, in which unit, under which version, as data.

A meter is a :class:`MeterDefinition`: its code, version and unit, and its rules in a small vocabulary that
both metering cores interpret (the pure-Python reference, :mod:`.rules` under :mod:`.usage`, and the native
core, through the table :mod:`.native_table` serializes): no code anywhere names a meter.

- ``match``: a predicate over the span's attributes and kind (:class:`Eq`, :class:`IsTrue`,
  :class:`Present`, :class:`KindIs`, :class:`AbsentOrIn`, :class:`AllOf`, :class:`AnyOf`).
- ``count``: an optional :class:`CountRule`: the whole number the meter reads (the first of its keys
  present), validated after the span's id and time checks; out of bounds, the span is rejected with the
  rule's reason and message.
- ``quantity``: :class:`DurationTenths` (the duration rounded UP to 100 ms), :class:`DurationTenthsTimesCount`,
  :class:`Counted` (the validated count) or :class:`Constant`.
- ``metadata``: what the row's metadata adds after the common keys (``span.name``, ``service.name``,
  ``status``): :class:`FirstString`, :class:`CountedValue`, :class:`OptionalCount`, in order.
- ``routing``: where a committed row's quantity is counted in Prometheus (:class:`MeterRouting`).

A meter definition is frozen once it has billed anyone. To change what a meter counts, add a new
``MeterDefinition`` with a higher ``version`` and point ``CURRENT_METERS`` at it; the old one stays in
``ALL_METERS`` so rows written under it remain explainable. Every usage event records ``meter_version``.

| meter_code      | unit        | matches                                                                  | quantity                                   | on_unattributed | failed spans |
|-----------------|-------------|--------------------------------------------------------------------------|--------------------------------------------|-----------------|--------------|
| worker_seconds  | ``s``       | Celery task runs (``celery.action = run``) or ``spanmeter.work_unit=true`` | duration rounded up to 100 ms              | reject          | billed       |
| gpu_seconds     | ``s``       | spans with ``gpu.count``                                                 | duration rounded up to 100 ms × gpu.count  | reject          | billed       |
| input_tokens    | ``{token}`` | GenAI spans with input tokens, operation absent or a model call          | ``gen_ai.usage.input_tokens``              | reject          | billed       |
| output_tokens   | ``{token}`` | GenAI spans with output tokens, operation absent or a model call         | ``gen_ai.usage.output_tokens``             | reject          | billed       |
| cache_read_tokens | ``{token}`` | model calls with ``gen_ai.usage.cache_read.input_tokens``              | that count (a subset of input_tokens)      | reject          | billed       |
| cache_write_tokens | ``{token}`` | model calls with ``gen_ai.usage.cache_creation.input_tokens``         | that count (a subset of input_tokens)      | reject          | billed       |
| reasoning_tokens | ``{token}`` | model calls with ``gen_ai.usage.reasoning.output_tokens``              | that count (a subset of output_tokens)     | reject          | billed       |
| api_requests    | ``{request}`` | SERVER spans with ``http.request.method`` / ``http.method``            | 1                                          | count_only      | billed       |

Failed attempts (span status ERROR) bill by default for every meter: the compute, the tokens and the
request were consumed, and each Celery retry is its own span (its own row). The row's metadata carries
``"status": "error"`` so rating can treat failures differently without touching the ledger. Not billing
failed spans is not implemented: a definition with ``bill_failed=False`` is refused when it is created,
rather than billing failures while saying it does not.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass

from opentelemetry.proto.trace.v1.trace_pb2 import Span

from spanmeter import attributes as A

__all__ = [
    "ALL_METERS",
    "API_REQUESTS",
    "CACHE_READ_TOKENS",
    "CACHE_WRITE_TOKENS",
    "CURRENT_METERS",
    "GPU_SECONDS",
    "INPUT_TOKENS",
    "METER_CODES",
    "OUTPUT_TOKENS",
    "REASONING_TOKENS",
    "ROW_LABEL_KEY",
    "SUBSET_OF",
    "WORKER_SECONDS",
    "AbsentOrIn",
    "AllOf",
    "AnyOf",
    "Constant",
    "CountRule",
    "Counted",
    "CountedValue",
    "DurationTenths",
    "DurationTenthsTimesCount",
    "Eq",
    "FirstString",
    "IsTrue",
    "KindIs",
    "MetadataRule",
    "MeterDefinition",
    "MeterRouting",
    "OnUnattributed",
    "OptionalCount",
    "Predicate",
    "Present",
    "QuantityRule",
    "rule_keys",
]

MAX_GPU_COUNT = 4096
MAX_TOKENS_PER_SPAN = 1_000_000_000

# The metadata key whose value a row hands the exporter as its label (the compact row's label slot, which
# the routing label "gpu_model" reads). One key for every meter: the native core fills one slot per row.
ROW_LABEL_KEY = A.GPU_MODEL


class OnUnattributed(enum.Enum):
    """What happens to a span that matches a meter but carries no ``account_id``."""

    REJECT = "reject"  # the whole span goes to rejected_spans (reason ``unattributed``)
    COUNT_ONLY = "count_only"  # counted in spanmeter_spans_unattributed_total{meter}, not stored


# -- match predicates --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Eq:
    """The attribute is present and its string value ("" for a non-string) equals ``text``."""

    key: str
    text: str


@dataclass(frozen=True, slots=True)
class IsTrue:
    """The attribute is bool true, or a string equal to "true" ignoring case."""

    key: str


@dataclass(frozen=True, slots=True)
class Present:
    """The attribute is present (any value)."""

    key: str


@dataclass(frozen=True, slots=True)
class KindIs:
    """The span's kind is ``kind`` (a ``Span.SpanKind`` value)."""

    kind: int


@dataclass(frozen=True, slots=True)
class AbsentOrIn:
    """The attribute is absent, or its string value is one of ``texts``."""

    key: str
    texts: frozenset[str]


@dataclass(frozen=True, slots=True)
class AllOf:
    parts: tuple[Predicate, ...]


@dataclass(frozen=True, slots=True)
class AnyOf:
    parts: tuple[Predicate, ...]


Predicate = Eq | IsTrue | Present | KindIs | AbsentOrIn | AllOf | AnyOf


# -- count validation --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CountRule:
    """The whole number a meter reads: the first of ``keys`` present (the current name, then legacy ones),
    an integer (or an integral double) in ``min``..``max``; anything else rejects the whole span with
    ``reason`` (one of ``usage.REJECT_REASONS``) and ``message``."""

    keys: tuple[str, ...]
    min: int
    max: int
    reason: str
    message: str


# -- quantity ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DurationTenths:
    """The duration rounded UP to the next 100 ms, in seconds: ``Decimal(tenths).scaleb(-1)``."""


@dataclass(frozen=True, slots=True)
class DurationTenthsTimesCount:
    """The same times the validated count: ``Decimal(tenths * count).scaleb(-1)``."""


@dataclass(frozen=True, slots=True)
class Counted:
    """The validated count: ``Decimal(count)``."""


@dataclass(frozen=True, slots=True)
class Constant:
    """A constant whole number: ``Decimal(value)``."""

    value: int


QuantityRule = DurationTenths | DurationTenthsTimesCount | Counted | Constant


# -- metadata --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FirstString:
    """``metadata[out]``: the first of ``keys`` holding a non-empty string (capped text), else the last one
    tried when it is a string (even empty); nothing when none is a string."""

    out: str
    keys: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class CountedValue:
    """``metadata[out]``: the validated count, as an integer."""

    out: str


@dataclass(frozen=True, slots=True)
class OptionalCount:
    """``metadata[out]``: the attribute ``key`` when it is a whole number in 0..``max``, else nothing (kept
    for explanation, never billed)."""

    out: str
    key: str
    max: int


MetadataRule = FirstString | CountedValue | OptionalCount


# -- the definition ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MeterRouting:
    """Where a committed row's quantity is counted in Prometheus: the ``spanmeter_billable_*`` counter of
    :mod:`spanmeter.metrics_catalog` named ``metric``, with ``labels`` in the counter's order, each one of
    ``"plan"`` (the row's plan code, capped), ``"gpu_model"`` (the row's label, ``metadata[ROW_LABEL_KEY]``,
    capped) or ``"=text"`` (that text). A definition without routing counts its rows in
    ``spanmeter_spans_billed_total`` only."""

    metric: str
    labels: tuple[str, ...]


@dataclass(frozen=True, slots=True, eq=False)  # identity equality: definitions are module constants
class MeterDefinition:
    code: str
    version: int
    unit: str  # UCUM, as OpenTelemetry writes units
    description: str
    on_unattributed: OnUnattributed
    match: Predicate
    quantity: QuantityRule
    count: CountRule | None = None
    metadata: tuple[MetadataRule, ...] = ()
    bill_failed: bool = True
    routing: MeterRouting | None = None

    def __post_init__(self) -> None:
        name = f"{self.code} v{self.version}"
        if not self.bill_failed:
            raise ValueError(f"{name}: bill_failed=False is not implemented (failed spans bill)")
        reads_count = isinstance(self.quantity, Counted | DurationTenthsTimesCount) or any(
            isinstance(rule, CountedValue) for rule in self.metadata
        )
        if reads_count and self.count is None:
            raise ValueError(f"{name}: its quantity or metadata reads a count, but it has no count rule")
        if self.count is not None and not (0 <= self.count.min <= self.count.max and self.count.keys):
            raise ValueError(f"{name}: a count rule needs keys and 0 <= min <= max")
        if isinstance(self.quantity, Constant) and self.quantity.value < 0:
            raise ValueError(f"{name}: a constant quantity cannot be negative")


def _predicate_keys(predicate: Predicate) -> Iterator[str]:
    match predicate:
        case Eq(key=key) | IsTrue(key=key) | Present(key=key) | AbsentOrIn(key=key):
            yield key
        case AllOf(parts=parts) | AnyOf(parts=parts):
            for part in parts:
                yield from _predicate_keys(part)
        case KindIs():
            pass


def rule_keys(meter: MeterDefinition) -> frozenset[str]:
    """Every span attribute key the meter's rules read."""
    keys = set(_predicate_keys(meter.match))
    if meter.count is not None:
        keys.update(meter.count.keys)
    for rule in meter.metadata:
        match rule:
            case FirstString(keys=read):
                keys.update(read)
            case OptionalCount(key=key):
                keys.add(key)
            case CountedValue():
                pass
    return frozenset(keys)


# -- version 1 (frozen: these have billed) -----------------------------------------------------------------


def _tokens(
    code: str, direction: str, current: str, legacy: str, subsets: tuple[str, ...], description: str
) -> MeterDefinition:
    """A GenAI token meter: model calls (operation absent or billable) with the current or legacy count."""
    return MeterDefinition(
        code=code,
        version=1,
        unit="{token}",
        description=description,
        on_unattributed=OnUnattributed.REJECT,
        match=AllOf(
            (
                AbsentOrIn(A.GEN_AI_OPERATION_NAME, A.GEN_AI_BILLABLE_OPERATIONS),
                AnyOf((Present(current), Present(legacy))),
            )
        ),
        count=CountRule(
            (current, legacy),
            0,
            MAX_TOKENS_PER_SPAN,
            "invalid_tokens",
            f"{code} must be a whole number from 0 to {MAX_TOKENS_PER_SPAN}",
        ),
        quantity=Counted(),
        metadata=(
            FirstString("gen_ai.model", (A.GEN_AI_RESPONSE_MODEL, A.GEN_AI_REQUEST_MODEL)),
            FirstString(A.GEN_AI_PROVIDER_NAME, (A.GEN_AI_PROVIDER_NAME, A.GEN_AI_SYSTEM)),
            FirstString(A.GEN_AI_OPERATION_NAME, (A.GEN_AI_OPERATION_NAME,)),
            # subsets of the billed count: kept for explanation, never billed again
            *(OptionalCount(key, key, MAX_TOKENS_PER_SPAN) for key in subsets),
        ),
        routing=MeterRouting("spanmeter_billable_tokens_total", ("plan", "=" + direction)),
    )


WORKER_SECONDS = MeterDefinition(
    code="worker_seconds",
    version=1,
    unit="s",
    description="Worker time of Celery task runs and spanmeter.work_unit spans, rounded up to 100 ms",
    on_unattributed=OnUnattributed.REJECT,
    match=AnyOf((Eq(A.CELERY_ACTION, A.CELERY_ACTION_RUN), IsTrue(A.WORK_UNIT))),
    quantity=DurationTenths(),
    metadata=(FirstString(A.CELERY_TASK_NAME, (A.CELERY_TASK_NAME,)),),
    routing=MeterRouting("spanmeter_billable_worker_seconds_total", ("plan",)),
)
GPU_SECONDS = MeterDefinition(
    code="gpu_seconds",
    version=1,
    unit="s",
    description="GPU time: span duration rounded up to 100 ms, times gpu.count",
    on_unattributed=OnUnattributed.REJECT,
    match=Present(A.GPU_COUNT),
    count=CountRule(
        (A.GPU_COUNT,), 1, MAX_GPU_COUNT, "invalid_gpu_count", f"gpu.count must be an integer from 1 to {MAX_GPU_COUNT}"
    ),
    quantity=DurationTenthsTimesCount(),
    metadata=(CountedValue(A.GPU_COUNT), FirstString(A.GPU_MODEL, (A.GPU_MODEL,))),
    routing=MeterRouting("spanmeter_billable_gpu_seconds_total", ("plan", "gpu_model")),
)
INPUT_TOKENS = _tokens(
    "input_tokens",
    "input",
    A.GEN_AI_USAGE_INPUT_TOKENS,
    A.GEN_AI_USAGE_PROMPT_TOKENS,
    (A.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS, A.GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS),
    "LLM input tokens of model calls (cache tokens included, never billed twice)",
)
OUTPUT_TOKENS = _tokens(
    "output_tokens",
    "output",
    A.GEN_AI_USAGE_OUTPUT_TOKENS,
    A.GEN_AI_USAGE_COMPLETION_TOKENS,
    (A.GEN_AI_USAGE_REASONING_OUTPUT_TOKENS,),
    "LLM output tokens of model calls (reasoning tokens included, never billed twice)",
)


def _token_subset(code: str, key: str, kind: str, description: str) -> MeterDefinition:
    """A subset of a model call's input or output count (cache reads, cache writes, reasoning), metered on its
    own row so a price book can price it apart. It is *inside* its parent's count (``input_tokens`` or
    ``output_tokens`` already bills it): rating takes it out of the parent and prices it once
    (:func:`spanmeter.billing.pricebook.rate.split_tokens`), flat-rate pricing versions ignore it. Counted in
    ``spanmeter_billable_token_subsets_total``, never in ``spanmeter_billable_tokens_total`` (which would then
    count these tokens twice)."""
    return MeterDefinition(
        code=code,
        version=1,
        unit="{token}",
        description=description,
        on_unattributed=OnUnattributed.REJECT,
        match=AllOf((AbsentOrIn(A.GEN_AI_OPERATION_NAME, A.GEN_AI_BILLABLE_OPERATIONS), Present(key))),
        count=CountRule(
            (key,),
            0,
            MAX_TOKENS_PER_SPAN,
            "invalid_tokens",
            f"{key} must be a whole number from 0 to {MAX_TOKENS_PER_SPAN}",
        ),
        quantity=Counted(),
        metadata=(
            FirstString("gen_ai.model", (A.GEN_AI_RESPONSE_MODEL, A.GEN_AI_REQUEST_MODEL)),
            FirstString(A.GEN_AI_PROVIDER_NAME, (A.GEN_AI_PROVIDER_NAME, A.GEN_AI_SYSTEM)),
            FirstString(A.GEN_AI_OPERATION_NAME, (A.GEN_AI_OPERATION_NAME,)),
        ),
        routing=MeterRouting("spanmeter_billable_token_subsets_total", ("plan", "=" + kind)),
    )


CACHE_READ_TOKENS = _token_subset(
    "cache_read_tokens",
    A.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS,
    "cache_read",
    "Cached input tokens read by model calls (a subset of input_tokens, priced apart by price books)",
)
CACHE_WRITE_TOKENS = _token_subset(
    "cache_write_tokens",
    A.GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS,
    "cache_write",
    "Input tokens written to the provider's cache by model calls (a subset of input_tokens)",
)
REASONING_TOKENS = _token_subset(
    "reasoning_tokens",
    A.GEN_AI_USAGE_REASONING_OUTPUT_TOKENS,
    "reasoning",
    "Reasoning tokens of model calls (a subset of output_tokens, priced apart by price books)",
)
API_REQUESTS = MeterDefinition(
    code="api_requests",
    version=1,
    unit="{request}",
    description="One per HTTP SERVER span",
    on_unattributed=OnUnattributed.COUNT_ONLY,
    match=AllOf(
        (KindIs(int(Span.SpanKind.SPAN_KIND_SERVER)), AnyOf((Present(A.HTTP_REQUEST_METHOD), Present(A.HTTP_METHOD))))
    ),
    quantity=Constant(1),
    metadata=(FirstString("http.request.method", (A.HTTP_REQUEST_METHOD, A.HTTP_METHOD)),),
    routing=MeterRouting("spanmeter_billable_api_requests_total", ("plan",)),
)

# Every definition that ever billed, keyed by (code, version). Never remove or edit an entry.
# A subset meter's rows are part of its parent's count: a producer allowed the parent may bill them too.
SUBSET_OF: dict[str, str] = {
    CACHE_READ_TOKENS.code: INPUT_TOKENS.code,
    CACHE_WRITE_TOKENS.code: INPUT_TOKENS.code,
    REASONING_TOKENS.code: OUTPUT_TOKENS.code,
}
_METERS = (
    WORKER_SECONDS,
    GPU_SECONDS,
    INPUT_TOKENS,
    OUTPUT_TOKENS,
    CACHE_READ_TOKENS,
    CACHE_WRITE_TOKENS,
    REASONING_TOKENS,
    API_REQUESTS,
)
ALL_METERS: dict[tuple[str, int], MeterDefinition] = {(m.code, m.version): m for m in _METERS}
# The definitions new usage is metered with, in the order a span's matched meters are listed.
CURRENT_METERS: dict[str, MeterDefinition] = {m.code: m for m in _METERS}
METER_CODES: tuple[str, ...] = tuple(CURRENT_METERS)
