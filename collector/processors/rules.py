"""The meter rules of :mod:`.meters`, applied in Python: the reference :mod:`.usage` meters with.

Every rule kind has one meaning here, and the native core gives it the same one from the table
:mod:`.native_table` serializes (the differential tests hold the two against each other). Nothing here
names a meter: a new meter or meter version is a new :class:`~.meters.MeterDefinition` in a
:class:`MeterSet`.

Attribute values are read as the metering loop keeps them (``AnyValue`` by key), through the readers
below, which both cores share in meaning: :func:`text` (NUL replaced, capped), :func:`attribution`,
:func:`string`, :func:`is_true` and :func:`count`.
"""

from __future__ import annotations

import enum
import functools
import math
from collections.abc import Callable, Iterable, Sequence
from decimal import Decimal
from typing import Any, Literal

from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from .meters import (
    CURRENT_METERS,
    AbsentOrIn,
    AllOf,
    AnyOf,
    Constant,
    Counted,
    CountedValue,
    DurationTenths,
    DurationTenthsTimesCount,
    Eq,
    FirstString,
    IsTrue,
    KindIs,
    MetadataRule,
    MeterDefinition,
    OptionalCount,
    Predicate,
    Present,
    QuantityRule,
    rule_keys,
)

__all__ = [
    "CURRENT_METER_SET",
    "INVALID",
    "MAX_ATTRIBUTION_LENGTH",
    "MAX_METADATA_TEXT",
    "Attributes",
    "MeterSet",
    "add_metadata",
    "attribution",
    "count",
    "count_refusal",
    "is_true",
    "quantity",
    "string",
    "text",
]

MAX_ATTRIBUTION_LENGTH = 256
MAX_METADATA_TEXT = 512

Attributes = dict[str, AnyValue]  # a span's attributes the metering loop kept, by key
Matcher = Callable[[int, Attributes], bool]  # (span kind, attributes) -> matches


class _Invalid(enum.Enum):
    INVALID = "invalid"


INVALID: Literal[_Invalid.INVALID] = _Invalid.INVALID  # a value present but not a valid count


# -- attribute values --------------------------------------------------------------------------------------


def text(value: str, limit: int = MAX_METADATA_TEXT) -> str:
    # Postgres text and jsonb cannot hold NUL; cap length so one span cannot bloat the ledger.
    if "\x00" in value:
        value = value.replace("\x00", "\ufffd")
    return value[:limit]


def attribution(value: AnyValue | None) -> str | None:
    """An attribution value: a non-empty string (or an integer, written in decimal) of sane length."""
    if value is None:
        return None
    kind = value.WhichOneof("value")
    if kind == "string_value":
        raw = value.string_value
    elif kind == "int_value":
        raw = str(value.int_value)
    else:
        return None
    if not raw or len(raw) > MAX_ATTRIBUTION_LENGTH:
        return None
    return text(raw)


def string(value: AnyValue | None) -> str | None:
    if value is None or value.WhichOneof("value") != "string_value":
        return None
    return text(value.string_value)


def is_true(value: AnyValue | None) -> bool:
    if value is None:
        return False
    kind = value.WhichOneof("value")
    if kind == "bool_value":
        return bool(value.bool_value)
    if kind == "string_value":
        return bool(value.string_value.lower() == "true")
    return False


def count(value: AnyValue | None, upper: int) -> int | Literal[_Invalid.INVALID] | None:
    """A whole number in 0..upper, None when absent, or INVALID. Integral doubles are accepted (some SDKs
    send them)."""
    if value is None:
        return None
    kind = value.WhichOneof("value")
    if kind == "int_value":
        number = value.int_value
    elif kind == "double_value":
        d = value.double_value
        if not math.isfinite(d) or d != int(d):
            return INVALID
        number = int(d)
    else:
        return INVALID
    if number < 0 or number > upper:
        return INVALID
    return number


# -- match ---------------------------------------------------------------------------------------------------


def _matcher(predicate: Predicate) -> Matcher:
    """The predicate as a function of (span kind, attributes)."""
    match predicate:
        case Eq(key, expected):
            return lambda kind, attrs: key in attrs and attrs[key].string_value == expected
        case IsTrue(key):
            return lambda kind, attrs: is_true(attrs.get(key))
        case Present(key):
            return lambda kind, attrs: key in attrs
        case KindIs(wanted):
            return lambda kind, attrs: kind == wanted
        case AbsentOrIn(key, texts):
            return lambda kind, attrs: key not in attrs or attrs[key].string_value in texts
        case AllOf(parts):
            every: Matcher = _always
            return functools.reduce(_both, map(_matcher, parts), every)
        case AnyOf(parts):
            none: Matcher = _never
            return functools.reduce(_either, map(_matcher, parts), none)


def _always(kind: int, attrs: Attributes) -> bool:
    return True


def _never(kind: int, attrs: Attributes) -> bool:
    return False


def _both(first: Matcher, second: Matcher) -> Matcher:
    if first is _always:
        return second
    return lambda kind, attrs: first(kind, attrs) and second(kind, attrs)


def _either(first: Matcher, second: Matcher) -> Matcher:
    if first is _never:
        return second
    return lambda kind, attrs: first(kind, attrs) or second(kind, attrs)


def _trigger_keys(predicate: Predicate) -> frozenset[str] | None:
    """Keys one of which a span must carry for the predicate to hold (None: it can hold without any), so that
    most meters are ruled out by one set operation."""
    match predicate:
        case Eq(key) | IsTrue(key) | Present(key):
            return frozenset({key})
        case KindIs() | AbsentOrIn():
            return None
        case AllOf(parts):
            required = [keys for keys in map(_trigger_keys, parts) if keys is not None]
            return min(required, key=len) if required else None
        case AnyOf(parts):
            alternatives = list(map(_trigger_keys, parts))
            if not alternatives or any(keys is None for keys in alternatives):
                return None
            return frozenset().union(*(keys for keys in alternatives if keys is not None))


class MeterSet:
    """The meter definitions in force, in the order a span's matched meters are listed (and its rows
    written), prepared for the reference: each match predicate compiled once, the attribute keys the rules
    read collected, and the span kinds under which a span without attributes can match at all."""

    __slots__ = ("_by_version", "_matchers", "attribute_keys", "bare_kinds", "meters")

    def __init__(self, meters: Iterable[MeterDefinition]) -> None:
        self.meters: tuple[MeterDefinition, ...] = tuple(meters)
        codes = [m.code for m in self.meters]
        if len(set(codes)) != len(codes):
            raise ValueError(f"a meter set holds one version of each meter: {codes}")
        self._matchers = tuple((m, _trigger_keys(m.match), _matcher(m.match)) for m in self.meters)
        self._by_version = {(m.code, m.version): m for m in self.meters}
        self.attribute_keys: frozenset[str] = frozenset().union(*map(rule_keys, self.meters))
        self.bare_kinds: frozenset[int] = frozenset(
            kind for kind in Span.SpanKind.values() if any(match(kind, {}) for _, _, match in self._matchers)
        )

    def match(self, kind: int, attrs: Attributes) -> list[MeterDefinition]:
        return [
            meter
            for meter, triggers, matches in self._matchers
            if (triggers is None or not triggers.isdisjoint(attrs)) and matches(kind, attrs)
        ]

    def definition(self, code: str, version: int) -> MeterDefinition:
        """The definition a row of this meter version was metered with (KeyError: not in this set)."""
        return self._by_version[(code, version)]


CURRENT_METER_SET = MeterSet(CURRENT_METERS.values())


# -- count, quantity, metadata -----------------------------------------------------------------------------


def count_refusal(matched: Sequence[MeterDefinition], attrs: Attributes, counts: list[int]) -> tuple[str, str] | None:
    """Validate the matched meters' count rules in order, appending each meter's count to ``counts`` (0
    without a rule); the first failing rule's (reason, message), or None."""
    for meter in matched:
        rule = meter.count
        if rule is None:
            counts.append(0)
            continue
        value = next((attrs[key] for key in rule.keys if key in attrs), None)  # the current name, then legacy
        number = count(value, rule.max)
        if number is None or number is INVALID or number < rule.min:
            return rule.reason, rule.message
        counts.append(number)
    return None


def quantity(rule: QuantityRule, tenths: int, counted: int) -> Decimal:
    """The row's quantity, from the span's duration in tenths of a second (rounded up) and the meter's count."""
    match rule:
        case DurationTenths():
            return Decimal(tenths).scaleb(-1)
        case DurationTenthsTimesCount():
            return Decimal(tenths * counted).scaleb(-1)
        case Counted():
            return Decimal(counted)
        case Constant(value):
            return Decimal(value)


def add_metadata(rules: Sequence[MetadataRule], attrs: Attributes, counted: int, metadata: dict[str, Any]) -> None:
    """Apply the meter's metadata rules, in order, to the row's metadata (a key already there keeps its place)."""
    for rule in rules:
        match rule:
            case FirstString(out, keys):
                found = None
                for key in keys:  # `string(a) or string(b) or ...`
                    found = string(attrs.get(key))
                    if found:
                        break
                if found is not None:
                    metadata[out] = found
            case CountedValue(out):
                metadata[out] = counted
            case OptionalCount(out, key, upper):
                number = count(attrs.get(key), upper)
                if number is not None and number is not INVALID:
                    metadata[out] = number
