"""Webhooks: signing and verification, the retry schedule and threshold crossings (pure); then, on a real
PostgreSQL and a real local HTTP receiver, the outbox (dedupe, transactional finalize), delivery with retries,
two dispatchers on one outbox, the writer role's grants, and the ``spanmeter webhooks`` commands."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import os
import re
import subprocess
import threading
import time
import uuid
from collections import Counter, defaultdict
from datetime import UTC, datetime
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import psycopg
import pytest
from prometheus_client import CollectorRegistry
from psycopg import errors
from psycopg.conninfo import make_conninfo

from spanmeter import cli
from spanmeter.billing import invoices, quotas, subscriptions, webhooks
from spanmeter.billing.ledger import migrate, webhook_store
from spanmeter.billing.ledger.database import resolve_database
from spanmeter.billing.ledger.roles import WRITER_ROLE
from spanmeter.billing.ledger.writer import LedgerWriter
from spanmeter.billing.periods import Period
from spanmeter.billing.rating import QuotaStatus
from spanmeter.billing.webhook_service import WebhookService
from spanmeter.collector.config import ConfigError
from spanmeter.collector.webhooks import WebhookConfig, WebhookDispatcher, WebhookMetrics, post
from support import SPANMETER, ledger, wait_until

ROOT = Path(__file__).resolve().parent.parent
D = Decimal
SECRET = "whsec_test-secret"
OCT = Period(2026, 10)

# ------------------------------------------------------------------------------------------ signing (pure)


def test_a_signature_verifies_within_five_minutes_and_not_after():
    body = b'{"id":"evt_1","type":"quota.threshold"}'
    header = webhooks.signature_header(SECRET, 1_795_000_000, body)
    assert re.fullmatch(r"t=1795000000,v1=[0-9a-f]{64}", header)
    expected = hmac.new(SECRET.encode(), b"1795000000." + body, hashlib.sha256).hexdigest()
    assert header.endswith(expected)  # hex(HMAC-SHA256(secret, t + "." + body)), as documented
    assert webhooks.verify_signature(SECRET, header, body, now=1_795_000_000 + 300) == 1_795_000_000
    assert webhooks.verify_signature(SECRET, header, body, now=1_795_000_000 - 300) == 1_795_000_000
    with pytest.raises(webhooks.SignatureError, match="more than 300 s"):
        webhooks.verify_signature(SECRET, header, body, now=1_795_000_000 + 301)


@pytest.mark.parametrize(
    ("header", "body", "secret", "reason"),
    [
        (None, b'{"id":"evt_2"}', SECRET, "no v1 signature matches"),  # a changed body
        (None, b'{"id":"evt_1"}', "whsec_other", "no v1 signature matches"),  # another secret
        ("v1=abc", b"", SECRET, "malformed"),
        ("t=abc,v1=abc", b"", SECRET, "malformed"),
        ("t=1795000000", b"", SECRET, "malformed"),
        ("t=1795000000,t=1795000001,v1=aa", b"", SECRET, "malformed"),
    ],
)
def test_a_signature_is_refused_with_the_reason(header, body, secret, reason):
    signed = webhooks.signature_header(SECRET, 1_795_000_000, b'{"id":"evt_1"}')
    with pytest.raises(webhooks.SignatureError, match=reason):
        webhooks.verify_signature(secret, header or signed, body, now=1_795_000_000)


def test_any_of_several_v1_signatures_may_match():
    body = b"{}"
    good = webhooks.sign(SECRET, 1_795_000_000, body)
    assert webhooks.verify_signature(SECRET, f"t=1795000000,v1={'0' * 64},v1={good}", body, now=1_795_000_000)


def _snippet(text: str) -> str:
    """The ``def verify(…)`` receiver snippet as documented (indented in the docstring, fenced in the README)."""
    start = text.rfind("\n", 0, text.index("import hashlib, hmac, time")) + 1
    lines = []
    for line in text[start:].splitlines():
        if line.strip().startswith("```") or (
            lines and line.strip() and not line.startswith(("    ", "def", "import"))
        ):
            break
        lines.append(line)
    indent = min(len(line) - len(line.lstrip()) for line in lines if line.strip())
    return "\n".join(line[indent:] for line in lines)


@pytest.mark.parametrize("where", ["docstring", "README"])
def test_the_documented_receiver_snippet_verifies_what_we_sign(where):
    text = webhooks.__doc__ if where == "docstring" else (ROOT / "README.md").read_text()
    assert text is not None
    namespace: dict = {}
    exec(compile(_snippet(text), f"<{where} snippet>", "exec"), namespace)
    verify = namespace["verify"]
    body = b'{"id":"evt_1"}'
    now = int(time.time())
    assert verify(SECRET, webhooks.signature_header(SECRET, now, body), body)
    assert not verify(SECRET, webhooks.signature_header(SECRET, now, body), body + b" ")
    assert not verify(SECRET, webhooks.signature_header(SECRET, now - 301, body), body)
    assert not verify("whsec_other", webhooks.signature_header(SECRET, now, body), body)


# ------------------------------------------------------------------------------------------ retries (pure)


def test_the_backoff_doubles_from_ten_seconds_to_an_hour_less_up_to_a_fifth_of_jitter():
    plain = [webhooks.backoff_seconds(n, rand=lambda: 0.0) for n in range(1, 13)]
    assert plain == [10, 20, 40, 80, 160, 320, 640, 1280, 2560, 3600, 3600, 3600]
    shortest = [webhooks.backoff_seconds(n, rand=lambda: 0.999999) for n in (1, 10, 500)]
    assert shortest == pytest.approx([8, 2880, 2880], rel=1e-5)
    assert webhooks.backoff_seconds(10_000) <= 3600  # no overflow however many attempts
    with pytest.raises(ValueError):
        webhooks.backoff_seconds(0)


def test_the_schedule_gives_up_after_the_attempts_or_three_days():
    total = sum(webhooks.backoff_seconds(n, rand=lambda: 0.0) for n in range(1, webhooks.MAX_ATTEMPTS))
    assert 2.5 * 86_400 < total < 3.5 * 86_400  # the default number of attempts spans about three days
    assert not webhooks.gives_up(79, 3600)
    assert webhooks.gives_up(80, 3600)
    assert webhooks.gives_up(5, 3 * 86_400)
    assert not webhooks.gives_up(3, 10, max_attempts=4)


# ------------------------------------------------------------------------------------------ events (pure)


@pytest.mark.parametrize(
    ("ratio", "reached"),
    [
        (None, []),
        (D("0"), []),
        (D("0.4999"), []),
        (D("0.5"), ["0.5"]),
        (D("0.7499"), ["0.5"]),
        (D("0.75"), ["0.5", "0.75"]),
        (D("1"), ["0.5", "0.75", "1"]),
        (D("3.2"), ["0.5", "0.75", "1"]),
    ],
)
def test_thresholds_reached_by_a_ratio(ratio, reached):
    status = QuotaStatus("worker_seconds", D("1"), D("1"), ratio)
    assert [str(t) for _, t in webhooks.crossed_thresholds([status])] == reached


def _fixed_ids():
    numbers = itertools.count(1)
    return lambda: f"evt_{next(numbers):04d}"


def test_quota_events_carry_their_dedupe_key_and_a_canonical_body():
    statuses = [
        QuotaStatus("worker_seconds", D("2712.50"), D("3600"), D("0.7535")),
        QuotaStatus("tokens", D("10"), D("250000"), D("0.0000")),
        QuotaStatus("commitment", D("1500.00"), D("2000"), D("0.75")),
    ]
    at = datetime(2026, 11, 20, 14, 3, 11, tzinfo=UTC)
    events = webhooks.quota_events(
        "acme", "2026-11", statuses, plan_code="scale", pricing_version="v2_compute", currency="EUR",
        created_at=at, new_id=_fixed_ids(),
    )  # fmt: skip
    assert [e.dedupe_key for e in events] == [
        "quota.threshold:acme:2026-11:worker_seconds:50",
        "quota.threshold:acme:2026-11:worker_seconds:75",
        "quota.threshold:acme:2026-11:commitment:50",
        "quota.threshold:acme:2026-11:commitment:75",
    ]
    assert events[1].body == (
        b'{"account_id":"acme","created_at":"2026-11-20T14:03:11Z","data":{"included":"3600","metric":"worker_seconds",'
        b'"period":"2026-11","plan_code":"scale","pricing_version":"v2_compute","ratio":"0.7535","threshold":"0.75",'
        b'"used":"2712.5"},"id":"evt_0002","type":"quota.threshold"}'
    )
    money = json.loads(events[3].body)["data"]
    assert (money["used"], money["included"], money["currency"]) == ("1500", "2000", "EUR")


def test_an_invoice_finalized_event_carries_the_total_with_its_currency_and_the_document():
    document = {
        "invoice_number": "INV-2026-11-0001", "account_id": "acme", "period": "2026-11", "currency": "EUR",
        "total": "51.00", "pricing_version": "v2_compute", "finalized_at": "2026-12-03T09:00:00+00:00", "lines": [],
    }  # fmt: skip
    event = webhooks.invoice_finalized_event(document, created_at=datetime(2026, 12, 3, 9, tzinfo=UTC))
    payload = json.loads(event.body)
    assert event.dedupe_key == "invoice.finalized:INV-2026-11-0001"
    assert payload["id"] == event.event_id and event.event_id.startswith("evt_")
    assert (payload["type"], payload["account_id"], payload["created_at"]) == (
        "invoice.finalized", "acme", "2026-12-03T09:00:00Z",
    )  # fmt: skip
    data = payload["data"]
    assert (data["total"], data["currency"], data["finalized_at"]) == ("51.00", "EUR", "2026-12-03T09:00:00Z")
    assert data["invoice"] == document


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("ftp://example.com/hook", "http or https"),
        ("example.com/hook", "http or https"),
        ("https:///hook", "no host"),
        ("https://user:pw@example.com/", "no credentials"),
        ("https://example.com:99999/", "not a URL"),
        ("https://example.com/#x", "fragment"),
    ],
)
def test_an_endpoint_url_must_be_http_or_https_with_a_host(url, problem):
    with pytest.raises(ValueError, match=problem):
        webhooks.validate_url(url)
    assert webhooks.validate_url(" https://[::1]:8443/h?x=1 ") == "https://[::1]:8443/h?x=1"


def test_event_types_are_checked():
    assert webhooks.parse_event_types("invoice.finalized, quota.threshold,invoice.finalized") == (
        "invoice.finalized",
        "quota.threshold",
    )
    for bad in ("", "quota", "quota.threshold,invoice.paid"):
        with pytest.raises(ValueError, match=re.escape("quota.threshold, invoice.finalized")):
            webhooks.parse_event_types(bad)


def test_the_webhook_settings_report_every_bad_variable_at_once():
    assert WebhookConfig.from_environ({}) == WebhookConfig()
    assert WebhookConfig.from_environ({"SPANMETER_WEBHOOK_POLL_INTERVAL_SECONDS": "0"}).poll_interval_seconds == 0
    with pytest.raises(ConfigError) as raised:
        WebhookConfig.from_environ(
            {"SPANMETER_WEBHOOK_TIMEOUT_SECONDS": "0", "SPANMETER_WEBHOOK_MAX_ATTEMPTS": "many",
             "SPANMETER_WEBHOOK_POLL_INTERVAL_SECONDS": "-1"}
        )  # fmt: skip
    assert len(raised.value.problems) == 3
    assert "SPANMETER_WEBHOOK_MAX_ATTEMPTS='many'" in str(raised.value)


# ------------------------------------------------------------------------------------------ a real receiver


class Receiver:
    """A local HTTP endpoint (stdlib ``http.server`` in a thread) that answers 500 to the first
    ``failures`` requests of each event id, then 200; ``delay`` seconds per request. Records every request."""

    def __init__(self, failures: int = 0, delay: float = 0.0) -> None:
        self.failures, self.delay = failures, delay
        self.requests: list[dict] = []
        self.in_flight: Counter[str] = Counter()
        self.most_in_flight: Counter[str] = Counter()
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                event = self.headers.get("Spanmeter-Event-Id", "")
                with receiver._lock:
                    receiver.in_flight[event] += 1
                    receiver.most_in_flight[event] = max(receiver.most_in_flight[event], receiver.in_flight[event])
                    seen = sum(1 for r in receiver.requests if r["event_id"] == event)
                    status = 500 if seen < receiver.failures else 200
                    receiver.requests.append(
                        {"event_id": event, "headers": dict(self.headers), "body": body, "status": status,
                         "received_at": time.time(), "path": self.path}
                    )  # fmt: skip
                time.sleep(receiver.delay)
                with receiver._lock:
                    receiver.in_flight[event] -= 1
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/spanmeter"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def accepted(self) -> Counter[str]:
        return Counter(r["event_id"] for r in self.requests if r["status"] == 200)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    made: list[Receiver] = []

    def make(**kw) -> Receiver:
        made.append(Receiver(**kw))
        return made[-1]

    yield make
    for r in made:
        r.close()


@pytest.fixture
def db(fresh_db):
    migrate.upgrade(resolve_database(fresh_db, data_dir=None))
    return fresh_db


_keys = itertools.count(1)


def write_usage(db: str, account: str, seconds: int, when: datetime) -> None:
    micros = int(when.timestamp()) * 1_000_000
    key = uuid.uuid4().hex
    row = (micros, key, account, None, "starter", "worker_seconds", 1, str(seconds), "s", "ab" * 16, "cd" * 8, "{}")
    with psycopg.connect(db) as conn:
        LedgerWriter(conn).write_usage([row])
        conn.commit()


def subscribe(db: str, account: str, plan: str = "starter", start: datetime = OCT.start) -> None:
    with psycopg.connect(db) as conn:
        subscriptions.set_subscription(
            conn, account_id=account, plan_code=plan, pricing_version="v2_compute", valid_from=start, valid_to=None,
            created_by="test",
        )  # fmt: skip
        conn.commit()


def refresh(db: str, now: datetime) -> None:
    with psycopg.connect(db) as conn:
        quotas.refresh_month_to_date(conn, now)
        conn.commit()


def finalize(db: str, account: str, period: Period, now: datetime):
    with psycopg.connect(db) as conn:
        result = invoices.finalize_invoice(conn, account, period, now=now, finalized_by="test")
        conn.commit()
        return result


def drain(dispatcher: WebhookDispatcher, db: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while ledger(db, "SELECT count(*) FROM webhook_deliveries WHERE state = 'pending'") != [(0,)]:
        assert time.monotonic() < deadline, "deliveries still pending"
        dispatcher.run_once()
        time.sleep(0.02)


def test_each_event_is_accepted_once_after_two_failed_attempts_signed_with_a_stable_id(db, receiver):
    """quota.threshold (50, 75, 100 %) and invoice.finalized to a receiver that answers 500 twice per event."""
    hook = receiver(failures=2)
    service = WebhookService(resolve_database(db, data_dir=None))
    _, secret = service.add(hook.url, ["quota.threshold", "invoice.finalized"], account_id=None, by="test")
    subscribe(db, "acme")
    write_usage(db, "acme", 4_000, datetime(2026, 10, 5, 12, tzinfo=UTC))
    refresh(db, datetime(2026, 10, 20, tzinfo=UTC))
    invoice, created = finalize(db, "acme", OCT, now=datetime(2026, 11, 5, tzinfo=UTC))
    assert created

    registry = CollectorRegistry()
    dispatcher = WebhookDispatcher(
        resolve_database(db, data_dir=None), WebhookMetrics(registry), backoff=lambda attempt: 0.05
    )
    drain(dispatcher, db)
    dispatcher.shutdown()

    events = dict(ledger(db, "SELECT event_id, event_type FROM webhook_events"))
    assert sorted(events.values()) == ["invoice.finalized", *["quota.threshold"] * 3]
    assert hook.accepted() == dict.fromkeys(events, 1)  # exactly one accepted delivery per event
    per_event = defaultdict(list)
    for request in hook.requests:
        per_event[request["event_id"]].append(request)
        headers = request["headers"]
        # every attempt is signed, and verifies at the receiver's clock with the secret `add` printed
        webhooks.verify_signature(secret, headers["Spanmeter-Signature"], request["body"], now=request["received_at"])
        assert headers["Content-Type"] == "application/json" and request["path"] == "/hooks/spanmeter"
        payload = json.loads(request["body"])
        assert payload["id"] == headers["Spanmeter-Event-Id"]  # the idempotency id is the payload's id
        assert payload["type"] == headers["Spanmeter-Event-Type"] == events[payload["id"]]
    for attempts in per_event.values():  # three attempts each: the same id, the same bytes; 500, 500, 200
        assert [r["status"] for r in attempts] == [500, 500, 200]
        assert len({r["body"] for r in attempts}) == 1
    thresholds = sorted(
        json.loads(r[0]["body"])["data"]["threshold"]
        for r in per_event.values()
        if "threshold" in r[0]["body"].decode()
    )
    assert thresholds == ["0.5", "0.75", "1"]
    invoice_event = next(json.loads(r[0]["body"]) for r in per_event.values() if b"invoice.finalized" in r[0]["body"])
    assert invoice_event["data"]["invoice_number"] == invoice.invoice_number
    assert (invoice_event["data"]["total"], invoice_event["data"]["currency"]) == (f"{invoice.total:.2f}", "EUR")

    log = ledger(db, "SELECT delivery_id, attempt, status_code, error FROM webhook_attempts ORDER BY 1, 2")
    assert len(log) == 12
    for _, rows in itertools.groupby(log, key=lambda r: r[0]):
        assert [(a, s, e) for _, a, s, e in rows] == [(1, 500, "HTTP 500"), (2, 500, "HTTP 500"), (3, 200, None)]
    assert ledger(db, "SELECT DISTINCT state, attempts, last_status FROM webhook_deliveries") == [("delivered", 3, 200)]
    samples = {(s.name, s.labels.get("outcome")): s.value for family in registry.collect() for s in family.samples}
    assert samples[("spanmeter_webhook_deliveries_total", "delivered")] == 4
    assert samples[("spanmeter_webhook_deliveries_total", "retried")] == 8
    assert samples[("spanmeter_webhook_deliveries_total", "failed")] == 0
    assert samples[("spanmeter_webhook_pending_deliveries", None)] == 0


def test_a_crossing_refreshed_twice_is_enqueued_once_and_endpoints_hear_only_their_account(db):
    service = WebhookService(resolve_database(db, data_dir=None))
    every, _ = service.add("http://127.0.0.1:9/all", ["quota.threshold"], account_id=None, by="t")
    other, _ = service.add("http://127.0.0.1:9/globex", ["quota.threshold"], account_id="globex", by="t")
    invoices_only, _ = service.add("http://127.0.0.1:9/inv", ["invoice.finalized"], account_id=None, by="t")
    subscribe(db, "acme")
    write_usage(db, "acme", 2_000, datetime(2026, 10, 5, tzinfo=UTC))  # 55.6 %: the 50 % threshold
    refresh(db, datetime(2026, 10, 20, tzinfo=UTC))
    refresh(db, datetime(2026, 10, 20, 0, 1, tzinfo=UTC))  # serve's next pass, a minute later
    keys = [k for (k,) in ledger(db, "SELECT dedupe_key FROM webhook_events ORDER BY 1")]
    assert keys == ["quota.threshold:acme:2026-10:worker_seconds:50"]
    write_usage(db, "acme", 1_000, datetime(2026, 10, 6, tzinfo=UTC))  # 83 %: 75 % is new, 50 % is not
    refresh(db, datetime(2026, 10, 21, tzinfo=UTC))
    keys = [k for (k,) in ledger(db, "SELECT dedupe_key FROM webhook_events ORDER BY 1")]
    assert keys == [
        "quota.threshold:acme:2026-10:worker_seconds:50",
        "quota.threshold:acme:2026-10:worker_seconds:75",
    ]
    targets = ledger(db, "SELECT DISTINCT endpoint_id FROM webhook_deliveries")
    assert targets == [(every,)]  # neither globex's endpoint nor the invoice-only one
    assert other != invoices_only
    assert ledger(db, "SELECT count(*) FROM webhook_deliveries") == [(2,)]


def test_invoice_finalized_is_enqueued_in_the_finalizing_transaction(db):
    service = WebhookService(resolve_database(db, data_dir=None))
    service.add("http://127.0.0.1:9/inv", ["invoice.finalized"], account_id="acme", by="t")
    subscribe(db, "acme")
    with psycopg.connect(db) as conn:  # rolled back: neither invoice nor event
        invoices.finalize_invoice(conn, "acme", OCT, now=datetime(2026, 11, 5, tzinfo=UTC), finalized_by="t")
        assert conn.execute("SELECT count(*) FROM webhook_events").fetchone() == (1,)
        conn.rollback()
    assert ledger(db, "SELECT count(*) FROM webhook_events") == [(0,)]
    finalize(db, "acme", OCT, now=datetime(2026, 11, 5, tzinfo=UTC))
    _, again = finalize(db, "acme", OCT, now=datetime(2026, 11, 6, tzinfo=UTC))
    assert not again
    assert ledger(db, "SELECT dedupe_key FROM webhook_events") == [("invoice.finalized:INV-2026-10-0001",)]
    assert ledger(db, "SELECT count(*) FROM webhook_deliveries") == [(1,)]


def test_two_dispatchers_on_one_outbox_never_send_one_delivery_at_once(db, receiver):
    hook = receiver(delay=0.2)
    service = WebhookService(resolve_database(db, data_dir=None))
    service.add(hook.url, ["invoice.finalized"], account_id=None, by="t")
    accounts = [f"acct-{n}" for n in range(6)]
    for account in accounts:
        subscribe(db, account)
        finalize(db, account, OCT, now=datetime(2026, 11, 5, tzinfo=UTC))

    # a claimed row stays locked while its request is in flight: another dispatcher skips it
    with psycopg.connect(db) as one, psycopg.connect(db) as other:
        first = webhook_store.claim_due(one, 1)
        second = webhook_store.claim_due(other, 10)
        assert len(first) == 1 and len(second) == 5
        assert first[0].delivery_id not in {d.delivery_id for d in second}
        one.rollback()
        other.rollback()

    database = resolve_database(db, data_dir=None)
    dispatchers = [WebhookDispatcher(database, backoff=lambda attempt: 0.05) for _ in range(2)]
    results = []
    threads = [threading.Thread(target=lambda d=d: results.append(d.run_once())) for d in dispatchers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    for dispatcher in dispatchers:
        dispatcher.shutdown()
    assert sum(r.delivered for r in results) == 6
    assert all(r.delivered > 0 for r in results)  # the work spread over both
    assert hook.accepted() == dict.fromkeys(hook.accepted(), 1) and len(hook.accepted()) == 6
    assert max(hook.most_in_flight.values()) == 1
    assert ledger(db, "SELECT count(*) FROM webhook_attempts") == [(6,)]


def test_a_delivery_that_keeps_failing_is_failed_after_the_last_attempt_and_a_removed_endpoint_gets_nothing(
    db, receiver
):
    hook = receiver(failures=100)
    service = WebhookService(resolve_database(db, data_dir=None))
    endpoint, _ = service.add(hook.url, ["invoice.finalized"], account_id=None, by="t")
    unreachable, _ = service.add("http://127.0.0.1:9/closed", ["invoice.finalized"], account_id=None, by="t")
    removed, _ = service.add(hook.url + "/old", ["invoice.finalized"], account_id=None, by="t")
    subscribe(db, "acme")
    finalize(db, "acme", OCT, now=datetime(2026, 11, 5, tzinfo=UTC))
    assert service.remove(removed, by="t") == 1  # its pending delivery is cancelled
    dispatcher = WebhookDispatcher(
        resolve_database(db, data_dir=None), backoff=lambda attempt: 0.01, max_attempts=3, timeout_seconds=2
    )
    drain(dispatcher, db)
    states = ledger(db, "SELECT endpoint_id, state, attempts, last_status FROM webhook_deliveries ORDER BY 1")
    assert states == [(endpoint, "failed", 3, 500), (unreachable, "failed", 3, None), (removed, "cancelled", 0, None)]
    errors_seen = ledger(db, "SELECT DISTINCT error FROM webhook_attempts a JOIN webhook_deliveries d USING "
                            "(delivery_id) WHERE d.endpoint_id = %s", (unreachable,))  # fmt: skip
    assert len(errors_seen) == 1 and "Connection" in errors_seen[0][0]
    assert {r["path"] for r in hook.requests} == {"/hooks/spanmeter"}


def test_the_writer_role_enqueues_and_delivers_but_cannot_rewrite_the_log(db, receiver):
    hook = receiver()
    WebhookService(resolve_database(db, data_dir=None)).add(hook.url, ["quota.threshold"], account_id=None, by="t")
    subscribe(db, "acme")
    write_usage(db, "acme", 2_000, datetime(2026, 10, 5, tzinfo=UTC))
    writer = make_conninfo(db, user=WRITER_ROLE)
    refresh(writer, datetime(2026, 10, 20, tzinfo=UTC))  # serve's month-to-date pass enqueues as the writer
    dispatcher = WebhookDispatcher(resolve_database(writer, data_dir=None))
    assert dispatcher.run_once().delivered == 1
    dispatcher.shutdown()
    assert len(hook.accepted()) == 1
    for statement in (
        "UPDATE webhook_events SET body = '{}'",
        "DELETE FROM webhook_attempts",
        "INSERT INTO webhook_events (event_id, event_type, account_id, dedupe_key, body, created_at)"
        " VALUES ('x', 'quota.threshold', 'a', 'k', '{}', now())",
        "INSERT INTO webhook_endpoints (url, events, secret, created_by) VALUES ('http://x', '{quota.threshold}', 's', 'w')",
        "DELETE FROM webhook_deliveries",
        "UPDATE webhook_deliveries SET event_id = 'x'",
    ):
        with psycopg.connect(writer) as conn, pytest.raises(errors.InsufficientPrivilege):
            conn.execute(statement)
    with psycopg.connect(db) as conn, pytest.raises(errors.InsufficientPrivilege, match="append-only"):
        conn.execute("UPDATE webhook_attempts SET status_code = 200")  # the owner too: the trigger refuses


# ------------------------------------------------------------------------------------------ the commands


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--url", "ftp://example.com/h", "--events", "quota.threshold"), "--url: 'ftp://example.com/h': the scheme"),
        (("--url", "https://example.com/h", "--events", "invoice.paid"), "--events 'invoice.paid': unknown event"),
        (("--url", "https://example.com/h", "--events", "quota.threshold", "--account", " "), "--account ''"),
    ],
)
def test_add_refuses_bad_input_with_one_line_naming_the_flag(capsys, tmp_path, flags, message):
    code, out, err = run_cli(capsys, "webhooks", "add", "--data-dir", str(tmp_path / "unused"), *flags)
    assert code == 2 and out == ""
    assert err.startswith("spanmeter: ") and message in err and len(err.strip().splitlines()) == 1
    assert "Traceback" not in err
    assert not (tmp_path / "unused").exists()  # refused before any database was opened


def test_add_list_deliveries_and_remove(db, capsys, receiver):
    hook = receiver(failures=1)
    code, out, _ = run_cli(
        capsys, "webhooks", "add", "--database-url", db, "--url", hook.url, "--events", "invoice.finalized",
        "--account", "acme", "--by", "ops",
    )  # fmt: skip
    assert code == 0, out
    endpoint_id = int(re.search(r"added webhook endpoint (\d+)", out)[1])
    secret = re.search(r"(whsec_\S+)", out)[1]
    code, out, _ = run_cli(capsys, "webhooks", "list", "--database-url", db, "--format", "json")
    listed = json.loads(out)
    assert [(e["id"], e["url"], e["events"], e["account_id"], e["created_by"]) for e in listed] == [
        (endpoint_id, hook.url, ["invoice.finalized"], "acme", "ops")
    ]
    assert secret not in out  # list never shows a secret

    subscribe(db, "acme")
    finalize(db, "acme", OCT, now=datetime(2026, 11, 5, tzinfo=UTC))
    code, out, _ = run_cli(capsys, "webhooks", "deliver", "--once", "--database-url", db)
    assert (code, out.strip()) == (1, "0 delivered, 1 to retry, 0 failed")  # the receiver's first answer: 500
    ledger(db, "SELECT 1")
    with psycopg.connect(db, autocommit=True) as conn:  # due now rather than in ~10 s
        conn.execute("UPDATE webhook_deliveries SET next_attempt_at = now()")
    code, out, _ = run_cli(capsys, "webhooks", "deliver", "--once", "--database-url", db)
    assert (code, out.strip()) == (0, "1 delivered, 0 to retry, 0 failed")
    request = hook.requests[-1]
    webhooks.verify_signature(secret, request["headers"]["Spanmeter-Signature"], request["body"])

    event_id = request["event_id"]
    code, out, _ = run_cli(
        capsys, "webhooks", "deliveries", "--database-url", db, "--event", event_id, "--format", "json"
    )
    (shown,) = json.loads(out)
    assert (shown["event_type"], shown["state"], shown["attempts"], shown["endpoint_id"]) == (
        "invoice.finalized", "delivered", 2, endpoint_id,
    )  # fmt: skip
    assert [(a["attempt"], a["status_code"]) for a in shown["attempt_log"]] == [(1, 500), (2, 200)]
    code, out, _ = run_cli(capsys, "webhooks", "deliveries", "--database-url", db, "--status", "delivered")
    assert code == 0 and event_id in out and "#1" in out and "HTTP 500" in out and "#2" in out
    code, _, err = run_cli(capsys, "webhooks", "deliveries", "--database-url", db, "--status", "lost")
    assert code == 2 and "--status 'lost': one of pending, delivered, failed, cancelled" in err

    code, out, _ = run_cli(capsys, "webhooks", "remove", str(endpoint_id), "--database-url", db)
    assert code == 0 and f"removed webhook endpoint {endpoint_id}" in out
    code, _, err = run_cli(capsys, "webhooks", "remove", str(endpoint_id), "--database-url", db)
    assert code == 2 and "no webhook endpoint" in err
    code, out, _ = run_cli(capsys, "webhooks", "list", "--database-url", db)
    assert "no webhook endpoints" in out
    code, out, _ = run_cli(capsys, "webhooks", "list", "--database-url", db, "--all")
    assert "removed" in out


def test_the_migration_downgrades_and_upgrades_again(db):
    from alembic import command

    from spanmeter.billing.ledger.migrate import _config

    database = resolve_database(db, data_dir=None)
    engine = database.engine()
    with engine.begin() as connection:
        command.downgrade(_config(connection), "0015_api")
    engine.dispose()
    assert ledger(db, "SELECT to_regclass('webhook_events'), to_regproc('spanmeter_enqueue_webhook')") == [(None, None)]
    migrate.upgrade(database)
    assert ledger(db, "SELECT to_regclass('webhook_events') IS NOT NULL") == [(True,)]


def test_serve_delivers_in_the_background_and_exports_the_webhook_metrics(db, receiver, make_collector):
    hook = receiver()
    WebhookService(resolve_database(db, data_dir=None)).add(hook.url, ["invoice.finalized"], account_id=None, by="t")
    collector = make_collector(db, SPANMETER_WEBHOOK_POLL_INTERVAL_SECONDS="0.2")  # serve as spanmeter_writer
    subscribe(db, "acme")
    finalize(db, "acme", OCT, now=datetime(2026, 11, 5, tzinfo=UTC))
    wait_until(lambda: len(hook.accepted()) == 1, timeout=30, what="serve's dispatcher to deliver")
    wait_until(
        lambda: collector.metrics().get('spanmeter_webhook_deliveries_total{outcome="delivered"}') == 1,
        timeout=30,
        what="the delivered counter",
    )
    metrics = collector.metrics()
    assert metrics["spanmeter_webhook_pending_deliveries"] == 0
    assert metrics['spanmeter_webhook_deliveries_total{outcome="failed"}'] == 0


@pytest.mark.integration  # a subprocess
def test_serve_refuses_a_bad_webhook_setting_before_starting(tmp_path):
    ran = subprocess.run(
        [SPANMETER, "serve", "--data-dir", str(tmp_path / "data"), "--otlp-endpoint", "127.0.0.1:0"],
        env={**os.environ, "SPANMETER_WEBHOOK_TIMEOUT_SECONDS": "soon"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ran.returncode == 2, ran.stderr
    assert "SPANMETER_WEBHOOK_TIMEOUT_SECONDS='soon'" in ran.stderr and "Traceback" not in ran.stderr
    assert not (tmp_path / "data").exists()


def test_a_slow_receiver_holds_no_lock_and_delays_no_other_delivery(db, receiver):
    hook = receiver()
    service = WebhookService(resolve_database(db, data_dir=None))
    slow, _ = service.add(hook.url + "/slow", ["invoice.finalized"], account_id="acct-slow", by="t")
    service.add(hook.url, ["invoice.finalized"], account_id="acct-fast", by="t")
    for account in ("acct-slow", "acct-fast"):
        subscribe(db, account)
        finalize(db, account, OCT, now=datetime(2026, 11, 5, tzinfo=UTC))
    entered, release = threading.Event(), threading.Event()

    def slow_sender(url, body, headers, timeout):
        if url.endswith("/slow"):
            entered.set()
            release.wait(30)
            return 200, None
        return post(url, body, headers, timeout)

    database = resolve_database(db, data_dir=None)
    stuck = WebhookDispatcher(database, sender=slow_sender, backoff=lambda attempt: 0.05)
    other = WebhookDispatcher(database, backoff=lambda attempt: 0.05)
    results = []
    thread = threading.Thread(target=lambda: results.append(stuck.run_once()))
    try:
        thread.start()
        assert entered.wait(30)
        # while one request hangs: another dispatcher delivers the other event, and the slow row is not locked
        assert other.run_once().delivered == 1
        with psycopg.connect(db) as conn:
            conn.execute("SET lock_timeout = '1s'")
            conn.execute("SELECT 1 FROM webhook_deliveries WHERE endpoint_id = %s FOR UPDATE NOWAIT", (slow,))
            conn.rollback()
        # its attempt is already counted and leased: nobody sends it twice meanwhile
        assert other.run_once().attempts == 0
    finally:
        release.set()
        thread.join(30)
        stuck.shutdown()
        other.shutdown()
    assert results[0].delivered == 1
    assert ledger(db, "SELECT state, attempts FROM webhook_deliveries WHERE endpoint_id = %s", (slow,)) == [
        ("delivered", 1)
    ]
