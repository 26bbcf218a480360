"""Concurrency and memory bounds, and what the operator sees in the logs."""

from __future__ import annotations

import json
import threading
import time

import grpc
import psycopg
from google.rpc import error_details_pb2

from support import Collector, SpanFactory, raw_export, request_bytes, wait_until

MS = 1_000_000


def _body(account: str, spans: int) -> bytes:
    f = SpanFactory({"service.name": "limits"})
    return request_bytes([f.span("run", {"account_id": account, "celery.action": "run"}, MS) for _ in range(spans)])


def _hold_commit(db: str, collector: Collector, bodies: list[bytes], waiting: int):
    """Lock the ledger so the first requests wait for their commit; return the lock and their results."""
    blocker = psycopg.connect(db)
    blocker.execute("LOCK TABLE usage_events IN EXCLUSIVE MODE")
    results: list = []
    threads = [threading.Thread(target=lambda b=b: results.append(raw_export(collector.endpoint, b))) for b in bodies]
    for t in threads:
        t.start()
    wait_until(
        lambda: collector.metrics()["spanmeter_ledger_pending_requests"] >= waiting, 10, 0.02, "pending requests"
    )
    return blocker, threads, results


def test_in_flight_request_and_span_bounds_answer_unavailable_with_retry_info(fresh_db):
    collector = Collector(
        fresh_db,
        env={
            "SPANMETER_MAX_INFLIGHT_REQUESTS": "2",
            "SPANMETER_MAX_INFLIGHT_SPANS": "50",
            "SPANMETER_LEDGER_WRITE_TIMEOUT_SECONDS": "20",
        },
    ).start()
    try:
        blocker, threads, results = _hold_commit(fresh_db, collector, [_body("a", 10), _body("b", 10)], waiting=2)
        over = raw_export(collector.endpoint, _body("c", 1))  # a third request while two wait
        assert over.code == grpc.StatusCode.UNAVAILABLE
        retry = error_details_pb2.RetryInfo.FromString(over.trailers["google.rpc.retryinfo-bin"])
        assert retry.retry_delay.seconds == 1
        assert collector.metrics()['spanmeter_export_throttled_total{limit="requests"}'] == 1
        blocker.commit()
        blocker.close()
        for t in threads:
            t.join(30)
        assert [r.code for r in results] == [grpc.StatusCode.OK, grpc.StatusCode.OK]

        # spans: 40 held, another 20 would pass the bound of 50
        blocker, threads, results = _hold_commit(fresh_db, collector, [_body("d", 40)], waiting=1)
        over = raw_export(collector.endpoint, _body("e", 20))
        assert over.code == grpc.StatusCode.UNAVAILABLE
        assert collector.metrics()['spanmeter_export_throttled_total{limit="spans"}'] == 1
        blocker.commit()
        blocker.close()
        threads[0].join(30)
        assert [r.code for r in results] == [grpc.StatusCode.OK]
        # with nothing else in flight, a request larger than the span bound is still taken (alone)
        assert raw_export(collector.endpoint, _body("f", 80)).code == grpc.StatusCode.OK
    finally:
        collector.kill()


def test_json_logs_one_line_per_refused_or_partially_rejected_request(fresh_db):
    collector = Collector(fresh_db, env={"SPANMETER_LOG_FORMAT": "json"}).start()
    try:
        f = SpanFactory({"service.name": "logs"})
        orphans = request_bytes([f.span("run", {"celery.action": "run"}, MS) for _ in range(25)])
        assert raw_export(collector.endpoint, orphans).code == grpc.StatusCode.OK
        assert raw_export(collector.endpoint, b"\xff\xff\xff garbage").code == grpc.StatusCode.INVALID_ARGUMENT
        time.sleep(0.3)
        entries = [json.loads(line) for line in collector.output if line.startswith("{")]
        rejected = [e for e in entries if e.get("event") == "export_rejected_spans"]
        refused = [e for e in entries if e.get("event") == "export_refused"]
        assert len(rejected) == 1 and rejected[0]["rejected"] == {"unattributed": 25} and rejected[0]["spans"] == 25
        assert len(refused) == 1 and refused[0]["grpc_code"] == "INVALID_ARGUMENT" and refused[0]["level"] == "warning"
        assert all({"time", "level", "logger", "message"} <= set(e) for e in entries)
    finally:
        collector.kill()


def test_a_request_abandoned_at_its_write_timeout_leaves_no_pending_trace(fresh_db):
    """UNAVAILABLE after the write timeout; once the ledger moves again the pending gauges return to 0."""
    collector = Collector(fresh_db, env={"SPANMETER_LEDGER_WRITE_TIMEOUT_SECONDS": "1"}).start()
    try:
        blocker = psycopg.connect(fresh_db)
        blocker.execute("LOCK TABLE usage_events IN EXCLUSIVE MODE")
        first = raw_export(collector.endpoint, _body("slow", 5))  # its writer is stuck behind the lock
        assert first.code == grpc.StatusCode.UNAVAILABLE
        queued = raw_export(collector.endpoint, _body("queued", 5))  # still queued when it gives up
        assert queued.code == grpc.StatusCode.UNAVAILABLE
        blocker.commit()
        blocker.close()
        assert raw_export(collector.endpoint, _body("after", 5)).code == grpc.StatusCode.OK

        def drained() -> bool:
            m = collector.metrics()
            return m["spanmeter_ledger_pending_requests"] == 0 and m["spanmeter_oldest_pending_span_age_seconds"] == 0

        wait_until(drained, 10, what="the pending gauges back at 0")
        m = collector.metrics()
        assert m['spanmeter_ledger_write_errors_total{kind="timeout"}'] == 2
    finally:
        collector.kill()


def test_options_in_the_database_url_are_honoured_by_the_writers(postgres_admin):
    from conftest import create_database
    from psycopg.conninfo import make_conninfo

    db = create_database(postgres_admin)
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA ledger")
    url = make_conninfo(db, options="-c search_path=ledger")
    collector = Collector(url).start()
    try:
        assert raw_export(collector.endpoint, _body("acct-schema", 3)).code == grpc.StatusCode.OK
        with psycopg.connect(db) as conn:
            assert conn.execute("SELECT count(*) FROM ledger.usage_events").fetchone() == (3,)
            assert conn.execute("SELECT to_regclass('public.usage_events')").fetchone() == (None,)
    finally:
        collector.kill()
