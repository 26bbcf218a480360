"""The metering table handed to ``spanmeter_native.Meter(table)``: a meter set's definitions serialized, and
the algorithm's fixed vocabulary (``spanmeter.attributes``, ``usage.py``'s and ``rules.py``'s constants).

The Rust core knows the algorithm of ``usage.meter_request`` (match → validate → quantities → metadata →
rows) and the rule vocabulary of :mod:`.meters`; it names no meter code and no attribute key. A new meter
or meter version is a new definition: :func:`build_table` serializes it as it serializes every other
(each rule kind has one table form, below), and neither this module, ``usage.py`` nor Rust changes.

Format 1 (plain Python values)::

    span_keys / resource_keys        the only attribute keys read (usage.span_keys(meters) / _RESOURCE_KEYS)
    span_*_key / resource_*_key      attribution keys (account, job, plan), service.name, synthetic
    attribution_max_length           rules.attribution's bound (code points); text_limit: rules.text's cap
    base_metadata                    [("span_name", out) | ("service_name", out) | ("status_is", out, code, text)]
    label_metadata_key               the metadata key returned in the compact row tuple (meters.ROW_LABEL_KEY)
    rejects                          {check: (reason, message)}: the fixed checks' (usage.CHECK_MESSAGES);
                                     "{max_duration_s}" / "{codes}" are filled in by the core
    requests                         the request-SLI rules of collector.processors.requests
    meters: [{code, version, unit, reject_unattributed,          (a MeterDefinition, in the set's order)
              match:     predicate: ("eq", key, text) | ("true", key) | ("present", key) | ("kind", int)
                                    | ("absent_or_in", key, [texts]) | ("all", [p...]) | ("any", [p...])
              count:     None | {keys: [current, legacy...], min, max, reject: (reason, message)}
                         (validated in meter order, after the id/time checks; the first failure rejects)
              quantity:  ("duration_tenths",) | ("duration_tenths_x_count",) | ("count",) | ("const", n)
              metadata:  [("string", out, [keys...])      FirstString: `string(a) or string(b) ...`, when not None
                          | ("meter_count", out)           CountedValue: the validated count
                          | ("opt_count", out, key, max)]  OptionalCount: `count(key, max)` when valid
             }]
"""

from __future__ import annotations

from typing import Any

from opentelemetry.proto.trace.v1.trace_pb2 import Status

from spanmeter import attributes as A
from spanmeter.collector.auth import Producer
from spanmeter.collector.processors import requests as R
from spanmeter.collector.processors import usage as U
from spanmeter.collector.processors.meters import (
    ROW_LABEL_KEY,
    AbsentOrIn,
    AllOf,
    AnyOf,
    Constant,
    Counted,
    CountedValue,
    CountRule,
    DurationTenths,
    DurationTenthsTimesCount,
    Eq,
    FirstString,
    IsTrue,
    KindIs,
    MetadataRule,
    MeterDefinition,
    OnUnattributed,
    OptionalCount,
    Predicate,
    Present,
    QuantityRule,
)
from spanmeter.collector.processors.rules import CURRENT_METER_SET, MAX_ATTRIBUTION_LENGTH, MAX_METADATA_TEXT, MeterSet

__all__ = ["TABLE_FORMAT", "build_table", "producer_argument"]

TABLE_FORMAT = 1
_AUTH_ALLOWS = Producer.allows  # the rule the core reproduces from (services, meters)
_AUTH_ALLOWS_ACCOUNT = Producer.allows_account  # and from (exact accounts, prefixes)
_ERROR = int(Status.StatusCode.STATUS_CODE_ERROR)


def _reason(name: str) -> str:
    if name not in U.REJECT_REASONS:
        raise ValueError(f"{name!r} is not one of usage.REJECT_REASONS")
    return name


def _predicate(p: Predicate) -> tuple[Any, ...]:
    match p:
        case Eq(key, text):
            return ("eq", key, text)
        case IsTrue(key):
            return ("true", key)
        case Present(key):
            return ("present", key)
        case KindIs(kind):
            return ("kind", kind)
        case AbsentOrIn(key, texts):
            return ("absent_or_in", key, sorted(texts))
        case AllOf(parts):
            return ("all", [_predicate(part) for part in parts])
        case AnyOf(parts):
            return ("any", [_predicate(part) for part in parts])


def _count(rule: CountRule | None) -> dict[str, Any] | None:
    if rule is None:
        return None
    return {"keys": list(rule.keys), "min": rule.min, "max": rule.max, "reject": (_reason(rule.reason), rule.message)}


def _quantity(rule: QuantityRule) -> tuple[Any, ...]:
    match rule:
        case DurationTenths():
            return ("duration_tenths",)
        case DurationTenthsTimesCount():
            return ("duration_tenths_x_count",)
        case Counted():
            return ("count",)
        case Constant(value):
            return ("const", value)


def _metadata(rule: MetadataRule) -> tuple[Any, ...]:
    match rule:
        case FirstString(out, keys):
            return ("string", out, list(keys))
        case CountedValue(out):
            return ("meter_count", out)
        case OptionalCount(out, key, upper):
            return ("opt_count", out, key, upper)


def _meter(meter: MeterDefinition) -> dict[str, Any]:
    return {
        "code": meter.code,
        "version": meter.version,
        "unit": meter.unit,
        "reject_unattributed": meter.on_unattributed is OnUnattributed.REJECT,
        "match": _predicate(meter.match),
        "count": _count(meter.count),
        "quantity": _quantity(meter.quantity),
        "metadata": [_metadata(rule) for rule in meter.metadata],
    }


def build_table(meters: MeterSet = CURRENT_METER_SET) -> dict[str, Any]:
    """The table for ``usage.meter_request(..., meters=meters)``: the set's definitions in its match order,
    each rule serialized as it stands; the rest is the algorithm's fixed vocabulary."""
    return {
        "format": TABLE_FORMAT,
        "span_keys": sorted(U.span_keys(meters)),
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
        "attribution_max_length": MAX_ATTRIBUTION_LENGTH,
        "text_limit": MAX_METADATA_TEXT,
        "base_metadata": [
            ("span_name", "span.name"),
            ("service_name", A.SERVICE_NAME),
            ("status_is", "status", _ERROR, "error"),
        ],
        "label_metadata_key": ROW_LABEL_KEY,
        "meters": [_meter(meter) for meter in meters.meters],
        "rejects": {
            "unauthorized_producer": _reason("unauthorized_producer"),
            **{check: (_reason(check), message) for check, message in U.CHECK_MESSAGES.items()},
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
    return (services, meters, U.unauthorized_message(producer), exact, prefixes, U.account_message(producer))
