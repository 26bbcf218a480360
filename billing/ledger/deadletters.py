"""Reading the dead-letter tables: rejected spans, with whether a replay has billed them."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from .models import DeadLetterReplay, DeadLetterResolution, RejectedSpan

__all__ = ["DeadLetter", "get_dead_letter", "list_dead_letters"]


@dataclass(frozen=True)
class DeadLetter:
    rejection_key: str
    rejected_at: datetime
    reason: str
    error_message: str
    service_name: str | None
    account_id: str | None
    meter_codes: list[str]
    trace_id: str
    span_id: str
    span_ended_at: datetime | None
    replayed_at: datetime | None
    replayed_by: str | None
    replay_reason: str | None
    replay_patch: dict[str, Any] | None
    payload: bytes | None = None
    resolved_at: datetime | None = None
    resolved_by: str | None = None
    resolution: str | None = None  # keep_ledger, bill_span, dismiss
    resolution_reason: str | None = None
    adjustment_keys: list[str] | None = None
    producer: str | None = None  # the authenticated producer that sent the span (None: none, or before 0011)
    replay_authorization: str | None = None  # producer_checked | no_producer | override | not_recorded

    @property
    def status(self) -> str:
        return "replayed" if self.replayed_at else "resolved" if self.resolved_at else "pending"


def _query():
    return (
        select(RejectedSpan, DeadLetterReplay, DeadLetterResolution)
        .outerjoin(DeadLetterReplay, DeadLetterReplay.rejection_key == RejectedSpan.rejection_key)
        .outerjoin(DeadLetterResolution, DeadLetterResolution.rejection_key == RejectedSpan.rejection_key)
    )


def _row(
    span: RejectedSpan,
    replay: DeadLetterReplay | None,
    resolution: DeadLetterResolution | None,
    with_payload: bool,
) -> DeadLetter:
    return DeadLetter(
        rejection_key=str(span.rejection_key),
        rejected_at=span.rejected_at,
        reason=span.reason,
        error_message=span.error_message,
        service_name=span.service_name,
        account_id=span.account_id,
        meter_codes=list(span.meter_codes),
        trace_id=span.trace_id,
        span_id=span.span_id,
        span_ended_at=span.span_ended_at,
        replayed_at=replay.replayed_at if replay else None,
        replayed_by=replay.replayed_by if replay else None,
        replay_reason=replay.reason if replay else None,
        replay_patch=replay.patch if replay else None,
        payload=span.payload if with_payload else None,
        resolved_at=resolution.resolved_at if resolution else None,
        resolved_by=resolution.resolved_by if resolution else None,
        resolution=resolution.decision if resolution else None,
        resolution_reason=resolution.reason if resolution else None,
        adjustment_keys=list(resolution.adjustment_keys) if resolution else None,
        producer=span.producer,
        replay_authorization=replay.authorization_check if replay else None,
    )


def list_dead_letters(
    engine: Engine, reason: str | None = None, since: datetime | None = None, limit: int = 1000
) -> list[DeadLetter]:
    statement = _query().order_by(RejectedSpan.rejected_at, RejectedSpan.rejection_key).limit(limit)
    if reason is not None:
        statement = statement.where(RejectedSpan.reason == reason)
    if since is not None:
        statement = statement.where(RejectedSpan.rejected_at >= since)
    with Session(engine) as session:
        return [_row(span, replay, done, False) for span, replay, done in session.execute(statement).tuples()]


def get_dead_letter(engine: Engine, rejection_key: str) -> DeadLetter | None:
    try:
        key = uuid.UUID(rejection_key)
    except ValueError:
        return None
    with Session(engine) as session:
        found = session.execute(_query().where(RejectedSpan.rejection_key == key)).tuples().first()
        return _row(found[0], found[1], found[2], True) if found else None
