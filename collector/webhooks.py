"""The webhook dispatcher: delivers the ledger's webhook outbox, in the background of ``spanmeter serve``.

What is sent, how it is signed and how a receiver verifies it: :mod:`spanmeter.billing.webhooks`. This
component takes due deliveries from ``webhook_deliveries`` every ``SPANMETER_WEBHOOK_POLL_INTERVAL_SECONDS``
(default 2 s; ``0``: ``serve`` delivers nothing, run ``spanmeter webhooks deliver`` instead), and again at
once while there are more, and POSTs each one:

- a 2xx answer within ``SPANMETER_WEBHOOK_TIMEOUT_SECONDS`` (default 10) delivers it;
- anything else (another status, a redirect, which is never followed, a refused connection, a timeout) is
  retried after :func:`spanmeter.billing.webhooks.backoff_seconds` (10 s doubling to an hour, with jitter),
  until ``SPANMETER_WEBHOOK_MAX_ATTEMPTS`` attempts (default 80) or 3 days after the event, then it is
  ``failed``.

Every answered attempt is logged in ``webhook_attempts`` in the transaction that moves the delivery on.

**Several serve processes or replicas on one ledger.** Each dispatcher claims one delivery at a time with
``SELECT … FOR UPDATE OF d SKIP LOCKED``, counts the attempt and leases the row (it is due again only after
four request timeouts plus 30 s), commits, and only then sends: no lock or transaction is held while a
receiver answers, so a slow endpoint delays nobody else's deliveries, and another dispatcher skips the row
until the lease ends. The result is recorded only while the delivery is still at that attempt. A dispatcher
that dies mid-request leaves the attempt counted (it draws on the give-up limits like any other) and the row
due when the lease ends; a request that overruns its lease may be sent twice (delivery is at least once:
receivers deduplicate by ``Spanmeter-Event-Id``).

Metrics (:mod:`spanmeter.metrics_catalog`): ``spanmeter_webhook_deliveries_total{outcome}`` (``delivered``,
``retried``, ``failed``), ``spanmeter_webhook_pending_deliveries``,
``spanmeter_webhook_oldest_pending_age_seconds``, ``spanmeter_webhook_dispatch_errors_total``. A database error
is counted and logged once per streak; the next tick reconnects. Lifecycle: ``start()``, ``shutdown()`` (safe
without ``start()``; a request in flight finishes and is recorded, or rolls back and is sent again later).

HTTP is the standard library's ``http.client``: one POST with a timeout, no redirects, certificate checks by
``ssl.create_default_context()``; nothing here needs a client library, so none is added to what customers
install.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlsplit

import psycopg
from prometheus_client import CollectorRegistry

from spanmeter import metrics_catalog as M
from spanmeter.billing import webhooks
from spanmeter.billing.ledger import webhook_store
from spanmeter.billing.ledger.database import Database

from .config import ConfigError
from .metrics import metric
from .own_connection import OwnConnection

__all__ = ["DispatchResult", "WebhookConfig", "WebhookDispatcher", "WebhookMetrics", "post"]

log = logging.getLogger(__name__)

OUTCOMES = ("delivered", "retried", "failed")
MAX_ERROR_CHARS = 500


@dataclass(frozen=True)
class WebhookConfig:
    """``serve``'s webhook settings, from ``SPANMETER_WEBHOOK_*`` (see the README's configuration table)."""

    poll_interval_seconds: float = 2.0  # 0: serve does not deliver
    timeout_seconds: float = 10.0
    max_attempts: int = webhooks.MAX_ATTEMPTS

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> WebhookConfig:
        """Every bad variable reported at once (:class:`ConfigError`)."""
        problems: list[str] = []
        values: dict[str, float | int] = {}
        for field, variable, kind, check in (
            ("poll_interval_seconds", "SPANMETER_WEBHOOK_POLL_INTERVAL_SECONDS", float, "a number ≥ 0 (0: off)"),
            ("timeout_seconds", "SPANMETER_WEBHOOK_TIMEOUT_SECONDS", float, "a number > 0"),
            ("max_attempts", "SPANMETER_WEBHOOK_MAX_ATTEMPTS", int, "a whole number ≥ 1"),
        ):
            raw = environ.get(variable)
            if raw is None or not raw.strip():
                continue
            try:
                value = kind(raw.strip())
            except ValueError:
                value = None
            if value is None or value < 0 or (value == 0 and field != "poll_interval_seconds") or value != value:
                problems.append(f"{variable}={raw!r}: expected {check}")
            else:
                values[field] = value
        if problems:
            raise ConfigError(problems)
        return cls(**values)  # type: ignore[arg-type]


class WebhookMetrics:
    """The dispatcher's metrics, built from the catalog."""

    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.deliveries = metric(M.WEBHOOK_DELIVERIES, registry)
        for outcome in OUTCOMES:
            self.deliveries.labels(outcome)
        self.pending = metric(M.WEBHOOK_PENDING, registry)
        self.oldest_pending_age = metric(M.WEBHOOK_OLDEST_PENDING_AGE, registry)
        self.errors = metric(M.WEBHOOK_DISPATCH_ERRORS, registry)


@dataclass(frozen=True)
class DispatchResult:
    delivered: int = 0
    retried: int = 0
    failed: int = 0

    @property
    def attempts(self) -> int:
        return self.delivered + self.retried + self.failed


def post(url: str, body: bytes, headers: Mapping[str, str], timeout_seconds: float) -> tuple[int | None, str | None]:
    """POST ``body``; (status, None) when an answer came, (None, error) when none did. Redirects are answers
    (3xx), never followed."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    connection: http.client.HTTPConnection
    if parts.scheme == "https":
        connection = http.client.HTTPSConnection(
            host, parts.port, timeout=timeout_seconds, context=ssl.create_default_context()
        )
    else:
        connection = http.client.HTTPConnection(host, parts.port, timeout=timeout_seconds)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        connection.request("POST", target, body=body, headers=dict(headers))
        response = connection.getresponse()
        response.read(64 * 1024)  # a receiver's answer body is not kept; read a little so the socket closes cleanly
        return response.status, None
    except (OSError, http.client.HTTPException, ValueError) as exc:
        return None, (f"{type(exc).__name__}: {exc}".strip())[:MAX_ERROR_CHARS]
    finally:
        connection.close()


class WebhookDispatcher:
    """Delivers due webhook deliveries (see the module docstring). ``backoff`` maps a failed attempt's number
    to the seconds before the next (tests inject a short one); ``sender`` is :func:`post`."""

    def __init__(
        self,
        database: Database,
        metrics: WebhookMetrics | None = None,
        *,
        poll_interval_seconds: float = 2.0,
        timeout_seconds: float = 10.0,
        max_attempts: int = webhooks.MAX_ATTEMPTS,
        max_age_seconds: float = webhooks.MAX_AGE_SECONDS,
        backoff: Callable[[int], float] = webhooks.backoff_seconds,
        sender: Callable[[str, bytes, Mapping[str, str], float], tuple[int | None, str | None]] = post,
        max_per_pass: int = 100,
    ) -> None:
        self._database = database
        self._metrics = metrics if metrics is not None else WebhookMetrics(None)
        self._interval = poll_interval_seconds
        self._timeout = timeout_seconds
        # a request's socket operations each wait up to the timeout: connect, send, answer (and TLS)
        self._lease_seconds = 4 * timeout_seconds + 30
        self._max_attempts = max_attempts
        self._max_age = max_age_seconds
        self._backoff = backoff
        self._send = sender
        self._max_per_pass = max_per_pass
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._db = OwnConnection(database, statement_timeout_ms=30_000)
        self._failing = False

    @classmethod
    def from_config(cls, database: Database, registry: CollectorRegistry, config: WebhookConfig) -> WebhookDispatcher:
        return cls(
            database,
            WebhookMetrics(registry),
            poll_interval_seconds=config.poll_interval_seconds,
            timeout_seconds=config.timeout_seconds,
            max_attempts=config.max_attempts,
        )

    # -- lifecycle ---------------------------------------------------------------------------------------------
    def start(self) -> None:
        if self._interval <= 0:
            log.info("webhook delivery is off in serve (SPANMETER_WEBHOOK_POLL_INTERVAL_SECONDS=0)")
            return
        self._thread = threading.Thread(target=self._run, name="webhook-dispatcher", daemon=True)
        self._thread.start()

    def shutdown(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self._timeout + 30)
            self._thread = None
        self._close()

    # -- one pass ----------------------------------------------------------------------------------------------
    def run_once(self) -> DispatchResult:
        """Attempt every due delivery (at most ``max_per_pass``), one transaction each; update the gauges."""
        conn = self._connection()
        counts = dict.fromkeys(OUTCOMES, 0)
        for _ in range(self._max_per_pass):
            if self._stop.is_set():
                break
            outcome = self._deliver_one(conn)
            if outcome is None:
                break
            if outcome == "skipped":  # another dispatcher counted this attempt first
                continue
            counts[outcome] += 1
            self._metrics.deliveries.labels(outcome).inc()
        backlog = webhook_store.pending(conn)
        conn.commit()
        self._metrics.pending.set(backlog.deliveries)
        self._metrics.oldest_pending_age.set(backlog.oldest_age_seconds)
        return DispatchResult(counts["delivered"], counts["retried"], counts["failed"])

    def _deliver_one(self, conn: psycopg.Connection) -> str | None:
        try:
            claimed = webhook_store.claim_due(conn, 1)
            if not claimed:
                conn.commit()
                return None
            delivery = claimed[0]
            attempt = delivery.attempts + 1
            # count the attempt and lease the row, then send outside any transaction: a slow receiver holds no
            # lock, and a dispatcher that dies mid-request leaves an attempt counted and the row due again later
            if not webhook_store.lease(conn, delivery.delivery_id, attempt=attempt, seconds=self._lease_seconds):
                conn.commit()
                return "skipped"
            conn.commit()
            attempted_at = datetime.now(UTC)
            headers = webhooks.request_headers(
                delivery.secret, delivery.event_id, delivery.event_type, delivery.body, int(time.time())
            )
            started = time.monotonic()
            status, error = self._send(delivery.url, delivery.body, headers, self._timeout)
            duration = time.monotonic() - started
            if status is not None and 200 <= status < 300:
                outcome, retry_after = "delivered", None
            elif webhooks.gives_up(
                attempt, delivery.age_seconds, max_attempts=self._max_attempts, max_age_seconds=self._max_age
            ):
                outcome, retry_after = "failed", None
            else:
                outcome, retry_after = "retried", self._backoff(attempt)
            if status is not None and error is None and outcome != "delivered":
                error = f"HTTP {status}" + (" (redirects are not followed)" if 300 <= status < 400 else "")
            webhook_store.record_attempt(
                conn,
                delivery.delivery_id,
                attempt=attempt,
                attempted_at=attempted_at,
                status_code=status,
                error=error,
                duration_seconds=duration,
                state={"delivered": "delivered", "failed": "failed", "retried": "pending"}[outcome],
                retry_after_seconds=retry_after,
            )
            conn.commit()
        except BaseException:
            with contextlib.suppress(psycopg.Error):
                conn.rollback()
            raise
        if outcome == "failed":
            log.warning(
                "webhook delivery %d (event %s to %s) failed after %d attempts: %s",
                delivery.delivery_id, delivery.event_id, delivery.url, attempt, error,
            )  # fmt: skip
        return outcome

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                result = self.run_once()
                if self._failing:
                    log.info("webhook delivery works again")
                self._failing = False
                if result.attempts >= self._max_per_pass:
                    continue  # more are due: at once
            except Exception as exc:  # never let the thread die: deliveries stay pending
                self._metrics.errors.inc()
                if not self._failing:
                    lines = str(exc).strip().splitlines()
                    log.warning("delivering webhooks failed (retrying): %s", lines[0] if lines else type(exc).__name__)
                self._failing = True
                self._close()
            self._stop.wait(self._interval)

    def _connection(self) -> psycopg.Connection:
        return self._db.get()

    def _close(self) -> None:
        self._db.close()
