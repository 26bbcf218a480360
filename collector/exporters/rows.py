"""Conversions from metered spans to ledger rows, shared by every path that writes the ledger
(the live exporter, ``spanmeter ingest`` backfill, dead-letter replay)."""

from __future__ import annotations

import json

from spanmeter.billing.ledger.writer import RejectedSpanRow, UsageEventRow

from ..processors.usage import Rejection, UsageRow

__all__ = ["rejected_span_row", "usage_event_row"]


def usage_event_row(row: UsageRow) -> UsageEventRow:
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
        json.dumps(row.metadata, separators=(",", ":")),
    )


def rejected_span_row(rejection: Rejection) -> RejectedSpanRow:
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
    )
