"""Webhooks in the ledger: endpoints, the outbox, deliveries and attempts (migration ``0016_webhooks``).

The queries behind :mod:`spanmeter.billing.webhooks` and the dispatcher of :mod:`spanmeter.collector.webhooks`.
Each function takes the caller's connection and never commits.

Events are enqueued through the SECURITY DEFINER function ``spanmeter_enqueue_webhook`` (``INSERT … ON
CONFLICT (dedupe_key) DO NOTHING``, then one pending delivery per subscribed endpoint), so ``serve``'s writer
role needs no INSERT on the outbox. A dispatcher takes due deliveries with :func:`claim_due` (``FOR UPDATE OF d
SKIP LOCKED``): the row stays locked while its request is in flight and until :func:`record_attempt` commits,
so two dispatchers, in one process or in many, never send one delivery at the same time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

import psycopg

__all__ = [
    "DELIVERY_STATES",
    "Attempt",
    "Delivery",
    "DeliveryRow",
    "Endpoint",
    "OutboxEvent",
    "Pending",
    "add_endpoint",
    "attempts",
    "claim_due",
    "deliveries",
    "endpoints",
    "enqueue",
    "event_body",
    "pending",
    "record_attempt",
    "remove_endpoint",
]

DELIVERY_STATES = ("pending", "delivered", "failed", "cancelled")


@dataclass(frozen=True)
class Endpoint:
    endpoint_id: int
    url: str
    events: tuple[str, ...]
    account_id: str | None  # None: every account
    note: str
    created_at: datetime
    created_by: str
    removed_at: datetime | None


@dataclass(frozen=True)
class Delivery:
    """A claimed delivery: what one attempt needs."""

    delivery_id: int
    event_id: str
    event_type: str
    body: bytes
    url: str
    secret: str
    attempts: int  # before this one
    age_seconds: float  # since the delivery was enqueued (the database's clock)


@dataclass(frozen=True)
class DeliveryRow:
    delivery_id: int
    event_id: str
    event_type: str
    account_id: str
    endpoint_id: int
    url: str
    state: str
    attempts: int
    next_attempt_at: datetime
    last_status: int | None
    last_error: str | None
    delivered_at: datetime | None
    created_at: datetime


@dataclass(frozen=True)
class Attempt:
    delivery_id: int
    attempt: int
    attempted_at: datetime
    status_code: int | None
    error: str | None
    duration_seconds: float


@dataclass(frozen=True)
class Pending:
    deliveries: int
    oldest_age_seconds: float  # 0 when none


def add_endpoint(
    conn: psycopg.Connection,
    *,
    url: str,
    events: Sequence[str],
    account_id: str | None,
    secret: str,
    created_by: str,
    note: str = "",
) -> int:
    """Store an endpoint; returns its id."""
    row = conn.execute(
        "INSERT INTO webhook_endpoints (url, events, account_id, secret, note, created_by)"
        " VALUES (%s, %s, %s, %s, %s, %s) RETURNING endpoint_id",
        (url, list(events), account_id, secret, note, created_by),
    ).fetchone()
    assert row is not None
    return int(row[0])


def remove_endpoint(conn: psycopg.Connection, endpoint_id: int, *, removed_by: str) -> int | None:
    """Record the removal and cancel the endpoint's pending deliveries; returns how many were cancelled, or
    None when there is no such endpoint or it was removed before."""
    found = conn.execute(
        "SELECT EXISTS (SELECT FROM webhook_endpoints WHERE endpoint_id = %s)", (endpoint_id,)
    ).fetchone()
    if not found or not found[0]:
        return None
    inserted = conn.execute(
        "INSERT INTO webhook_endpoint_removals (endpoint_id, removed_by) VALUES (%s, %s)"
        " ON CONFLICT DO NOTHING RETURNING 1",
        (endpoint_id, removed_by),
    ).fetchone()
    if inserted is None:
        return None
    cancelled = conn.execute(
        "UPDATE webhook_deliveries SET state = 'cancelled' WHERE endpoint_id = %s AND state = 'pending'",
        (endpoint_id,),
    )
    return cancelled.rowcount


def endpoints(conn: psycopg.Connection, *, include_removed: bool = False) -> list[Endpoint]:
    """Every endpoint (the removed ones too with ``include_removed``), by id. Secrets are not read."""
    where = "" if include_removed else "WHERE r.endpoint_id IS NULL"
    rows = conn.execute(
        "SELECT e.endpoint_id, e.url, e.events, e.account_id, e.note, e.created_at, e.created_by, r.removed_at"
        " FROM webhook_endpoints e LEFT JOIN webhook_endpoint_removals r USING (endpoint_id)"
        f" {where} ORDER BY e.endpoint_id"
    ).fetchall()
    return [Endpoint(r[0], r[1], tuple(r[2]), r[3], r[4], r[5], r[6], r[7]) for r in rows]


class OutboxEvent(Protocol):
    """What :func:`enqueue` reads (:class:`spanmeter.billing.webhooks.Event` is one)."""

    @property
    def event_id(self) -> str: ...
    @property
    def type(self) -> str: ...
    @property
    def account_id(self) -> str: ...
    @property
    def dedupe_key(self) -> str: ...
    @property
    def created_at(self) -> datetime: ...
    @property
    def body(self) -> bytes: ...


def enqueue(conn: psycopg.Connection, event: OutboxEvent) -> bool:
    """Record an event and its deliveries, unless its dedupe key is known; True when it is new."""
    row = conn.execute(
        "SELECT spanmeter_enqueue_webhook(%s, %s, %s, %s, %s, %s)",
        (event.event_id, event.type, event.account_id, event.dedupe_key, event.body.decode(), event.created_at),
    ).fetchone()
    return bool(row and row[0])


def event_body(conn: psycopg.Connection, event_id: str) -> bytes | None:
    row = conn.execute("SELECT body FROM webhook_events WHERE event_id = %s", (event_id,)).fetchone()
    return row[0].encode() if row else None


def claim_due(conn: psycopg.Connection, limit: int = 1) -> list[Delivery]:
    """Lock up to ``limit`` pending deliveries that are due, oldest due first, skipping rows another dispatcher
    holds and endpoints removed meanwhile. The locks last until the caller's transaction ends."""
    rows = conn.execute(
        "SELECT d.delivery_id, d.event_id, ev.event_type, ev.body, e.url, e.secret, d.attempts,"
        " extract(epoch FROM now() - d.created_at)::float8"
        " FROM webhook_deliveries d"
        " JOIN webhook_events ev USING (event_id)"
        " JOIN webhook_endpoints e ON e.endpoint_id = d.endpoint_id"
        " WHERE d.state = 'pending' AND d.next_attempt_at <= now()"
        "   AND NOT EXISTS (SELECT FROM webhook_endpoint_removals r WHERE r.endpoint_id = d.endpoint_id)"
        " ORDER BY d.next_attempt_at, d.delivery_id LIMIT %s"
        " FOR UPDATE OF d SKIP LOCKED",
        (limit,),
    ).fetchall()
    return [Delivery(r[0], r[1], r[2], r[3].encode(), r[4], r[5], r[6], r[7]) for r in rows]


def lease(conn: psycopg.Connection, delivery_id: int, *, attempt: int, seconds: float) -> bool:
    """Take a claimed delivery for one attempt: count the attempt and make it due again only after ``seconds``
    (a lease), so the caller may commit and send outside any transaction; another dispatcher takes it again only
    if this one dies or overruns the lease. False when another dispatcher counted this attempt first."""
    row = conn.execute(
        "UPDATE webhook_deliveries SET attempts = %(attempt)s,"
        " next_attempt_at = clock_timestamp() + make_interval(secs => %(seconds)s::float8)"
        " WHERE delivery_id = %(delivery)s AND attempts = %(attempt)s - 1 AND state = 'pending' RETURNING 1",
        {"attempt": attempt, "seconds": seconds, "delivery": delivery_id},
    ).fetchone()
    return row is not None


def record_attempt(
    conn: psycopg.Connection,
    delivery_id: int,
    *,
    attempt: int,
    attempted_at: datetime,
    status_code: int | None,
    error: str | None,
    duration_seconds: float,
    state: str,
    retry_after_seconds: float | None = None,
) -> None:
    """Log one attempt and move the delivery on: ``delivered``, ``failed``, or ``pending`` again, due
    ``retry_after_seconds`` from now (the database's clock)."""
    if state not in DELIVERY_STATES:
        raise ValueError(f"unknown delivery state {state!r}")
    conn.execute(
        "INSERT INTO webhook_attempts (delivery_id, attempt, attempted_at, status_code, error, duration_seconds)"
        " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
        (delivery_id, attempt, attempted_at, status_code, error, duration_seconds),
    )
    # only while the delivery is still at this attempt (a dispatcher that overran its lease changes nothing)
    conn.execute(
        "UPDATE webhook_deliveries SET state = %(state)s, attempts = %(attempt)s, last_status = %(status)s,"
        " last_error = %(error)s,"
        " next_attempt_at = CASE WHEN %(retry)s::float8 IS NULL THEN next_attempt_at"
        "                        ELSE clock_timestamp() + make_interval(secs => %(retry)s::float8) END,"
        " delivered_at = CASE WHEN %(state)s = 'delivered' THEN %(at)s ELSE delivered_at END"
        " WHERE delivery_id = %(delivery)s AND attempts = %(attempt)s AND state = 'pending'",
        {"state": state, "attempt": attempt, "status": status_code, "error": error, "retry": retry_after_seconds,
         "at": attempted_at, "delivery": delivery_id},
    )  # fmt: skip


def pending(conn: psycopg.Connection) -> Pending:
    """Pending deliveries and the age of the oldest (since it was enqueued)."""
    row = conn.execute(
        "SELECT count(*), coalesce(extract(epoch FROM now() - min(created_at)), 0) FROM webhook_deliveries"
        " WHERE state = 'pending'"
    ).fetchone()
    assert row is not None
    return Pending(int(row[0]), max(0.0, float(row[1])))


def deliveries(
    conn: psycopg.Connection, *, event_id: str | None = None, state: str | None = None, limit: int = 100
) -> list[DeliveryRow]:
    """Deliveries, newest first (one event's, in one state)."""
    rows = conn.execute(
        "SELECT d.delivery_id, d.event_id, ev.event_type, ev.account_id, d.endpoint_id, e.url, d.state, d.attempts,"
        " d.next_attempt_at, d.last_status, d.last_error, d.delivered_at, d.created_at"
        " FROM webhook_deliveries d JOIN webhook_events ev USING (event_id)"
        " JOIN webhook_endpoints e ON e.endpoint_id = d.endpoint_id"
        " WHERE (%(event)s::text IS NULL OR d.event_id = %(event)s)"
        "   AND (%(state)s::text IS NULL OR d.state = %(state)s)"
        " ORDER BY d.delivery_id DESC LIMIT %(limit)s",
        {"event": event_id, "state": state, "limit": limit},
    ).fetchall()
    return [DeliveryRow(*r) for r in rows]


def attempts(conn: psycopg.Connection, delivery_ids: Sequence[int]) -> list[Attempt]:
    """The attempts of these deliveries, in order."""
    rows = conn.execute(
        "SELECT delivery_id, attempt, attempted_at, status_code, error, duration_seconds FROM webhook_attempts"
        " WHERE delivery_id = ANY(%s) ORDER BY delivery_id, attempt",
        (list(delivery_ids),),
    ).fetchall()
    return [Attempt(*r) for r in rows]
