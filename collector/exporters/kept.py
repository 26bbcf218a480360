"""Usage rows the ledger would not take, kept as rejected spans: conflicts, and months it does not cover.

Every path that writes usage through :class:`~spanmeter.billing.ledger.writer.LedgerWriter` (the receiver's
exporter, ``spanmeter ingest``, ``spanmeter dead-letter replay``) gets back, in ``UsageWrite.conflicts``, what the
ledger holds for each staged key it would not insert: the row at another end time (the key registry, migration
0018), or the row at the same end time with another account, job, plan, meter version, quantity or producer. None
of those may pass for a duplicate: each is kept whole in ``rejected_spans`` with reason ``key_conflict``, for
``spanmeter dead-letter resolve``. These pure functions pick the rows and word the rejection; the callers store
it. A row is compared by what it says, so of two rows with one key in one batch the one the ledger took
matches and only the other conflicts.

Likewise ``UsageWrite.outside``: rows that ended in a month without a partition (``no_partition``) or in an
archived one (``archived_period``), each kept with a message that names the fix (:func:`outside_rejection`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime

from spanmeter.billing.ledger.writer import KeyConflict, iso_utc_us

from ..processors.usage import Rejection, UsageEvent

__all__ = ["OUTSIDE_MESSAGES", "conflict_rejection", "conflicting", "ended", "kept_rejection", "outside_rejection"]

OUTSIDE_MESSAGES = {
    "no_partition": (
        "the ledger has no partition for the month this {meter} usage ended in ({ended}): kept, not billed; "
        "create it with `spanmeter db partitions --create`, then `spanmeter dead-letter replay --reason no_partition`"
    ),
    "archived_period": (
        "this {meter} usage ended in a month that was archived ({ended}): its rows are no longer in the ledger, so "
        "it cannot tell this span from a duplicate; kept, not billed (restore the month with "
        "`spanmeter db restore` before replaying it)"
    ),
}


def ended(end_time_unix_nano: int) -> str:
    """A span's end time as the ledger keeps it (microseconds, UTC), in ISO 8601."""
    return iso_utc_us(end_time_unix_nano // 1000)


def conflicting(
    rows: Iterable[UsageEvent],
    held: Mapping[str, KeyConflict],
    producer: str | None,
    *,
    any_producer: bool = False,
) -> list[tuple[UsageEvent, KeyConflict]]:
    """The rows that conflict with what the ledger holds under their key, each with what it holds (``held``: by
    key, from ``UsageWrite.conflicts``; built once per write, not per request).

    ``producer``: who sent the rows (the authenticated producer; None: no authentication). ``any_producer``:
    the rows name no producer of their own (a file backfill), so only their content and end time count."""
    if not held:
        return []
    found = []
    for row in rows:
        c = held.get(row.idempotency_key)
        if c is not None and c.differs(
            row.account_id,
            row.job_id,
            row.plan_code,
            row.meter.version,
            str(row.quantity),
            c.producer if any_producer else producer,
            row.end_time_unix_nano // 1000,
        ):
            found.append((row, c))
    return found


def kept_rejection(row: UsageEvent, reason: str, message: str, payload: bytes, salt: bytes = b"") -> Rejection:
    """A usage row kept as a rejected span (``payload``: its span as a serialized ResourceSpans, for a later
    decision). The rejection key is derived from the payload, the row's key and ``salt``: a retry keeps one."""
    return Rejection(
        reason=reason,
        message=message[:1000],
        rejection_key=hashlib.blake2b(payload + row.idempotency_key.encode() + salt, digest_size=16).hexdigest(),
        trace_id=row.trace_id,
        span_id=row.span_id,
        meter_codes=(row.meter.code,),
        account_id=row.account_id,
        service_name=row.metadata.get("service.name"),
        end_time_unix_nano=row.end_time_unix_nano,
        payload=payload,
    )


def conflict_rejection(row: UsageEvent, held: KeyConflict, payload: bytes, producer: str | None) -> Rejection:
    """A row whose key the ledger already holds with other content: kept, counted, never a silent duplicate."""
    message = (
        f"{row.meter.code} usage with this span's key is already billed with other content ({held.describe()}); "
        f"this span says account {row.account_id!r}, quantity {row.quantity}, producer {producer!r}, "
        f"ended {ended(row.end_time_unix_nano)}: kept for review, not billed"
    )
    return kept_rejection(row, "key_conflict", message, payload, salt=b"/conflict")


def outside_rejection(row: UsageEvent, reason: str, payload: bytes) -> Rejection:
    """A row of a month the ledger does not cover (``reason``: ``no_partition`` or ``archived_period``)."""
    when = datetime.fromtimestamp(row.end_time_unix_nano // 10**9, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    message = OUTSIDE_MESSAGES[reason].format(meter=row.meter.code, ended=when)
    return kept_rejection(row, reason, message, payload, salt=b"/" + reason.encode())
