"""Failures mid-stream: the database goes away, the receiver is SIGKILLed. Nothing acknowledged is lost
or doubled; nothing unacknowledged is lost as long as the client retries (as a durable queue does)."""

from __future__ import annotations

import threading
import time
from decimal import Decimal
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.sdk.trace.export import SpanExportResult
from psycopg.conninfo import make_conninfo

from spanmeter.billing.ledger.embedded import EmbeddedPostgres
from support import (
    Collector,
    SpanFactory,
    exporter,
    ledger,
    raw_export,
    request_bytes,
    start_from_a_fresh_process,
    totals,
)

pytestmark = pytest.mark.integration  # serve and PostgreSQL stopped and started

MS = 1_000_000


def _batches(account: str, count: int, size: int) -> list[list]:
    f = SpanFactory({"service.name": "resilience"})
    return [
        [f.span(f"run/{b}", {"account_id": account, "celery.action": "run"}, (i + 1) * 100 * MS) for i in range(size)]
        for b in range(count)
    ]


def test_database_stopped_mid_stream(tmp_path: Path):
    """UNAVAILABLE with RetryInfo while the database is down; after it returns, every span exactly once."""
    server = EmbeddedPostgres(tmp_path / "pg")
    url = server.start()
    collector = Collector(url, env={"SPANMETER_LEDGER_WRITE_TIMEOUT_SECONDS": "2"}).start()
    try:
        batches = _batches("acct-outage", count=30, size=20)
        exp = exporter(collector.endpoint, timeout=20)
        sent = threading.Event()
        failures: list[int] = []

        def produce() -> None:
            for number, batch in enumerate(batches):
                # what a durable queue does: keep the batch until the collector acknowledges it
                while exp.export(batch) != SpanExportResult.SUCCESS:
                    failures.append(number)
                    time.sleep(0.2)
                if number == 5:
                    sent.set()
                time.sleep(0.1)

        producer = threading.Thread(target=produce)
        producer.start()
        assert sent.wait(60)
        server.stop()
        # while the database is down: UNAVAILABLE, with a retry delay where both kinds of clients read it
        probe = raw_export(collector.endpoint, request_bytes(_batches("acct-probe", 1, 1)[0]))
        assert probe.code == grpc.StatusCode.UNAVAILABLE
        retry = error_details_pb2.RetryInfo.FromString(probe.trailers["google.rpc.retryinfo-bin"])
        assert 0 < retry.retry_delay.seconds + retry.retry_delay.nanos / 1e9 <= 1
        status = status_pb2.Status.FromString(probe.trailers["grpc-status-details-bin"])
        assert status.details[0].Is(error_details_pb2.RetryInfo.DESCRIPTOR)
        assert collector.get("/readyz")[0] == 503
        time.sleep(2)
        start_from_a_fresh_process(server)
        producer.join(180)
        assert not producer.is_alive()

        # 30 batches × sum(0.1 … 2.0) = 30 × 21.0
        assert totals(url, "acct-outage") == {"worker_seconds": Decimal("630.0")}
        assert ledger(
            url, "SELECT count(*), count(DISTINCT span_id) FROM usage_events WHERE account_id = 'acct-outage'"
        ) == [(600, 600)]
        m = collector.metrics()
        assert m['spanmeter_export_requests_total{grpc_code="UNAVAILABLE"}'] >= 1
        assert m['spanmeter_ledger_write_errors_total{kind="database"}'] >= 1
        assert collector.get("/readyz")[0] == 200
    finally:
        collector.kill()
        server.stop()


def test_receiver_killed_mid_stream(postgres_admin: str, fresh_db: str):
    """SIGKILL between requests and during them: acknowledged spans are all there, none twice."""
    collector = Collector(fresh_db).start()
    endpoint = collector.endpoint
    batches = [request_bytes(batch) for batch in _batches("acct-kill", count=40, size=25)]
    acknowledged: set[int] = set()
    stop = threading.Event()

    def produce() -> None:
        for number, body in enumerate(batches):
            while not stop.is_set():
                result = raw_export(endpoint, body, timeout=5)
                if result.code == grpc.StatusCode.OK:
                    acknowledged.add(number)
                    break
                time.sleep(0.1)

    producer = threading.Thread(target=produce)
    producer.start()
    while len(acknowledged) < 10:
        time.sleep(0.01)
    collector.kill()  # SIGKILL: no shutdown, no flush
    acked_at_kill = set(acknowledged)
    time.sleep(0.5)
    restarted = Collector(fresh_db, otlp_endpoint=endpoint).start()
    try:
        producer.join(120)
        stop.set()
        assert not producer.is_alive()
        assert acknowledged == set(range(40))
        assert acked_at_kill <= acknowledged
        # 40 batches × sum(0.1 … 2.5) = 40 × 32.5; every span exactly once
        assert totals(fresh_db, "acct-kill") == {"worker_seconds": Decimal("1300.0")}
        assert ledger(
            fresh_db,
            "SELECT count(*), count(DISTINCT (trace_id, span_id)) FROM usage_events WHERE account_id = 'acct-kill'",
        ) == [(1000, 1000)]
    finally:
        restarted.kill()
    assert make_conninfo(postgres_admin)  # the session server was untouched


def test_serve_starts_while_the_database_is_down_and_commits_once_it_appears(tmp_path: Path):
    """A restart during an outage must leave a receiver that answers UNAVAILABLE + RetryInfo and /readyz 503
    (it used to exit 1 with a traceback), then migrate and commit when the database comes."""
    server = EmbeddedPostgres(tmp_path / "pg")
    url = server.start()
    server.stop()
    env = {"SPANMETER_LEDGER_WRITE_TIMEOUT_SECONDS": "2", "SPANMETER_MAX_SPANS_PER_REQUEST": "5"}
    collector = Collector(url, env=env, as_writer=False).start()
    try:
        body = request_bytes(_batches("acct-late", 1, 5)[0])
        oversized = request_bytes(_batches("acct-big", 1, 6)[0])
        # over the span limit, but it cannot be kept yet: retryable, never "drop" an unkept request
        early = raw_export(collector.endpoint, oversized)
        assert early.code == grpc.StatusCode.UNAVAILABLE and "google.rpc.retryinfo-bin" in early.trailers
        probe = raw_export(collector.endpoint, body)
        assert probe.code == grpc.StatusCode.UNAVAILABLE, probe.details
        retry = error_details_pb2.RetryInfo.FromString(probe.trailers["google.rpc.retryinfo-bin"])
        assert 0 < retry.retry_delay.seconds + retry.retry_delay.nanos / 1e9 <= 1
        status, reason = collector.get("/readyz")
        assert status == 503 and "database unreachable" in reason
        assert collector.metrics()['spanmeter_ledger_write_errors_total{kind="database"}'] >= 1
        assert any("ledger not usable yet" in line for line in collector.output)
        assert not any("Traceback" in line for line in collector.output)

        start_from_a_fresh_process(server)
        deadline = time.monotonic() + 60
        while (result := raw_export(collector.endpoint, body)).code != grpc.StatusCode.OK:
            assert result.code == grpc.StatusCode.UNAVAILABLE, result.details
            assert time.monotonic() < deadline, "never committed after the database came back"
            time.sleep(0.5)
        assert totals(url, "acct-late") == {"worker_seconds": Decimal("1.5")}  # 0.1 + … + 0.5 s, once
        late = raw_export(collector.endpoint, oversized)  # now it is kept, then refused for the sender to split
        assert late.code == grpc.StatusCode.RESOURCE_EXHAUSTED, late.details
        assert ledger(url, "SELECT reason, body FROM rejected_requests") == [("too_many_spans", oversized)]
        assert collector.get("/readyz")[0] == 200
        assert any("ledger schema migrated" in line for line in collector.output)
    finally:
        collector.kill()
        server.stop()
