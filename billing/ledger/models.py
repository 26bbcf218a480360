"""The ledger's tables, as typed SQLAlchemy 2 models.

``usage_events`` is the billing source of truth and is append-only: a trigger refuses UPDATE, DELETE and
TRUNCATE (grants do not bind a superuser, and the embedded server runs as one). Corrections are new rows.

Its primary key is ``(occurred_at, idempotency_key)``: the key is deterministic per (span, meter) and the
span end time is deterministic per span, so the pair identifies a usage event exactly once, while leading
with time keeps inserts on the right edge of the B-tree on a large table, and makes the table ready for
time partitioning (a unique key on a partitioned table must include the partition key).

``rejected_spans`` keeps every billable span that failed validation, with the whole span (resource, scope,
span) as serialized OTLP protobuf, so it can be inspected and replayed. ``rejected_requests`` keeps
Export requests that could not be parsed at all (raw bytes, capped).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    ARRAY,
    BigInteger,
    Index,
    Integer,
    LargeBinary,
    Numeric,
    SmallInteger,
    Text,
    func,
)
from sqlalchemy.dialects.postgresql import JSONB, TIMESTAMP, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = ["Base", "DeadLetterReplay", "RejectedRequest", "RejectedSpan", "UsageEvent"]


class Base(DeclarativeBase):
    pass


class UsageEvent(Base):
    __tablename__ = "usage_events"

    occurred_at: Mapped[datetime] = mapped_column(TIMESTAMP(timezone=True), primary_key=True)
    idempotency_key: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    account_id: Mapped[str] = mapped_column(Text)
    meter_code: Mapped[str] = mapped_column(Text)
    meter_version: Mapped[int] = mapped_column(SmallInteger)
    quantity: Mapped[Decimal] = mapped_column(Numeric)
    unit: Mapped[str] = mapped_column(Text)
    job_id: Mapped[str | None] = mapped_column(Text)
    plan_code: Mapped[str | None] = mapped_column(Text)
    trace_id: Mapped[str] = mapped_column(Text)
    span_id: Mapped[str] = mapped_column(Text)
    received_at: Mapped[datetime] = mapped_column(TIMESTAMP(timezone=True), server_default=func.now())
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JSONB, server_default="{}")

    __table_args__ = (Index("usage_events_account_time_idx", "account_id", "occurred_at"),)


class RejectedSpan(Base):
    __tablename__ = "rejected_spans"

    rejection_key: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    rejected_at: Mapped[datetime] = mapped_column(TIMESTAMP(timezone=True), server_default=func.now())
    reason: Mapped[str] = mapped_column(Text)
    error_message: Mapped[str] = mapped_column(Text)
    trace_id: Mapped[str] = mapped_column(Text)
    span_id: Mapped[str] = mapped_column(Text)
    meter_codes: Mapped[list[str]] = mapped_column(ARRAY(Text))
    account_id: Mapped[str | None] = mapped_column(Text)
    service_name: Mapped[str | None] = mapped_column(Text)
    span_ended_at: Mapped[datetime | None] = mapped_column(TIMESTAMP(timezone=True))
    payload: Mapped[bytes] = mapped_column(LargeBinary)

    __table_args__ = (Index("rejected_spans_reason_time_idx", "reason", "rejected_at"),)


class RejectedRequest(Base):
    __tablename__ = "rejected_requests"

    request_key: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    received_at: Mapped[datetime] = mapped_column(TIMESTAMP(timezone=True), server_default=func.now())
    reason: Mapped[str] = mapped_column(Text)
    error_message: Mapped[str] = mapped_column(Text)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    stored_bytes: Mapped[int] = mapped_column(Integer)
    peer: Mapped[str | None] = mapped_column(Text)
    body: Mapped[bytes] = mapped_column(LargeBinary)


class DeadLetterReplay(Base):
    """A rejected span that ``spanmeter dead-letter replay`` billed (at most one row per rejected span)."""

    __tablename__ = "dead_letter_replays"

    rejection_key: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    replayed_at: Mapped[datetime] = mapped_column(TIMESTAMP(timezone=True), server_default=func.now())
    replayed_by: Mapped[str] = mapped_column(Text)
    reason: Mapped[str] = mapped_column(Text)
    patch: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default="{}")
    usage_rows: Mapped[int] = mapped_column(Integer)
    idempotency_keys: Mapped[list[uuid.UUID]] = mapped_column(ARRAY(UUID(as_uuid=True)))
