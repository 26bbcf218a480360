"""The native metering core (Rust, ``native/``) behind the Python reference's interface.

``spanmeter_native`` is an optional compiled module: ``./scripts/bootstrap.sh`` builds it when a Rust
toolchain (cargo) is present; without one, spanmeter meters in pure Python and says so at start
(``metering python``) and in ``spanmeter_build_info{metering="python"}``. ``SPANMETER_NATIVE=0`` forces the
pure-Python path even where the module is installed. :func:`metering_mode` tells which is in force.

``meter_request_native(body, limits, now, producer)``:

Returns the exact ``MeteringResult`` that ``meter_request(decode_request(body).request, limits, now, producer)``
returns (``UsageEvent`` with Decimal quantities and metadata dicts, ``Rejection`` with its stored payload), or
``None`` when the native core falls back (invalid UTF-8, malformed or unusual wire data, limits): the caller
then runs the Python path. ``meter_native(...)`` returns the raw native result (COPY text + compact tuples),
which is what a receiver would use; ``to_metering_result`` converts it.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections import Counter
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from ..otlp import decode_request
from .native_table import build_table, producer_argument
from .requests import ServiceRequest
from .rules import CURRENT_METER_SET, MeterSet
from .usage import MeteringLimits, MeteringResult, Rejection, UsageEvent, _payload

try:
    import spanmeter_native
except ImportError:  # no Rust toolchain where spanmeter was installed: pure Python
    spanmeter_native = None

__all__ = [
    "FALLBACK_REASONS",
    "STATS",
    "count_spans",
    "meter",
    "meter_native",
    "meter_request_native",
    "metering_mode",
    "to_metering_result",
    "usage_rows",
]

STATS: Counter[str] = Counter()  # "native" and the fallback reasons, per process
_METER: Any = None
_METER_LOCK = threading.Lock()


def metering_mode() -> str:
    """``native`` when the compiled core is installed and not disabled (``SPANMETER_NATIVE=0``), else
    ``python``."""
    if spanmeter_native is None or os.environ.get("SPANMETER_NATIVE", "1").strip() == "0":
        return "python"
    return "native"


def meter() -> Any:
    """The compiled metering table (built once, from the Python meter definitions)."""
    global _METER
    if _METER is None:
        with _METER_LOCK:
            if _METER is None:
                if spanmeter_native is None:
                    raise RuntimeError("spanmeter_native is not installed: run ./scripts/bootstrap.sh with cargo")
                _METER = spanmeter_native.Meter(build_table())
    return _METER


def count_spans(body: bytes) -> int | None:
    """The spans in an Export request, from its framing alone (microseconds, GIL released), or None: the
    compiled core is not installed, or the framing is not well formed (a full decode decides)."""
    if spanmeter_native is None:
        return None
    try:
        counted: int | None = spanmeter_native.count_spans(body)
        return counted
    except Exception:  # never raises for any bytes; if it did, the full decode decides
        return None


def _bounds(limits: MeteringLimits, now_unix_nano: int) -> tuple[int, int, int]:
    return (
        limits.max_span_duration_seconds * 1_000_000_000,
        now_unix_nano - limits.max_span_age_seconds * 1_000_000_000,
        now_unix_nano + limits.max_clock_skew_seconds * 1_000_000_000,
    )


def meter_native(
    body: bytes,
    limits: MeteringLimits,
    now_unix_nano: int,
    producer: Any = None,
    on_fallback: Callable[[str], None] | None = None,
) -> Any:
    """The raw native result, or None (fall back to the Python reference). ``on_fallback(reason)`` is told why:
    ``handed_back`` (the core met something it leaves to Python: invalid UTF-8, unusual wire data, limits),
    ``panic`` (a bug in the core, caught: never a dead handler), ``overflow`` (a bound beyond 128 bits),
    ``producer`` (a producer policy the core cannot express)."""
    if spanmeter_native is None:  # not installed: the Python reference decides
        return None
    max_duration_ns, oldest, newest = _bounds(limits, now_unix_nano)
    reason = None
    result = None
    try:
        native_producer = producer_argument(producer)
    except TypeError:  # a producer policy other than collector.auth.Producer
        reason = "producer"
    if reason is None:
        try:
            result = meter().meter(body, now_unix_nano, max_duration_ns, oldest, newest, native_producer)
            reason = None if result is not None else "handed_back"
        except spanmeter_native.NativePanic:
            reason = "panic"
        except OverflowError:
            reason = "overflow"
    STATS[reason or "native"] += 1
    if reason is not None and on_fallback is not None:
        on_fallback(reason)
    return result


FALLBACK_REASONS = ("handed_back", "panic", "overflow", "producer")


def usage_rows(native: Any, synthetic: bool = False, meters: MeterSet = CURRENT_METER_SET) -> list[UsageEvent]:
    """The native result's ledger rows (or its synthetic rows) as the reference's :class:`UsageEvent`;
    ``meters``: the set the native core's table was built from."""
    rows = []
    for code, version, key, account, job, plan, quantity, end_ns, trace, span, metadata in native.full_rows(synthetic):
        meter = meters.definition(code, version)
        rows.append(
            UsageEvent(
                meter=meter,
                idempotency_key=key,
                account_id=account,
                job_id=job,
                plan_code=plan,
                quantity=Decimal(quantity),
                end_time_unix_nano=end_ns,
                trace_id=trace,
                span_id=span,
                metadata=dict(metadata),
            )
        )
    return rows


def to_metering_result(
    native: Any, body: bytes, with_rows: bool = True, meters: MeterSet = CURRENT_METER_SET
) -> MeteringResult:
    """The native result as the reference's :class:`MeteringResult`. ``with_rows=False`` leaves ``rows``
    and ``synthetic_rows`` empty: a receiver hands the ledger ``native.copy_text`` and the compact
    ``native.rows`` instead, and builds :func:`usage_rows` only if it ever needs them; its
    ``service_requests`` are then the core's plain ``(service, operation, outcome, duration)`` tuples, in
    :class:`ServiceRequest`'s field order (a named tuple per entry span cost the receiver a sixth of its
    Python time when every span is one). ``meters``: the set the native core's table was built from."""
    result = MeteringResult(spans_received=native.spans_received)
    if with_rows:
        result.rows = usage_rows(native, meters=meters)
        result.synthetic_rows = usage_rows(native, synthetic=True, meters=meters)
    rejections = native.rejections
    if rejections:
        request = decode_request(body).request  # only when there is something to store
        for reason, message, trace, span, codes, account, service, end_ns, (ri, si, pi) in rejections:
            rs = request.resource_spans[ri]
            ss = rs.scope_spans[si]
            payload = _payload(rs, ss, ss.spans[pi])
            result.rejections.append(
                Rejection(
                    reason=reason,
                    message=message,
                    rejection_key=hashlib.blake2b(payload, digest_size=16).hexdigest(),
                    trace_id=trace,
                    span_id=span,
                    meter_codes=codes,
                    account_id=account,
                    service_name=service,
                    end_time_unix_nano=end_ns,
                    payload=payload,
                )
            )
    for code, count in native.unattributed:
        result.unattributed[code] += count
    requests = native.service_requests
    result.service_requests = [ServiceRequest(*sr) for sr in requests] if with_rows else requests
    return result


def meter_request_native(
    body: bytes, limits: MeteringLimits, now_unix_nano: int, producer: Any = None
) -> MeteringResult | None:
    native = meter_native(body, limits, now_unix_nano, producer)
    if native is None:
        return None
    return to_metering_result(native, body)
