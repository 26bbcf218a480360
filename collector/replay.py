"""Dead-letter replay: re-meter rejected spans, optionally supplying what they lacked, exactly once.

``replay(database, …)`` selects rejected spans (by reason, by key, or both) that no replay has billed
yet, re-runs the current meter definitions on each stored span (resource, scope and span as received),
and writes the resulting usage rows through the idempotent ledger path. ``patch`` supplies attribution the
span lacked (``account_id``, ``job_id``, ``plan_code`` only): it is set on the span's attributes before
metering and recorded, with who did it and why, in ``dead_letter_replays`` and in each usage row's
metadata (``replay``). Corrections stay append-only: the rejected span is kept as it was.

Exactly once: a replayed span is recorded in ``dead_letter_replays`` in the same transaction as its
usage rows, and is not selected again; its usage rows have the idempotency keys the span would have had
live, so a span that also arrives later (fixed at the source) is not billed twice either. A span that
fails validation again is left pending and reported with its new reason.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import psycopg
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans

from spanmeter import attributes as A
from spanmeter.billing.ledger.database import Database
from spanmeter.billing.ledger.writer import LedgerWriter

from .exporters.rows import usage_event_row
from .processors.usage import MeteringLimits, meter_request

__all__ = ["PATCHABLE_KEYS", "ReplayError", "ReplayReport", "patch_span", "replay"]

PATCHABLE_KEYS = frozenset(A.ATTRIBUTION_KEYS)


class ReplayError(ValueError):
    pass


@dataclass
class ReplayReport:
    selected: int = 0
    billed_spans: int = 0
    new_rows: int = 0
    duplicate_rows: int = 0
    not_billable: int = 0
    rejected_again: Counter[str] = field(default_factory=Counter)

    def line(self) -> str:
        again = ", ".join(f"{reason} x{count}" for reason, count in sorted(self.rejected_again.items())) or "none"
        return (
            f"{self.selected} rejected spans selected: {self.billed_spans} billed "
            f"({self.new_rows} new usage rows, {self.duplicate_rows} already in the ledger), "
            f"{self.not_billable} not billable, rejected again: {again}"
        )


def patch_span(resource_spans: ResourceSpans, patch: dict[str, str]) -> None:
    """Set ``patch`` on the (single) stored span's attributes, replacing existing values."""
    span = resource_spans.scope_spans[0].spans[0]
    kept = [kv for kv in span.attributes if kv.key not in patch]
    del span.attributes[:]
    span.attributes.extend(kept)
    for key, value in patch.items():
        span.attributes.append(KeyValue(key=key, value=AnyValue(string_value=value)))


_SELECT = """
SELECT r.rejection_key, r.reason, r.payload
FROM rejected_spans r
WHERE NOT EXISTS (SELECT 1 FROM dead_letter_replays d WHERE d.rejection_key = r.rejection_key)
  AND (%(reason)s::text IS NULL OR r.reason = %(reason)s)
  AND (%(key)s::uuid IS NULL OR r.rejection_key = %(key)s)
ORDER BY r.rejected_at, r.rejection_key
FOR UPDATE OF r SKIP LOCKED
"""
# a replay running at the same time may have recorded the span first: its rows are then duplicates here
_RECORD = """
INSERT INTO dead_letter_replays (rejection_key, replayed_by, reason, patch, usage_rows, idempotency_keys)
VALUES (%s, %s, %s, %s, %s, %s)
ON CONFLICT (rejection_key) DO NOTHING
"""


def replay(
    database: Database,
    *,
    reason: str | None,
    rejection_key: str | None,
    patch: dict[str, str],
    replayed_by: str,
    why: str,
    limits: MeteringLimits,
    clock_unix_nano: Callable[[], int] = time.time_ns,
) -> ReplayReport:
    if reason is None and rejection_key is None:
        raise ReplayError("choose what to replay: --reason R or --id ID")
    unknown = set(patch) - PATCHABLE_KEYS
    if unknown:
        raise ReplayError(f"--patch may set only {', '.join(sorted(PATCHABLE_KEYS))}, not {', '.join(sorted(unknown))}")
    if patch and not why.strip():
        raise ReplayError("--why is required with --patch: say why the attribution is being supplied")
    report = ReplayReport()
    with psycopg.connect(database.conninfo) as conn:
        writer = LedgerWriter(conn)
        selected = conn.execute(_SELECT, {"reason": reason, "key": rejection_key}).fetchall()
        report.selected = len(selected)
        rows: list = []
        records: list[tuple] = []
        for key, _old_reason, payload in selected:
            resource_spans = ResourceSpans.FromString(payload)
            if patch:
                patch_span(resource_spans, patch)
            request = ExportTraceServiceRequest(resource_spans=[resource_spans])
            result = meter_request(request, limits, clock_unix_nano())
            if result.rejections:
                report.rejected_again[result.rejections[0].reason] += 1
                continue
            if not result.rows:
                report.not_billable += 1
                continue
            provenance = {"rejection_key": str(key), "by": replayed_by, "why": why, "patch": patch}
            for row in result.rows:
                row.metadata["replay"] = provenance
            rows.extend(usage_event_row(row) for row in result.rows)
            records.append(
                (key, replayed_by, why, json.dumps(patch), len(result.rows), [r.idempotency_key for r in result.rows])
            )
            report.billed_spans += 1
        # one COPY for every replayed span (the staging table empties only at commit)
        written = writer.write_usage(rows)
        report.new_rows, report.duplicate_rows = written.inserted, written.staged - written.inserted
        if records:
            with conn.cursor() as cur:
                cur.executemany(_RECORD, records)
        conn.commit()
    return report
