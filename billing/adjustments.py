"""Usage corrections: append-only rows in ``usage_adjustments``, never an edit of a usage row.

    spanmeter ledger adjust --account acme --meter worker_seconds --quantity -120 \\
        --at 2026-11-12T10:00:00Z --reason "runaway retry loop, ticket OPS-481" --key OPS-481-1

A correction is a signed quantity of one meter for one account, dated by ``occurred_at`` (which decides the
period it corrects, like usage), with a reason, who made it and its own idempotency key: running the same
command twice records it once (the same key with different content is refused). Invoices add the
corrections of their period to the usage before rating; a correction dated in a period whose invoice is
already finalized becomes an adjustment line on the next open invoice, like late usage.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

import psycopg

from .ledger import adjustment_store
from .rating import BILLABLE_METRICS

__all__ = ["Adjustment", "AdjustmentError", "check_replay", "for_account", "record", "validate"]

_METERS = frozenset(meter for metric in BILLABLE_METRICS.values() for meter in metric.meters)


class AdjustmentError(ValueError):
    pass


@dataclass(frozen=True)
class Adjustment:
    idempotency_key: str
    account_id: str
    meter_code: str
    quantity: Decimal
    occurred_at: datetime
    reason: str
    created_by: str
    created_at: datetime
    reference: str | None


def record(
    conn: psycopg.Connection,
    *,
    idempotency_key: str,
    account_id: str,
    meter_code: str,
    quantity: Decimal,
    occurred_at: datetime,
    reason: str,
    created_by: str,
    reference: str | None = None,
) -> tuple[Adjustment, bool]:
    """Record a correction (the caller commits); returns it and whether it is new (False: the key existed
    with the same content)."""
    validate(idempotency_key=idempotency_key, meter_code=meter_code, quantity=quantity, occurred_at=occurred_at,
             reason=reason)  # fmt: skip
    row = adjustment_store.insert(
        conn,
        idempotency_key=idempotency_key,
        account_id=account_id,
        meter_code=meter_code,
        quantity=quantity,
        occurred_at=occurred_at,
        reason=reason,
        created_by=created_by,
        reference=reference,
    )
    if row is not None:
        return Adjustment(*row), True
    stored = adjustment_store.by_key(conn, idempotency_key)
    assert stored is not None  # the insert conflicted on this key, and rows are never deleted
    existing = Adjustment(*stored)
    check_replay(existing, account_id=account_id, meter_code=meter_code, quantity=quantity, occurred_at=occurred_at)
    return existing, False


def validate(*, idempotency_key: str, meter_code: str, quantity: Decimal, occurred_at: datetime, reason: str) -> None:
    """Refuse a correction finance could not explain or the invoices could not use (pure)."""
    if meter_code not in _METERS:
        raise AdjustmentError(f"unknown meter {meter_code!r}; meters: {', '.join(sorted(_METERS))}")
    if not quantity or not quantity.is_finite():
        raise AdjustmentError("the quantity must be a non-zero number (negative removes usage)")
    if not reason.strip():
        raise AdjustmentError("a reason is required: finance must be able to explain every correction")
    if not idempotency_key.strip():
        raise AdjustmentError("an idempotency key is required")
    if occurred_at.utcoffset() is None:
        raise AdjustmentError("the correction's time needs a timezone (use UTC)")


def check_replay(
    existing: Adjustment, *, account_id: str, meter_code: str, quantity: Decimal, occurred_at: datetime
) -> None:
    """A key used again must name the same correction; a different one is refused (pure)."""
    if (existing.account_id, existing.meter_code, existing.quantity, existing.occurred_at) != (
        account_id,
        meter_code,
        quantity,
        occurred_at,
    ):
        raise AdjustmentError(
            f"idempotency key {existing.idempotency_key!r} was already used for a different correction "
            f"({existing.account_id} {existing.meter_code} {existing.quantity} at {existing.occurred_at.isoformat()})"
        )


def for_account(conn: psycopg.Connection, account_id: str, start: datetime, end: datetime) -> list[Adjustment]:
    """The corrections dated in [start, end), oldest first."""
    return [Adjustment(*row) for row in adjustment_store.in_window(conn, account_id, start, end)]
