"""The ledger's tables, as typed SQLAlchemy 2 models.

``usage_events`` is the billing source of truth and is append-only: a trigger refuses UPDATE, DELETE and
TRUNCATE (grants do not bind a superuser, and the embedded server runs as one). Corrections are new rows.

Its primary key is ``(occurred_at, idempotency_key)``: the key is deterministic per (span, meter) and the
span end time is deterministic per span, so the pair identifies a usage event exactly once, while leading
with time keeps inserts on the right edge of the B-tree on a large table, and makes the table ready for
time partitioning (a unique key on a partitioned table must include the partition key). Since migration 0010
it is range-partitioned by UTC month (see :mod:`spanmeter.billing.ledger.partitions`): its partitions are created at run
time, so they are not models here (:data:`LEDGER_PARTITION` matches their names).

``rejected_spans`` keeps every billable span that failed validation, with the whole span (resource, scope,
span) as serialized OTLP protobuf, so it can be inspected and replayed. ``rejected_requests`` keeps
Export requests that could not be parsed at all (raw bytes, capped).
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    ARRAY,
    BigInteger,
    CheckConstraint,
    Float,
    ForeignKey,
    Identity,
    Index,
    Integer,
    LargeBinary,
    Numeric,
    SmallInteger,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, TIMESTAMP, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = [
    "AccountMonthToDate",
    "Base",
    "DeadLetterReplay",
    "DeadLetterResolution",
    "Invoice",
    "InvoiceLine",
    "ReconciliationRun",
    "RejectedRequest",
    "RejectedSpan",
    "Subscription",
    "UsageAdjustment",
    "UsageEventKey",
    "UsageEventRecord",
    "UsageJobSet",
    "UsageJobSetMember",
    "UsageRollupDaily",
    "UsageRollupDelta",
    "UsageRollupHourly",
]


class Base(DeclarativeBase):
    pass


class UsageEventRecord(Base):
    """A usage event as the ledger stores it (``usage_events``), read through the ORM; metered as a
    ``collector.processors.UsageEvent`` and written as a ``writer.UsageEventTuple``."""

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
    # the authenticated producer whose Export carried the row (a replay: the rejected span's; None: no
    # authentication, file backfill)
    producer: Mapped[str | None] = mapped_column(
        Text,
        nullable=True,
        comment="The authenticated producer whose Export carried the row (for a replay, that of the rejected span); "
        "NULL without producer authentication, for file backfills and rows older than the column",
    )

    __table_args__ = (
        Index("usage_events_account_time_idx", "account_id", "occurred_at"),
        {
            "postgresql_partition_by": "RANGE (occurred_at)",
            "comment": "The ledger: append-only usage rows, range-partitioned by UTC month on occurred_at (see "
            "usage_event_partitions)",
        },
    )


class UsageEventKey(Base):
    """The key registry (migration 0018): each idempotency key once, with the end time of the ledger row that
    holds it, so the same key at another end time is a ``key_conflict`` on the write path. Append-only."""

    __tablename__ = "usage_event_keys"
    __table_args__ = (
        {"comment": "spanmeter key registry: each idempotency key once, with the end time of the row that holds it"},
    )

    idempotency_key: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    occurred_at: Mapped[datetime] = mapped_column(TIMESTAMP(timezone=True))


# usage_events_YYYY_MM, and usage_events_before_YYYY_MM (the table before migration 0010): created at run time
LEDGER_PARTITION = re.compile(r"^usage_events_(before_)?\d{4}_\d{2}$")


class UsageEventPartition(Base):
    """An attached partition of ``usage_events`` and its bounds (``from_at`` -infinity: the legacy table)."""

    __tablename__ = "usage_event_partitions"
    __table_args__ = (
        CheckConstraint("from_at < to_at", name="usage_event_partitions_bounds"),
        {
            "comment": "The partitions of usage_events that are attached, with their bounds; changed only by "
            "spanmeter_create_usage_partitions and spanmeter db archive/restore"
        },
    )

    partition_name: Mapped[str] = mapped_column(Text, primary_key=True)
    from_at: Mapped[datetime] = mapped_column(TIMESTAMP(timezone=True))
    to_at: Mapped[datetime] = mapped_column(TIMESTAMP(timezone=True))
    created_at: Mapped[datetime] = mapped_column(TIMESTAMP(timezone=True), server_default=func.now())
    created_by: Mapped[str] = mapped_column(Text, server_default=text("session_user"))


class UsagePartitionArchive(Base):
    """Append-only: each ``spanmeter db archive`` and ``restore`` of a partition, with its file's checksum."""

    __tablename__ = "usage_partition_archives"
    __table_args__ = (CheckConstraint("action IN ('archived', 'restored')", name="usage_partition_archives_action"),)

    archive_id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    action: Mapped[str] = mapped_column(Text)
    partition_name: Mapped[str] = mapped_column(Text)
    from_at: Mapped[datetime] = mapped_column(TIMESTAMP(timezone=True))
    to_at: Mapped[datetime] = mapped_column(TIMESTAMP(timezone=True))
    row_count: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(Text)
    file_name: Mapped[str] = mapped_column(Text)
    columns: Mapped[list[str]] = mapped_column(ARRAY(Text))
    recorded_at: Mapped[datetime] = mapped_column(TIMESTAMP(timezone=True), server_default=func.now())
    recorded_by: Mapped[str] = mapped_column(Text, server_default=text("session_user"))


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
    # the authenticated producer whose Export carried the span (migration 0011); replay re-checks it
    producer: Mapped[str | None] = mapped_column(
        Text,
        nullable=True,
        comment="The authenticated producer whose Export carried the span; "
        "NULL without producer authentication, for backfills and spans older than the column",
    )

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


class DeadLetterResolution(Base):
    """An operator's decision on a rejected span that is not replayed (``spanmeter dead-letter resolve``)."""

    __tablename__ = "dead_letter_resolutions"

    rejection_key: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("rejected_spans.rejection_key"), primary_key=True
    )
    resolved_at: Mapped[datetime] = mapped_column(TIMESTAMP(timezone=True), server_default=func.now())
    resolved_by: Mapped[str] = mapped_column(Text)
    decision: Mapped[str] = mapped_column(Text)
    reason: Mapped[str] = mapped_column(Text)
    adjustment_keys: Mapped[list[str]] = mapped_column(ARRAY(Text), server_default="{}")

    __table_args__ = (
        CheckConstraint("decision IN ('keep_ledger', 'bill_span', 'dismiss')", name="decision_known"),
        {"comment": "One row per rejected span an operator decided on (spanmeter dead-letter resolve); never replayed"},
    )


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
    # producer_checked | no_producer | override | not_recorded (migration 0011, see collector.replay)
    authorization_check: Mapped[str] = mapped_column(
        Text,
        server_default="not_recorded",
        comment="producer_checked: the producer, as the producers file named it at replay time, may bill the span; "
        "no_producer: the span came without one; override: billed without the check by replayed_by, for reason; "
        "not_recorded: replayed before the check existed",
    )

    __table_args__ = (
        {
            "comment": "One row per rejected span that a replay billed; its usage rows carry the same rejection_key in metadata"
        },
    )


# --- rating (migration 0003): read and written by billing/*.py with psycopg; typed here as the schema's map


class Subscription(Base):
    """Effective-dated and append-only: the row with the latest ``valid_from <= t`` is in force at ``t``."""

    __tablename__ = "subscriptions"

    subscription_id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    account_id: Mapped[str] = mapped_column(Text)
    plan_code: Mapped[str] = mapped_column(Text)
    pricing_version: Mapped[str] = mapped_column(Text)
    currency: Mapped[str] = mapped_column(Text)
    valid_from: Mapped[datetime] = mapped_column(TIMESTAMP(timezone=True))
    valid_to: Mapped[datetime | None] = mapped_column(TIMESTAMP(timezone=True))
    created_at: Mapped[datetime] = mapped_column(TIMESTAMP(timezone=True), server_default=func.now())
    created_by: Mapped[str] = mapped_column(Text)
    note: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (Index("subscriptions_account_from_idx", "account_id", "valid_from"),)


class _Rollup:
    account_id: Mapped[str] = mapped_column(Text, primary_key=True)
    bucket_start: Mapped[datetime] = mapped_column(TIMESTAMP(timezone=True), primary_key=True)
    meter_code: Mapped[str] = mapped_column(Text, primary_key=True)
    meter_version: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    plan_code: Mapped[str] = mapped_column(Text, primary_key=True)
    dimension: Mapped[str] = mapped_column(Text, primary_key=True)
    provider: Mapped[str] = mapped_column(Text, primary_key=True, server_default="")  # 0014: gen_ai.provider.name
    quantity: Mapped[Decimal] = mapped_column(Numeric)
    events: Mapped[int] = mapped_column(BigInteger)
    max_quantity: Mapped[Decimal] = mapped_column(Numeric)
    latest_at: Mapped[datetime] = mapped_column(TIMESTAMP(timezone=True))
    latest_quantity: Mapped[Decimal] = mapped_column(Numeric)


class UsageRollupHourly(_Rollup, Base):
    __tablename__ = "usage_rollups_hourly"


class UsageRollupDaily(_Rollup, Base):
    __tablename__ = "usage_rollups_daily"


class UsageRollupDelta(Base):
    """Pending rollup delta: written by the ingest transaction's trigger, consumed by the fold (see
    :mod:`spanmeter.billing.rollups`). Readers add these to the folded rollups."""

    __tablename__ = "usage_rollup_deltas"

    delta_id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    account_id: Mapped[str] = mapped_column(Text)
    bucket_start: Mapped[datetime] = mapped_column(TIMESTAMP(timezone=True))
    meter_code: Mapped[str] = mapped_column(Text)
    meter_version: Mapped[int] = mapped_column(SmallInteger)
    plan_code: Mapped[str] = mapped_column(Text)
    dimension: Mapped[str] = mapped_column(Text)
    provider: Mapped[str] = mapped_column(Text, server_default="")  # 0014
    quantity: Mapped[Decimal] = mapped_column(Numeric)
    events: Mapped[int] = mapped_column(BigInteger)
    max_quantity: Mapped[Decimal] = mapped_column(Numeric)
    latest_at: Mapped[datetime] = mapped_column(TIMESTAMP(timezone=True))
    latest_quantity: Mapped[Decimal] = mapped_column(Numeric)
    job_ids: Mapped[list[str] | None] = mapped_column(ARRAY(Text))
    created_at: Mapped[datetime] = mapped_column(TIMESTAMP(timezone=True), server_default=func.now())

    __table_args__ = (
        Index("usage_rollup_deltas_account_idx", "account_id", "bucket_start"),
        {
            "comment": "Pending rollup deltas written with each ledger insert; folded into usage_rollups_* by "
            "spanmeter serve. Read rollups through the *_live views (rollups + pending deltas)"
        },
    )


class UsageJobSet(Base):
    """One distinct-job set per (account, UTC month, meter). Read jobs through the ``usage_rollup_jobs``
    view (account_id, month_start, meter_code, job_id) or ``usage_rollup_jobs_live`` (+ pending deltas)."""

    __tablename__ = "usage_job_sets"

    set_id: Mapped[int] = mapped_column(Integer, Identity(always=True), primary_key=True)
    account_id: Mapped[str] = mapped_column(Text)
    month_start: Mapped[datetime] = mapped_column(TIMESTAMP(timezone=True))
    meter_code: Mapped[str] = mapped_column(Text)

    __table_args__ = (
        UniqueConstraint("account_id", "month_start", "meter_code", name="usage_job_sets_key"),
        {
            "comment": "One distinct-job set per (account, UTC month, meter); derived, written by the fold and "
            "rollups rebuild. Read usage_rollup_jobs_live"
        },
    )


class UsageJobSetMember(Base):
    """A job of a set: the narrow key the fold inserts one of per new job (migration 0009)."""

    __tablename__ = "usage_job_set_members"

    set_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[str] = mapped_column(Text, primary_key=True)

    __table_args__ = (
        {
            "comment": "The jobs of each usage_job_sets set; derived, written by the fold and rollups rebuild. "
            "Read usage_rollup_jobs_live"
        },
    )


class UsageAdjustment(Base):
    """A correction: never an edit of a usage row. Append-only."""

    __tablename__ = "usage_adjustments"

    idempotency_key: Mapped[str] = mapped_column(Text, primary_key=True)
    account_id: Mapped[str] = mapped_column(Text)
    meter_code: Mapped[str] = mapped_column(Text)
    quantity: Mapped[Decimal] = mapped_column(Numeric)
    occurred_at: Mapped[datetime] = mapped_column(TIMESTAMP(timezone=True))
    reason: Mapped[str] = mapped_column(Text)
    created_by: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(TIMESTAMP(timezone=True), server_default=func.now())
    reference: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (Index("usage_adjustments_account_time_idx", "account_id", "occurred_at"),)


class PriceBookVersion(Base):
    """A price book version as imported (append-only, migration 0012): see :mod:`spanmeter.billing.pricebook`."""

    __tablename__ = "price_books"

    book_code: Mapped[str] = mapped_column(Text, primary_key=True)
    version: Mapped[str] = mapped_column(Text, primary_key=True)
    effective_from: Mapped[datetime] = mapped_column(TIMESTAMP(timezone=True))
    currency: Mapped[str] = mapped_column(Text)
    document: Mapped[dict[str, Any]] = mapped_column(JSONB)
    sha256: Mapped[str] = mapped_column(Text)
    imported_at: Mapped[datetime] = mapped_column(TIMESTAMP(timezone=True), server_default=func.now())
    imported_by: Mapped[str] = mapped_column(Text)
    import_id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), unique=True)

    __table_args__ = (
        CheckConstraint("effective_from = date_trunc('hour', effective_from, 'UTC')", name="price_books_whole_hour"),
        {
            "comment": "Price book versions (spanmeter prices import): append-only; a price change is a new "
            "version from a later effective_from"
        },
    )


class PricingVersionRecord(Base):
    """A pricing version imported as data (append-only, migration 0012): see
    :mod:`spanmeter.billing.rating.plan_data`."""

    __tablename__ = "pricing_versions"

    code: Mapped[str] = mapped_column(Text, primary_key=True)
    price_book: Mapped[str | None] = mapped_column(Text)
    document: Mapped[dict[str, Any]] = mapped_column(JSONB)
    sha256: Mapped[str] = mapped_column(Text)
    imported_at: Mapped[datetime] = mapped_column(TIMESTAMP(timezone=True), server_default=func.now())
    imported_by: Mapped[str] = mapped_column(Text)

    __table_args__ = (
        {"comment": "Pricing versions as data (plans over a price book): append-only, frozen once imported"},
    )


class ApiToken(Base):
    """An API token (migration 0015): its SHA-256 only; see :mod:`spanmeter.billing.tokens`."""

    __tablename__ = "api_tokens"

    token_id: Mapped[str] = mapped_column(Text, primary_key=True)
    sha256: Mapped[bytes] = mapped_column(LargeBinary, unique=True)
    account_id: Mapped[str | None] = mapped_column(Text)
    note: Mapped[str] = mapped_column(Text, server_default="")
    created_at: Mapped[datetime] = mapped_column(TIMESTAMP(timezone=True), server_default=func.now())
    created_by: Mapped[str] = mapped_column(Text)

    __table_args__ = (
        CheckConstraint("octet_length(sha256) = 32", name="api_tokens_sha256_length"),
        {"comment": "spanmeter api tokens: SHA-256 only (the token is printed once)"},
    )


class ApiTokenRevocation(Base):
    """A revoked API token (migration 0015): one row each, append-only."""

    __tablename__ = "api_token_revocations"

    token_id: Mapped[str] = mapped_column(Text, ForeignKey("api_tokens.token_id"), primary_key=True)
    revoked_at: Mapped[datetime] = mapped_column(TIMESTAMP(timezone=True), server_default=func.now())
    revoked_by: Mapped[str] = mapped_column(Text)


class PlanLimit(Base):
    """A plan's limit for a billable metric (migration 0015): see :mod:`spanmeter.billing.entitlements`."""

    __tablename__ = "plan_limits"

    limit_id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    plan_code: Mapped[str] = mapped_column(Text)
    metric: Mapped[str] = mapped_column(Text)
    hard_limit: Mapped[Decimal | None] = mapped_column(Numeric)
    max_concurrency: Mapped[int | None] = mapped_column(Integer)
    fail_policy: Mapped[str] = mapped_column(Text)
    effective_from: Mapped[datetime] = mapped_column(TIMESTAMP(timezone=True))
    recorded_at: Mapped[datetime] = mapped_column(TIMESTAMP(timezone=True), server_default=func.now())
    recorded_by: Mapped[str] = mapped_column(Text)

    __table_args__ = (
        CheckConstraint("fail_policy IN ('open', 'closed')", name="plan_limits_fail_policy"),
        CheckConstraint("hard_limit IS NULL OR hard_limit >= 0", name="plan_limits_hard_limit"),
        CheckConstraint("max_concurrency IS NULL OR max_concurrency >= 1", name="plan_limits_concurrency"),
        Index("plan_limits_lookup_idx", "plan_code", "metric", "effective_from"),
        {"comment": "Entitlements per plan and metric: effective-dated, append-only"},
    )


class WebhookEndpoint(Base):
    """A webhook endpoint (migration 0016): see :mod:`spanmeter.billing.webhooks`."""

    __tablename__ = "webhook_endpoints"

    endpoint_id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    url: Mapped[str] = mapped_column(Text)
    events: Mapped[list[str]] = mapped_column(ARRAY(Text))
    account_id: Mapped[str | None] = mapped_column(Text)
    secret: Mapped[str] = mapped_column(Text)
    note: Mapped[str] = mapped_column(Text, server_default="")
    created_at: Mapped[datetime] = mapped_column(TIMESTAMP(timezone=True), server_default=func.now())
    created_by: Mapped[str] = mapped_column(Text)

    __table_args__ = (
        CheckConstraint(
            "cardinality(events) > 0 AND events <@ ARRAY['quota.threshold', 'invoice.finalized']",
            name="webhook_endpoints_events_known",
        ),
        CheckConstraint("url ~ '^https?://'", name="webhook_endpoints_url_http"),
        {"comment": "Webhook endpoints: the secret signs deliveries (printed once)"},
    )


class WebhookEndpointRemoval(Base):
    __tablename__ = "webhook_endpoint_removals"

    endpoint_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("webhook_endpoints.endpoint_id"), primary_key=True)
    removed_at: Mapped[datetime] = mapped_column(TIMESTAMP(timezone=True), server_default=func.now())
    removed_by: Mapped[str] = mapped_column(Text)


class WebhookEvent(Base):
    """The webhook outbox (migration 0016): one row per event, once per dedupe key."""

    __tablename__ = "webhook_events"

    event_id: Mapped[str] = mapped_column(Text, primary_key=True)
    event_type: Mapped[str] = mapped_column(Text)
    account_id: Mapped[str] = mapped_column(Text)
    dedupe_key: Mapped[str] = mapped_column(Text, unique=True)
    body: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(TIMESTAMP(timezone=True))
    recorded_at: Mapped[datetime] = mapped_column(TIMESTAMP(timezone=True), server_default=func.now())

    __table_args__ = ({"comment": "Webhook outbox (spanmeter webhooks): append-only, once per dedupe_key"},)


class WebhookDelivery(Base):
    """One event to one endpoint (migration 0016): the one mutable webhook table."""

    __tablename__ = "webhook_deliveries"

    delivery_id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    event_id: Mapped[str] = mapped_column(Text, ForeignKey("webhook_events.event_id"))
    endpoint_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("webhook_endpoints.endpoint_id"))
    state: Mapped[str] = mapped_column(Text, server_default="pending")
    attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    next_attempt_at: Mapped[datetime] = mapped_column(TIMESTAMP(timezone=True), server_default=func.now())
    last_status: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    delivered_at: Mapped[datetime | None] = mapped_column(TIMESTAMP(timezone=True))
    created_at: Mapped[datetime] = mapped_column(TIMESTAMP(timezone=True), server_default=func.now())

    __table_args__ = (
        UniqueConstraint("event_id", "endpoint_id", name="webhook_deliveries_once"),
        CheckConstraint(
            "state IN ('pending', 'delivered', 'failed', 'cancelled')", name="webhook_deliveries_state_known"
        ),
        Index("webhook_deliveries_due_idx", "next_attempt_at", postgresql_where=text("state = 'pending'")),
    )


class WebhookAttempt(Base):
    """One HTTP attempt of a delivery (migration 0016): append-only."""

    __tablename__ = "webhook_attempts"

    attempt_id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    delivery_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("webhook_deliveries.delivery_id"))
    attempt: Mapped[int] = mapped_column(Integer)
    attempted_at: Mapped[datetime] = mapped_column(TIMESTAMP(timezone=True))
    status_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    duration_seconds: Mapped[float] = mapped_column(Float)

    __table_args__ = (UniqueConstraint("delivery_id", "attempt", name="webhook_attempts_once"),)


class Invoice(Base):
    """A finalized invoice (append-only): the JSON document as issued."""

    __tablename__ = "invoices"

    invoice_number: Mapped[str] = mapped_column(Text, primary_key=True)
    account_id: Mapped[str] = mapped_column(Text)
    period_start: Mapped[datetime] = mapped_column(TIMESTAMP(timezone=True))
    pricing_version: Mapped[str] = mapped_column(Text)
    currency: Mapped[str] = mapped_column(Text)
    total: Mapped[Decimal] = mapped_column(Numeric)
    document: Mapped[dict[str, Any]] = mapped_column(JSONB)
    finalized_at: Mapped[datetime] = mapped_column(TIMESTAMP(timezone=True), server_default=func.now())
    finalized_by: Mapped[str] = mapped_column(Text)

    __table_args__ = (
        UniqueConstraint("account_id", "period_start", name="invoices_one_per_account_period"),
        Index("invoices_period_idx", "period_start"),
    )


class InvoiceLine(Base):
    __tablename__ = "invoice_lines"

    invoice_number: Mapped[str] = mapped_column(Text, ForeignKey("invoices.invoice_number"), primary_key=True)
    line_no: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    kind: Mapped[str] = mapped_column(Text)
    meter_code: Mapped[str | None] = mapped_column(Text)
    description: Mapped[str] = mapped_column(Text)
    quantity: Mapped[Decimal] = mapped_column(Numeric)
    amount: Mapped[Decimal] = mapped_column(Numeric)
    currency: Mapped[str] = mapped_column(Text)
    reference_period: Mapped[datetime | None] = mapped_column(TIMESTAMP(timezone=True))


class ReconciliationRun(Base):
    __tablename__ = "reconciliation_runs"

    run_id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    period_start: Mapped[datetime] = mapped_column(TIMESTAMP(timezone=True))
    ran_at: Mapped[datetime] = mapped_column(TIMESTAMP(timezone=True), server_default=func.now())
    delta: Mapped[Decimal] = mapped_column(Numeric)
    details: Mapped[dict[str, Any]] = mapped_column(JSONB)


class AccountMonthToDate(Base):
    """Derived, rewritten by ``spanmeter serve``: the draft invoice so far and its linear projection."""

    __tablename__ = "account_month_to_date"
    __table_args__ = (
        {
            "comment": "Derived: draft invoice so far and linear projection per account and month, rewritten by "
            "spanmeter serve; the ledger stays the source of truth"
        },
    )

    account_id: Mapped[str] = mapped_column(Text, primary_key=True)
    period_start: Mapped[datetime] = mapped_column(TIMESTAMP(timezone=True), primary_key=True)
    plan_code: Mapped[str] = mapped_column(Text)
    pricing_version: Mapped[str] = mapped_column(Text)
    currency: Mapped[str] = mapped_column(Text)
    invoice_so_far: Mapped[Decimal] = mapped_column(Numeric)
    projected_total: Mapped[Decimal] = mapped_column(Numeric)
    computed_at: Mapped[datetime] = mapped_column(TIMESTAMP(timezone=True))
    cost_so_far: Mapped[Decimal | None] = mapped_column(Numeric, nullable=True)  # 0013: at the books' cost
    unpriced_items: Mapped[int] = mapped_column(Integer, server_default="0")  # 0013: (model, meter) pairs
