"""The webhook service: what ``spanmeter webhooks`` (and the HTTP API, later) call to manage endpoints and read
the delivery log. The contract, the payloads and the signature are :mod:`spanmeter.billing.webhooks`; the
delivery loop is :mod:`spanmeter.collector.webhooks`. Everything here reads and writes the primary.

    service = WebhookService(database)
    endpoint_id, secret = service.add("https://app.example.com/hook", ["quota.threshold"], account_id=None, by="ops")
    service.endpoints()                                   # [Endpoint]
    service.remove(endpoint_id, by="ops")                 # pending deliveries to it are cancelled
    service.deliveries(event_id=None, state="failed")     # [(DeliveryRow, [Attempt])], newest first
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import psycopg

from . import webhooks
from .ledger import webhook_store
from .ledger.database import Database

__all__ = ["WebhookError", "WebhookService"]


class WebhookError(ValueError):
    """Bad input (a URL, an event type, an endpoint id): the message names it and the fix."""


@dataclass(frozen=True)
class WebhookService:
    database: Database

    def add(
        self, url: str, events: Sequence[str], *, account_id: str | None, by: str, note: str = ""
    ) -> tuple[int, str]:
        """Store an endpoint with a new secret; (its id, the secret: shown once)."""
        try:
            url = webhooks.validate_url(url)
            types = webhooks.parse_event_types(",".join(events))
        except ValueError as exc:
            raise WebhookError(str(exc)) from None
        secret = webhooks.new_secret()
        with psycopg.connect(self.database.conninfo) as conn:
            endpoint_id = webhook_store.add_endpoint(
                conn, url=url, events=types, account_id=account_id or None, secret=secret, created_by=by, note=note
            )
            conn.commit()
        return endpoint_id, secret

    def remove(self, endpoint_id: int, *, by: str) -> int:
        """Remove an endpoint; returns how many pending deliveries to it were cancelled."""
        with psycopg.connect(self.database.conninfo) as conn:
            cancelled = webhook_store.remove_endpoint(conn, endpoint_id, removed_by=by)
            conn.commit()
        if cancelled is None:
            raise WebhookError(
                f"no webhook endpoint {endpoint_id} to remove (removed before, or never added): "
                "`spanmeter webhooks list --all` lists them"
            )
        return cancelled

    def endpoints(self, *, include_removed: bool = False) -> list[webhook_store.Endpoint]:
        with psycopg.connect(self.database.conninfo) as conn:
            return webhook_store.endpoints(conn, include_removed=include_removed)

    def deliveries(
        self, *, event_id: str | None = None, state: str | None = None, limit: int = 100
    ) -> list[tuple[webhook_store.DeliveryRow, list[webhook_store.Attempt]]]:
        """Deliveries (one event's, in one state), newest first, each with its attempts in order."""
        if state is not None and state not in webhook_store.DELIVERY_STATES:
            raise WebhookError(f"--status {state!r}: one of {', '.join(webhook_store.DELIVERY_STATES)}")
        with psycopg.connect(self.database.conninfo) as conn:
            rows = webhook_store.deliveries(conn, event_id=event_id, state=state, limit=limit)
            tried = webhook_store.attempts(conn, [r.delivery_id for r in rows])
        by_delivery: dict[int, list[webhook_store.Attempt]] = {}
        for attempt in tried:
            by_delivery.setdefault(attempt.delivery_id, []).append(attempt)
        return [(row, by_delivery.get(row.delivery_id, [])) for row in rows]
