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
fails validation again is left pending and reported with its new reason. A span whose key the ledger holds
with other content (another end time, account, quantity, or another producer than the span's sender) is not
billed either: it is kept as a ``key_conflict`` rejection of its own, for ``dead-letter resolve``, and the
replayed span stays pending.

Authorization is checked again. A span that arrived from an authenticated producer (``rejected_spans.producer``)
is re-metered *as that producer*, with its entry in the producers file as the file is now (``producers``:
services, meters, accounts; a ``--patch account_id=…`` included), so a replay never bills what the producer
could not bill live; a producer no longer in the file, or no producers file at all, cannot be checked and the
span stays pending. A span rejected ``unauthorized_producer`` before producers were recorded (migration 0011)
cannot be checked either. ``override_authorization`` bills such spans without the check: it needs ``why``,
and ``dead_letter_replays.authorization_check`` records ``override`` (else ``producer_checked`` or ``no_producer``).
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal

import psycopg
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans

from spanmeter import attributes as A
from spanmeter.billing import adjustments as adjustments_module
from spanmeter.billing.ledger import adjustment_store, replay_store
from spanmeter.billing.ledger.database import Database
from spanmeter.billing.ledger.writer import KeyConflict, LedgerWriter, UsageEventTuple, UsageWrite, encode_copy

from .auth import ProducerRegistry
from .exporters.kept import conflict_rejection, conflicting
from .exporters.rows import rejected_span_row, usage_event_tuple
from .processors.usage import MeteringLimits, UsageEvent, meter_request

__all__ = [
    "DECISIONS",
    "PATCHABLE_KEYS",
    "ReplayError",
    "ReplayReport",
    "Resolution",
    "patch_span",
    "replay",
    "resolve",
]

PATCHABLE_KEYS = frozenset(A.ATTRIBUTION_KEYS)


class ReplayError(ValueError):
    pass


_CONFLICTS_ARE_RESOLVED = (
    "a key_conflict span cannot be replayed (its key is already billed with other content): decide with "
    "`spanmeter dead-letter resolve ID --decision keep-ledger|bill-span --why …`"
)
DECISIONS = ("keep_ledger", "bill_span", "dismiss")


@dataclass(frozen=True)
class Resolution:
    rejection_key: str
    decision: str
    adjustments: list[tuple[str, str, Decimal]]  # (account, meter, signed quantity)

    def line(self) -> str:
        moved = "; ".join(f"{q:+} {meter} on {account}" for account, meter, q in self.adjustments)
        return f"resolved {self.rejection_key}: {self.decision}" + (f"; corrections: {moved}" if moved else "")


def resolve(
    database: Database, *, rejection_key: str, decision: str, resolved_by: str, why: str, limits: MeteringLimits
) -> Resolution:
    """Record an operator's decision on a rejected span that is not replayed (append-only, once per span).

    ``keep_ledger`` (a ``key_conflict``): the ledger's row is right; nothing is billed. ``bill_span`` (a
    ``key_conflict``): the span is right, so the usage moves from the account the ledger holds to the one
    the span says, as two corrections in ``usage_adjustments`` (minus the ledger's quantity there, plus the
    span's quantity here, dated at the ledger row's time; the ledger row is never edited). ``dismiss``
    (any reason): recorded, never billed, never replayed."""
    if decision not in DECISIONS:
        raise ReplayError(f"--decision must be one of {', '.join(d.replace('_', '-') for d in DECISIONS)}")
    if not why.strip():
        raise ReplayError("--why is required: finance must be able to explain the decision months later")
    try:
        key = str(uuid.UUID(rejection_key))
    except ValueError:
        raise ReplayError(f"no rejected span with id {rejection_key!r} (ids come from `dead-letter list`)") from None
    adjustments: list[tuple[str, str, Decimal]] = []
    adjustment_keys: list[str] = []
    with psycopg.connect(database.conninfo) as conn:
        found = replay_store.lock_rejected(conn, key)
        if found is None:
            raise ReplayError(f"no rejected span with id {rejection_key!r} (ids come from `dead-letter list`)")
        reason, payload, meter_codes = found
        done = replay_store.outcome(conn, key)
        if done is not None:
            raise ReplayError(f"rejected span {key} is already {done}")
        if decision != "dismiss" and reason != "key_conflict":
            raise ReplayError(
                f"keep-ledger and bill-span decide key_conflict spans; this one is {reason}: dismiss or replay it"
            )
        if decision == "bill_span":
            resource_spans = ResourceSpans.FromString(payload)
            end_ns = resource_spans.scope_spans[0].spans[0].end_time_unix_nano
            # metered as at its arrival (its end time as "now"), so an old conflict is not judged stale
            result = meter_request(ExportTraceServiceRequest(resource_spans=[resource_spans]), limits, end_ns)
            for row in result.rows:
                if row.meter.code not in meter_codes:  # another meter of the span: its own rejection, if any
                    continue
                held = replay_store.conflicting_row(conn, row.idempotency_key)
                if held is None or (held[0], held[1]) == (row.account_id, row.quantity):
                    continue  # not the conflicting row
                account, quantity, occurred_at = held
                for suffix, who, amount in (("out", account, -quantity), ("in", row.account_id, row.quantity)):
                    # keyed by the usage row: the ledger's row can be moved once, whichever span claims it
                    adjustment_key = f"conflict-{row.idempotency_key}-{suffix}"
                    if suffix == "out" and adjustment_store.exists(conn, adjustment_key):
                        raise ReplayError(
                            f"the ledger's {row.meter.code} row for this span was already moved by another "
                            "bill-span decision: decide keep-ledger (or correct by hand with `ledger adjust`)"
                        )
                    adjustments_module.record(
                        conn,
                        idempotency_key=adjustment_key,
                        account_id=who,
                        meter_code=row.meter.code,
                        quantity=amount,
                        occurred_at=occurred_at,
                        reason=f"key conflict {key} resolved bill-span: {why}",
                        created_by=resolved_by,
                        reference=key,
                    )
                    adjustments.append((who, row.meter.code, amount))
                    adjustment_keys.append(adjustment_key)
            if not adjustments:
                raise ReplayError(
                    f"rejected span {key} bills the same account and quantity as the ledger's row (or no longer "
                    "conflicts): there is nothing to move; decide keep-ledger"
                )
        replay_store.record_resolution(
            conn, key, resolved_by=resolved_by, decision=decision, why=why, adjustment_keys=adjustment_keys
        )
        conn.commit()
    return Resolution(key, decision, adjustments)


@dataclass
class ReplayReport:
    selected: int = 0
    billed_spans: int = 0
    new_rows: int = 0
    duplicate_rows: int = 0
    not_billable: int = 0
    rejected_again: Counter[str] = field(default_factory=Counter)
    # spans left pending because their producer could not be checked, by producer name
    unchecked: Counter[str] = field(default_factory=Counter)

    def line(self) -> str:
        again = ", ".join(f"{reason} x{count}" for reason, count in sorted(self.rejected_again.items())) or "none"
        line = (
            f"{self.selected} rejected spans selected: {self.billed_spans} billed "
            f"({self.new_rows} new usage rows, {self.duplicate_rows} already in the ledger), "
            f"{self.not_billable} not billable, rejected again: {again}"
        )
        if self.unchecked:
            who = ", ".join(f"{name} x{count}" for name, count in sorted(self.unchecked.items()))
            line += (
                f"; left pending, producer not checkable ({who}): set SPANMETER_AUTH_FILE to the producers file "
                "that names them, or bill them anyway with --override-authorization --why …"
            )
        return line


def patch_span(resource_spans: ResourceSpans, patch: dict[str, str]) -> None:
    """Set ``patch`` on the (single) stored span's attributes, replacing existing values."""
    span = resource_spans.scope_spans[0].spans[0]
    kept = [kv for kv in span.attributes if kv.key not in patch]
    del span.attributes[:]
    span.attributes.extend(kept)
    for key, value in patch.items():
        span.attributes.append(KeyValue(key=key, value=AnyValue(string_value=value)))


_Replayed = tuple[replay_store.ReplayRecord, list[UsageEvent], bytes, str | None]


def _write(writer: LedgerWriter, spans: list[_Replayed]) -> UsageWrite:
    """Stage and insert the spans' rows, each recording its sender as its producer (the caller commits)."""
    by_sender: dict[str | None, list[UsageEventTuple]] = {}
    for _record, rows, _payload, sender in spans:
        by_sender.setdefault(sender, []).extend(map(usage_event_tuple, rows))
    writer.discard_staged()
    staged = sum(len(rows) for rows in by_sender.values())
    return writer.write_copies([(sender, encode_copy(rows)) for sender, rows in by_sender.items()], staged)


def _write_replayed(
    conn: psycopg.Connection, writer: LedgerWriter, spans: list[_Replayed], report: ReplayReport
) -> list[replay_store.ReplayRecord]:
    """Bill the replayed spans; returns the records of those billed. All at once when no row of them conflicts
    or falls outside the ledger's months (the usual case); otherwise span by span under savepoints, so a span is
    billed whole or not at all: one whose key the ledger holds with other content is kept as a ``key_conflict``
    rejected span and stays pending, like one of a month without a partition (reported with that reason)."""
    if not spans:
        return []
    with conn.transaction() as everything:
        written = _write(writer, spans)
        held = _held(written)
        if not written.outside and not any(conflicting(rows, held, sender) for _r, rows, _p, sender in spans):
            report.billed_spans += len(spans)
            report.new_rows += written.inserted
            report.duplicate_rows += written.staged - written.inserted
            return [record for record, _rows, _payload, _sender in spans]
        raise psycopg.Rollback(everything)
    records = []
    for span in spans:
        record, rows, payload, sender = span
        with conn.transaction() as one:
            written = _write(writer, [span])
            outside = sorted({reason for _key, reason in written.outside})
            found = conflicting(rows, _held(written), sender)
            if not outside and not found:
                report.billed_spans += 1
                report.new_rows += written.inserted
                report.duplicate_rows += written.staged - written.inserted
                records.append(record)
                continue
            raise psycopg.Rollback(one)
        if outside:  # a month without a partition: not billed, the span stays pending
            report.rejected_again[outside[0]] += 1
            continue
        report.rejected_again["key_conflict"] += 1  # kept for a decision; the span stays pending
        writer.write_rejected_spans(
            rejected_span_row(conflict_rejection(row, held, payload, sender), sender) for row, held in found
        )
    return records


def _held(written: UsageWrite) -> dict[str, KeyConflict]:
    return {c.idempotency_key: c for c in written.conflicts}


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
    producers: ProducerRegistry | None = None,
    override_authorization: bool = False,
) -> ReplayReport:
    """Re-meter the selected pending rejected spans into the ledger, each at most once (see the module)."""
    if reason is None and rejection_key is None:
        raise ReplayError("choose what to replay: --reason R or --id ID")
    unknown = set(patch) - PATCHABLE_KEYS
    if unknown:
        raise ReplayError(f"--patch may set only {', '.join(sorted(PATCHABLE_KEYS))}, not {', '.join(sorted(unknown))}")
    if patch and not why.strip():
        raise ReplayError("--why is required with --patch: say why the attribution is being supplied")
    if reason == "key_conflict":
        raise ReplayError(_CONFLICTS_ARE_RESOLVED)
    if override_authorization and not why.strip():
        raise ReplayError("--why is required with --override-authorization: say why the producer check is skipped")
    report = ReplayReport()
    with psycopg.connect(database.conninfo) as conn:
        if rejection_key is not None and replay_store.reason_of(conn, rejection_key) == "key_conflict":
            raise ReplayError(_CONFLICTS_ARE_RESOLVED)
        writer = LedgerWriter(conn)
        selected = replay_store.select_pending(conn, reason, rejection_key)
        report.selected = len(selected)
        # per selected span that bills: its replay record, its rows, its payload as replayed, and its sender
        spans: list[tuple[replay_store.ReplayRecord, list[UsageEvent], bytes, str | None]] = []
        for key, old_reason, payload, sender in selected:
            resource_spans = ResourceSpans.FromString(payload)
            if patch:
                patch_span(resource_spans, patch)
            request = ExportTraceServiceRequest(resource_spans=[resource_spans])
            if override_authorization:
                authorization, policy = "override", None
            elif sender is not None:
                policy = producers.by_name(sender) if producers is not None else None
                if policy is None:  # cannot be checked: no producers file, or the producer is gone from it
                    report.unchecked[sender] += 1
                    continue
                authorization = "producer_checked"
            elif old_reason == "unauthorized_producer":  # rejected before rejected_spans named the producer
                report.unchecked["(not recorded)"] += 1
                continue
            else:
                authorization, policy = "no_producer", None
            result = meter_request(request, limits, clock_unix_nano(), policy)
            if result.rejections:
                report.rejected_again[result.rejections[0].reason] += 1
                continue
            if not result.rows:
                report.not_billable += 1
                continue
            provenance = {"rejection_key": str(key), "by": replayed_by, "why": why, "patch": patch}
            if authorization == "override":
                provenance["authorization"] = "override"
            for row in result.rows:
                row.metadata["replay"] = provenance
            keys = [r.idempotency_key for r in result.rows]
            record = (key, replayed_by, why, json.dumps(patch), len(result.rows), keys, authorization)
            spans.append((record, result.rows, resource_spans.SerializeToString(), sender))
        records = _write_replayed(conn, writer, spans, report)
        if records:
            replay_store.record_replays(conn, records)
        conn.commit()
    return report
