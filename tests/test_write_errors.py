"""Ledger write errors by class, through a real `spanmeter serve` and PostgreSQL: a value the database can
never take is refused for its rows only (kept, counted, reported in partial_success) while the rest of the
request commits; transient errors are retried until exact; deployment mistakes are retried and counted,
never dead-lettered."""

from __future__ import annotations

from decimal import Decimal

import grpc
import psycopg
import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans
from opentelemetry.sdk.trace.export import SpanExportResult

from spanmeter.billing.ledger.errors import WriteErrorClass, classify_sqlstate
from support import SpanFactory, exporter, ledger, raw_export, request_bytes, totals, wait_until

MS = 1_000_000


@pytest.mark.parametrize(
    ("sqlstate", "expected"),
    [
        (None, WriteErrorClass.RETRYABLE),  # the connection broke: no answer from the server
        ("08006", WriteErrorClass.RETRYABLE),
        ("40001", WriteErrorClass.RETRYABLE),
        ("40P01", WriteErrorClass.RETRYABLE),
        ("57P01", WriteErrorClass.RETRYABLE),
        ("57014", WriteErrorClass.RETRYABLE),  # statement timeout
        ("53100", WriteErrorClass.RETRYABLE),  # disk full
        ("42P01", WriteErrorClass.MISCONFIGURED),
        ("28P01", WriteErrorClass.MISCONFIGURED),
        ("42501", WriteErrorClass.MISCONFIGURED),
        ("22003", WriteErrorClass.PERMANENT),  # numeric value out of range
        ("22P02", WriteErrorClass.PERMANENT),
        ("23514", WriteErrorClass.PERMANENT),  # check violation (e.g. no partition for the row)
        ("XX000", WriteErrorClass.RETRYABLE),  # unknown: never drop usage for it
    ],
)
def test_sqlstates_are_classed_like_the_collectors_consumer_errors(sqlstate, expected):
    assert classify_sqlstate(sqlstate) is expected


def _install(db: str, body: str) -> None:
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(f"CREATE FUNCTION test_refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN {body} END $$")
        conn.execute(
            "CREATE TRIGGER test_refuse BEFORE INSERT ON usage_events FOR EACH ROW EXECUTE FUNCTION test_refuse()"
        )


def _spans(account_ids: list[str]):
    f = SpanFactory({"service.name": "errors-svc"})
    return [
        f.span(f"run/{i}", {"account_id": a, "celery.action": "run"}, (i + 1) * 100 * MS)
        for i, a in enumerate(account_ids)
    ]


def test_a_value_the_ledger_refuses_is_kept_for_its_rows_only_and_the_rest_commits(fresh_db, make_collector):
    collector = make_collector(fresh_db)
    _install(
        fresh_db,
        "IF NEW.account_id = 'poison' THEN RAISE EXCEPTION 'no poison here' USING ERRCODE = '22023'; END IF;"
        " RETURN NEW;",
    )
    spans = _spans(["acme", "poison", "acme", "globex", "acme", "acme", "poison"])
    first = raw_export(collector.endpoint, request_bytes(spans[:4]))
    second = raw_export(collector.endpoint, request_bytes(spans[4:]))  # may share a group commit with first
    for result, refused in ((first, 1), (second, 1)):
        assert result.code == grpc.StatusCode.OK, result.details
        assert result.response.partial_success.rejected_spans == refused
        assert "ledger_refused x1" in result.response.partial_success.error_message
        assert "no poison here" in result.response.partial_success.error_message
    # every acceptable row committed exactly once: 0.1 + 0.3 + 0.5 + 0.6 s for acme, 0.4 s for globex
    assert totals(fresh_db, "acme") == {"worker_seconds": Decimal("1.5")}
    assert totals(fresh_db, "globex") == {"worker_seconds": Decimal("0.4")}
    assert totals(fresh_db, "poison") == {}
    kept = ledger(fresh_db, "SELECT reason, account_id, error_message, payload FROM rejected_spans ORDER BY span_id")
    assert [(reason, account) for reason, account, _, _ in kept] == [("ledger_refused", "poison")] * 2
    for _, _, message, payload in kept:
        assert "no poison here" in message
        span = ResourceSpans.FromString(payload).scope_spans[0].spans[0]  # the whole span, for a replay
        assert {kv.key: kv.value.string_value for kv in span.attributes}["account_id"] == "poison"
    # a retry of the same request: the good rows are duplicates, the refused one is refused again, kept once
    again = raw_export(collector.endpoint, request_bytes(spans[:4]))
    assert again.code == grpc.StatusCode.OK and again.response.partial_success.rejected_spans == 1
    assert totals(fresh_db, "acme") == {"worker_seconds": Decimal("1.5")}
    assert ledger(fresh_db, "SELECT count(*) FROM rejected_spans") == [(2,)]
    m = collector.metrics()
    assert m['spanmeter_spans_rejected_total{reason="ledger_refused"}'] == 3
    assert m['spanmeter_export_requests_total{grpc_code="UNAVAILABLE"}'] == 0


def test_a_deadlock_is_retried_until_the_rows_commit_exactly_once(fresh_db, make_collector):
    collector = make_collector(fresh_db)
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        conn.execute("CREATE SEQUENCE test_attempts")
        conn.execute("GRANT USAGE ON SEQUENCE test_attempts TO spanmeter_writer")  # serve writes as the writer
    # the first two attempts die as a deadlock victim would (nextval is not rolled back with them)
    _install(
        fresh_db,
        "IF nextval('test_attempts') <= 2 THEN RAISE EXCEPTION 'simulated' USING ERRCODE = '40P01'; END IF;"
        " RETURN NEW;",
    )
    exp = exporter(collector.endpoint, timeout=30)  # the official exporter retries UNAVAILABLE with RetryInfo
    assert exp.export(_spans(["acme", "acme"])) == SpanExportResult.SUCCESS
    assert totals(fresh_db, "acme") == {"worker_seconds": Decimal("0.3")}
    assert ledger(fresh_db, "SELECT count(*) FROM rejected_spans") == [(0,)]
    m = collector.metrics()
    assert m['spanmeter_export_requests_total{grpc_code="UNAVAILABLE"}'] >= 1
    assert m['spanmeter_ledger_write_errors_total{kind="database"}'] >= 1


def test_a_deployment_mistake_is_retried_and_counted_never_dead_lettered(fresh_db, make_collector):
    collector = make_collector(fresh_db)
    _install(fresh_db, "RAISE EXCEPTION 'relation missing' USING ERRCODE = '42P01';")
    result = raw_export(collector.endpoint, request_bytes(_spans(["acme"])))
    assert result.code == grpc.StatusCode.UNAVAILABLE
    assert "misconfigured" in result.details
    assert ledger(fresh_db, "SELECT count(*) FROM rejected_spans") == [(0,)]
    wait_until(
        lambda: collector.metrics()['spanmeter_ledger_write_errors_total{kind="configuration"}'] >= 1,
        timeout=10,
        what="the configuration error counted",
    )
    with psycopg.connect(fresh_db, autocommit=True) as conn:  # fixed: the client's retry goes through
        conn.execute("DROP TRIGGER test_refuse ON usage_events")
    assert raw_export(collector.endpoint, request_bytes(_spans(["acme"]))).code == grpc.StatusCode.OK
