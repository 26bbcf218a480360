"""Conversions from metered spans to ledger rows, shared by every path that writes the ledger
(the live exporter, ``spanmeter ingest`` backfill, dead-letter replay)."""

from __future__ import annotations

import json
from typing import Any

from spanmeter.billing.ledger.writer import RejectedSpanRow, UsageEventTuple

from ..consumer import CompactRow
from ..processors.meters import ROW_LABEL_KEY
from ..processors.usage import Rejection, UsageEvent

__all__ = ["compact_row", "rejected_span_row", "usage_event_tuple"]


_METADATA_JSON: dict[tuple[tuple[str, Any], ...], str] = {}
_METADATA_JSON_MAX = 4096


def _metadata_json(metadata: dict[str, Any]) -> str:
    """Metadata as compact JSON, memoised: the same few shapes repeat across millions of rows.

    The key is the items tuple; values are str or int from the processors (never bool or float, whose
    equality with int would alias entries)."""
    try:
        key = tuple(metadata.items())
        cached = _METADATA_JSON.get(key)
    except TypeError:  # an unhashable value (a replay's patch dict): not memoised
        return json.dumps(metadata, separators=(",", ":"))
    if cached is None:
        cached = json.dumps(metadata, separators=(",", ":"))
        if len(_METADATA_JSON) >= _METADATA_JSON_MAX:
            _METADATA_JSON.clear()
        _METADATA_JSON[key] = cached
    return cached


def usage_event_tuple(row: UsageEvent) -> UsageEventTuple:
    """The usage event in the ledger writer's COPY encoding (metadata keys in the event's order)."""
    return (
        row.end_time_unix_nano // 1000,
        row.idempotency_key,
        row.account_id,
        row.job_id,
        row.plan_code,
        row.meter.code,
        row.meter.version,
        str(row.quantity),
        row.meter.unit,
        row.trace_id,
        row.span_id,
        _metadata_json(row.metadata),
    )


def compact_row(row: UsageEvent) -> CompactRow:
    """What the exporter's metrics need of a row: the same tuple the native core hands over (its label is
    the metadata value under ``ROW_LABEL_KEY``, which routing's ``"gpu_model"`` label reads)."""
    label = row.metadata.get(ROW_LABEL_KEY)
    return (
        row.meter.code,
        row.meter.version,
        row.idempotency_key,
        row.plan_code,
        None if label is None else str(label),
        str(row.quantity),
        row.end_time_unix_nano,
    )


def rejected_span_row(rejection: Rejection, producer: str | None = None) -> RejectedSpanRow:
    """A rejected span as ``rejected_spans`` keeps it; ``producer``: the authenticated sender (None: none)."""
    return (
        rejection.rejection_key,
        rejection.reason,
        rejection.message,
        rejection.trace_id,
        rejection.span_id,
        list(rejection.meter_codes),
        rejection.account_id,
        rejection.service_name,
        rejection.end_time_unix_nano // 1000,
        rejection.payload,
        producer,
    )
