"""Backfill: meter OTLP trace files into the ledger through the same idempotent path as live traffic.

``spanmeter ingest --otlp-file FILE`` reads the file (see :mod:`.otlp_files`), meters every message with
the same processors and limits as ``spanmeter serve``, and writes each message in its own transaction with
the same ``INSERT … ON CONFLICT DO NOTHING``. Re-running it, or ingesting spans the collector already
received live, adds nothing: the idempotency keys are the same. Rejected spans go to ``rejected_spans`` as
they would live, and so does a span whose key the ledger holds with other content (another end time, account,
job, plan or quantity: a ``key_conflict``, never counted as a duplicate; the file names no producer, so a row's
producer is not compared).

Use it after an outage with the files an OpenTelemetry Collector's ``file`` exporter wrote meanwhile. Spans
that ended longer ago than ``SPANMETER_MAX_SPAN_AGE_SECONDS`` are rejected ``stale_timestamp``; raise it for
an old backfill.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from spanmeter.billing.ledger.database import Database
from spanmeter.billing.ledger.writer import LedgerWriter

from .exporters.kept import conflict_rejection, conflicting, outside_rejection
from .exporters.rows import rejected_span_row, usage_event_tuple
from .otlp_files import read_trace_file
from .processors.usage import MeteringLimits, MeteringResult, SpanPayloads, meter_request

__all__ = ["IngestTotals", "ingest_file", "write_metered"]


@dataclass
class IngestTotals:
    messages: int = 0
    spans: int = 0
    new_rows: int = 0
    duplicate_rows: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    unattributed: int = 0
    synthetic: int = 0
    bytes_read: int = 0  # of the file as stored (compressed or not)
    bytes_total: int = 0
    started: float = field(default_factory=time.monotonic)

    def progress(self) -> str:
        """``"12.3 of 45.6 MB (27%), 1,234 messages, 98,765 spans, 45,678 spans/s"``."""
        elapsed = max(time.monotonic() - self.started, 1e-6)
        share = f" ({100 * self.bytes_read / self.bytes_total:.0f}%)" if self.bytes_total else ""
        return (
            f"{self.bytes_read / 1e6:,.1f} of {self.bytes_total / 1e6:,.1f} MB{share}, {self.messages:,} messages, "
            f"{self.spans:,} spans, {self.spans / elapsed:,.0f} spans/s"
        )

    def line(self) -> str:
        rejected = sum(self.rejected.values())
        return (
            f"{self.messages} messages, {self.spans} spans: {self.new_rows} new usage rows, "
            f"{self.duplicate_rows} already in the ledger, {rejected} rejected"
        )


def write_metered(
    writer: LedgerWriter, result: MeteringResult, request: ExportTraceServiceRequest | None = None
) -> tuple[int, int, Counter[str]]:
    """Write one metering result (caller commits); return (new rows, rows already in the ledger, usage rows kept
    as rejected spans, in spans by reason: ``key_conflict``, ``no_partition``, ``archived_period``). ``request``: the
    message the result came from (each kept row's span is stored from it)."""
    rows = [usage_event_tuple(row) for row in result.rows]
    written = writer.write_usage(rows)
    payloads = SpanPayloads(lambda: request if request is not None else ExportTraceServiceRequest())
    kept = [
        conflict_rejection(row, held, payloads(row.trace_id, row.span_id), None)
        for row, held in conflicting(
            result.rows, {c.idempotency_key: c for c in written.conflicts}, None, any_producer=True
        )
    ]
    reasons = dict(written.outside)
    kept += [
        outside_rejection(row, reasons[row.idempotency_key], payloads(row.trace_id, row.span_id))
        for row in result.rows
        if row.idempotency_key in reasons
    ]
    writer.write_rejected_spans(rejected_span_row(r) for r in (*result.rejections, *kept))
    spans_kept = Counter(reason for reason, _ids in {(r.reason, (r.trace_id, r.span_id)) for r in kept})
    return written.inserted, written.staged - written.inserted - len(kept), spans_kept


def ingest_file(
    database: Database,
    path: Path,
    limits: MeteringLimits,
    file_format: str = "auto",
    progress: Callable[[IngestTotals], None] | None = None,
    clock_unix_nano: Callable[[], int] = time.time_ns,
) -> IngestTotals:
    totals = IngestTotals(bytes_total=Path(path).stat().st_size)
    offset = [0]
    with psycopg.connect(database.conninfo) as conn:
        writer = LedgerWriter(conn)
        for _number, request in read_trace_file(path, file_format, offset):
            totals.bytes_read = offset[0]
            result = meter_request(request, limits, clock_unix_nano())
            new, duplicate, kept = write_metered(writer, result, request)
            conn.commit()
            totals.messages += 1
            totals.spans += result.spans_received
            totals.new_rows += new
            totals.duplicate_rows += duplicate
            totals.rejected.update(r.reason for r in result.rejections)
            totals.rejected.update(kept)
            totals.unattributed += sum(result.unattributed.values())
            totals.synthetic += len(result.synthetic_rows)
            if progress is not None:
                progress(totals)
    return totals
