"""The same usage key with other content is a conflict, never a silent duplicate.

The idempotency key is BLAKE2b(trace_id ‖ span_id ‖ meter): it makes retries and replays exact. A producer
that re-sends another's span ids first (a squat) used to win silently: the genuine export was answered OK
and dropped as a duplicate, so the usage stayed billed to the squatter's account."""

from __future__ import annotations

import json
import os
import subprocess
import time
from decimal import Decimal

import grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

from support import SPANMETER, Collector, assert_append_only, ledger, raw_export, totals

SECOND = 1_000_000_000


def _request(spans: list[tuple[bytes, bytes, str, int]], service: str) -> bytes:
    """Celery task runs (one worker_seconds row each) with the given (trace id, span id, account, duration)."""
    end = time.time_ns() - SECOND
    out = []
    for trace_id, span_id, account, duration in spans:
        attributes = [
            KeyValue(key="account_id", value=AnyValue(string_value=account)),
            KeyValue(key="celery.action", value=AnyValue(string_value="run")),
        ]
        out.append(
            Span(
                trace_id=trace_id,
                span_id=span_id,
                name="run",
                kind=Span.SpanKind.SPAN_KIND_CONSUMER,
                start_time_unix_nano=end - duration,
                end_time_unix_nano=end,
                attributes=attributes,
            )
        )
    resource = Resource(attributes=[KeyValue(key="service.name", value=AnyValue(string_value=service))])
    request = ExportTraceServiceRequest(
        resource_spans=[ResourceSpans(resource=resource, scope_spans=[ScopeSpans(spans=out)])]
    )
    return request.SerializeToString()


def test_a_squatted_key_is_a_kept_counted_conflict_not_a_silent_duplicate(fresh_db):
    collector = Collector(fresh_db).start()
    try:
        victim = (os.urandom(16), os.urandom(8))
        other = (os.urandom(16), os.urandom(8))
        # the squatter sends the victim's span ids (and the same times) first, under its own account
        end_time_pinned = _request([(*victim, "acct-squatter", 2 * SECOND), (*other, "acct-squatter", SECOND)], "svc-a")
        assert raw_export(collector.endpoint, end_time_pinned).code == grpc.StatusCode.OK
        # the genuine export: same ids and end time (the same bytes but for the account)
        genuine = _swap_account(end_time_pinned, "acct-squatter", "acct-victim")
        result = raw_export(collector.endpoint, genuine)
        assert result.code == grpc.StatusCode.OK  # not retryable: retrying cannot change the answer
        partial = result.response.partial_success
        assert partial.rejected_spans == 2
        assert "key_conflict x2" in partial.error_message
        assert "account 'acct-squatter'" in partial.error_message and "acct-victim" in partial.error_message
        # kept with both versions: the ledger's row, and the conflicting span whole in rejected_spans
        kept = ledger(fresh_db, "SELECT reason, account_id, error_message FROM rejected_spans ORDER BY span_id")
        assert [(reason, account) for reason, account, _ in kept] == [("key_conflict", "acct-victim")] * 2
        assert all("account 'acct-squatter'" in message for _, _, message in kept)
        assert totals(fresh_db, "acct-squatter") == {"worker_seconds": Decimal("3.0")}
        assert totals(fresh_db, "acct-victim") == {}
        m = collector.metrics()
        assert m['spanmeter_spans_rejected_total{reason="key_conflict"}'] == 2
        assert m['spanmeter_usage_events_duplicate_total{meter="worker_seconds"}'] == 0  # conflicts are not duplicates
        # the genuine producer retries: the same conflict, kept once
        again = raw_export(collector.endpoint, genuine)
        assert again.code == grpc.StatusCode.OK and again.response.partial_success.rejected_spans == 2
        assert ledger(fresh_db, "SELECT count(*) FROM rejected_spans") == [(2,)]
        # a true duplicate (the squatter's own retry, same content) stays a silent, exact duplicate
        dup = raw_export(collector.endpoint, end_time_pinned)
        assert dup.code == grpc.StatusCode.OK and not dup.response.HasField("partial_success")
        assert totals(fresh_db, "acct-squatter") == {"worker_seconds": Decimal("3.0")}
        assert collector.metrics()['spanmeter_usage_events_duplicate_total{meter="worker_seconds"}'] == 2
    finally:
        collector.kill()


def test_the_same_key_with_another_quantity_is_a_conflict_too(fresh_db):
    collector = Collector(fresh_db).start()
    try:
        ids = (os.urandom(16), os.urandom(8))
        first = _request([(*ids, "acct-q", 2 * SECOND)], "svc-q")
        assert raw_export(collector.endpoint, first).code == grpc.StatusCode.OK
        # same ids, same end, a longer span: the start moved (a producer bug or a forgery)
        longer = _request([(*ids, "acct-q", 5 * SECOND)], "svc-q")
        longer = _with_end_of(longer, first)
        result = raw_export(collector.endpoint, longer)
        assert result.response.partial_success.rejected_spans == 1
        assert "quantity 2.0" in result.response.partial_success.error_message
        assert totals(fresh_db, "acct-q") == {"worker_seconds": Decimal("2.0")}
        assert ledger(fresh_db, "SELECT reason FROM rejected_spans") == [("key_conflict",)]
    finally:
        collector.kill()


def test_a_request_of_many_conflicting_rows_is_answered_within_the_export_timeout(fresh_db):
    """Each conflicting row is kept with its span's payload; finding the payloads decodes the request once, so
    20,000 conflicts (a flood from a hostile producer) answer like any request, within an exporter's 10 s."""
    collector = Collector(fresh_db).start()
    try:
        spans = [(os.urandom(16), os.urandom(8), "acct-flood", 2 * SECOND) for _ in range(20_000)]
        first = _request(spans, "svc-flood")
        assert raw_export(collector.endpoint, first, timeout=10).code == grpc.StatusCode.OK
        forged = _swap_account(first, "acct-flood", "acct-forged")
        result = raw_export(collector.endpoint, forged, timeout=10)
        assert result.code == grpc.StatusCode.OK, result.details
        assert result.response.partial_success.rejected_spans == 20_000
        kept = ledger(
            fresh_db,
            "SELECT span_id, payload FROM rejected_spans WHERE reason = 'key_conflict' ORDER BY random() LIMIT 50",
        )
        assert ledger(fresh_db, "SELECT count(*) FROM rejected_spans WHERE reason = 'key_conflict'") == [(20_000,)]
        for span_id, payload in kept:  # each keeps its own span, with the forged account
            (span,) = ResourceSpans.FromString(payload).scope_spans[0].spans
            assert span.span_id.hex() == span_id
            assert any(kv.value.string_value == "acct-forged" for kv in span.attributes)
        assert totals(fresh_db, "acct-flood") == {"worker_seconds": Decimal("40000.0")}
        assert totals(fresh_db, "acct-forged") == {}
    finally:
        collector.kill()


def _swap_account(body: bytes, old: str, new: str) -> bytes:
    request = ExportTraceServiceRequest.FromString(body)
    for rs in request.resource_spans:
        for ss in rs.scope_spans:
            for span in ss.spans:
                for kv in span.attributes:
                    if kv.key == "account_id" and kv.value.string_value == old:
                        kv.value.string_value = new
    return request.SerializeToString()


def _with_end_of(body: bytes, reference: bytes) -> bytes:
    """``body`` with each span's end time (and its start, keeping the duration) taken from ``reference``."""
    request = ExportTraceServiceRequest.FromString(body)
    ref = ExportTraceServiceRequest.FromString(reference).resource_spans[0].scope_spans[0].spans
    for span, pinned in zip(request.resource_spans[0].scope_spans[0].spans, ref, strict=True):
        duration = span.end_time_unix_nano - span.start_time_unix_nano
        span.end_time_unix_nano = pinned.end_time_unix_nano
        span.start_time_unix_nano = pinned.end_time_unix_nano - duration
    return request.SerializeToString()


def _cli(db: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([SPANMETER, *args, "--database-url", db], capture_output=True, text=True, timeout=60)


def test_an_operator_resolves_a_conflict_with_the_dead_letter_tools_and_who_and_why_are_kept(fresh_db):
    collector = Collector(fresh_db).start()
    try:
        squat = _request([(os.urandom(16), os.urandom(8), "acct-squatter", 2 * SECOND) for _ in range(2)], "svc-a")
        assert raw_export(collector.endpoint, squat).code == grpc.StatusCode.OK
        genuine = _swap_account(squat, "acct-squatter", "acct-victim")
        assert raw_export(collector.endpoint, genuine).response.partial_success.rejected_spans == 2
    finally:
        collector.kill()
    listed = json.loads(_cli(fresh_db, "dead-letter", "list", "--reason", "key_conflict", "--format", "json").stdout)
    assert [d["status"] for d in listed] == ["pending", "pending"]
    first, second = (d["id"] for d in listed)

    # a conflict is decided, not replayed
    refused = _cli(fresh_db, "dead-letter", "replay", "--reason", "key_conflict", "--why", "try")
    assert refused.returncode == 2 and "dead-letter resolve" in refused.stderr
    # the span was right: its usage moves to the victim's account as two corrections; the ledger row stays
    done = _cli(
        fresh_db, "dead-letter", "resolve", first, "--decision", "bill-span", "--by", "ops-ana", "--why", "squat, INC-7"
    )
    assert done.returncode == 0, done.stderr
    assert "-2.0 worker_seconds on acct-squatter; +2.0 worker_seconds on acct-victim" in done.stdout
    adjustments = ledger(
        fresh_db, "SELECT account_id, quantity, created_by, reference FROM usage_adjustments ORDER BY quantity"
    )
    assert adjustments == [
        ("acct-squatter", Decimal("-2.0"), "ops-ana", first),
        ("acct-victim", Decimal("2.0"), "ops-ana", first),
    ]
    assert totals(fresh_db, "acct-squatter") == {"worker_seconds": Decimal("4.0")}  # append-only: rows unchanged
    # the other one: the ledger's row was right
    kept = _cli(fresh_db, "dead-letter", "resolve", second, "--decision", "keep-ledger", "--why", "producer bug")
    assert kept.returncode == 0, kept.stderr
    again = _cli(fresh_db, "dead-letter", "resolve", first, "--decision", "dismiss", "--why", "twice")
    assert again.returncode == 2 and "already resolved (bill_span)" in again.stderr
    shown = json.loads(_cli(fresh_db, "dead-letter", "show", first).stdout)
    assert shown["status"] == "resolved"
    assert shown["resolution"]["by"] == "ops-ana" and shown["resolution"]["why"] == "squat, INC-7"
    assert len(shown["resolution"]["corrections"]) == 2
    statuses = json.loads(_cli(fresh_db, "dead-letter", "list", "--format", "json").stdout)
    assert [d["status"] for d in statuses] == ["resolved", "resolved"]


def test_rows_record_their_producer_and_another_producer_sending_the_same_span_is_a_conflict(tmp_path, fresh_db):
    from spanmeter.collector.auth import hash_token

    path = tmp_path / "producers.toml"
    path.write_text(
        "".join(
            f'[[producer]]\nname = "{name}"\ntoken_sha256 = ["{hash_token(name + "-token")}"]\n'
            'services = ["*"]\nmeters = ["*"]\naccounts = ["*"]\n\n'
            for name in ("tenant-a", "tenant-b")
        )
    )
    collector = Collector(fresh_db, env={"SPANMETER_AUTH_FILE": str(path)}).start()
    try:
        body = _request([(os.urandom(16), os.urandom(8), "acct-p", 2 * SECOND)], "svc-p")
        as_a = (("authorization", "Bearer tenant-a-token"),)
        as_b = (("authorization", "Bearer tenant-b-token"),)
        assert raw_export(collector.endpoint, body, metadata=as_a).code == grpc.StatusCode.OK
        assert ledger(fresh_db, "SELECT account_id, producer FROM usage_events") == [("acct-p", "tenant-a")]
        # the same producer again: an exact duplicate; the same bytes from another producer: a conflict
        again = raw_export(collector.endpoint, body, metadata=as_a)
        assert again.code == grpc.StatusCode.OK and not again.response.HasField("partial_success")
        other = raw_export(collector.endpoint, body, metadata=as_b)
        assert other.response.partial_success.rejected_spans == 1
        assert "producer 'tenant-a'" in other.response.partial_success.error_message
        assert "producer 'tenant-b'" in other.response.partial_success.error_message
        assert ledger(fresh_db, "SELECT count(*), min(producer) FROM usage_events") == [(1, "tenant-a")]
    finally:
        collector.kill()


def _moved(body: bytes, seconds: int) -> bytes:
    """``body`` with every span ended (and started) ``seconds`` later: the same ids at another end time."""
    request = ExportTraceServiceRequest.FromString(body)
    for span in request.resource_spans[0].scope_spans[0].spans:
        span.start_time_unix_nano += seconds * SECOND
        span.end_time_unix_nano += seconds * SECOND
    return request.SerializeToString()


def test_the_same_key_at_another_end_time_is_a_conflict_at_the_door_not_a_second_bill(fresh_db):
    """The key registry holds each key once, whatever its end time: a span re-sent with its end time moved
    (a producer bug, or a squatter who cannot know the genuine end time) is answered in partial_success and
    kept with both end times; the genuine row stays billed once."""
    collector = Collector(fresh_db).start()
    try:
        ids = (os.urandom(16), os.urandom(8))
        first = _request([(*ids, "acct-e", 2 * SECOND), (os.urandom(16), os.urandom(8), "acct-e", SECOND)], "svc-e")
        assert raw_export(collector.endpoint, first).code == grpc.StatusCode.OK
        only = ExportTraceServiceRequest.FromString(first)
        del only.resource_spans[0].scope_spans[0].spans[1:]
        later = _moved(only.SerializeToString(), -3600)  # the same span, ended an hour earlier
        result = raw_export(collector.endpoint, later)
        assert result.code == grpc.StatusCode.OK
        partial = result.response.partial_success
        assert partial.rejected_spans == 1 and "key_conflict x1" in partial.error_message
        ended = ledger(fresh_db, "SELECT to_char(occurred_at AT TIME ZONE 'UTC', 'HH24:MI:SS') FROM usage_events"
                       " WHERE trace_id = %s", (ids[0].hex(),))[0][0]  # fmt: skip
        assert f"T{ended}." in partial.error_message or f"T{ended}Z" in partial.error_message  # the held end time
        assert totals(fresh_db, "acct-e") == {"worker_seconds": Decimal("3.0")}  # billed once
        assert ledger(fresh_db, "SELECT count(*) FROM usage_events WHERE trace_id = %s", (ids[0].hex(),)) == [(1,)]
        kept = ledger(fresh_db, "SELECT reason, span_ended_at < (SELECT min(occurred_at) FROM usage_events)"
                      " FROM rejected_spans")  # fmt: skip
        assert kept == [("key_conflict", True)]  # the moved version, whole, with its own end time
        assert collector.metrics()['spanmeter_spans_rejected_total{reason="key_conflict"}'] == 1
        # the producer retries the moved span: the same conflict, kept once; the genuine retry stays a duplicate
        assert raw_export(collector.endpoint, later).response.partial_success.rejected_spans == 1
        assert ledger(fresh_db, "SELECT count(*) FROM rejected_spans") == [(1,)]
        dup = raw_export(collector.endpoint, first)
        assert dup.code == grpc.StatusCode.OK and not dup.response.HasField("partial_success")
        assert totals(fresh_db, "acct-e") == {"worker_seconds": Decimal("3.0")}
    finally:
        collector.kill()


def _writer_row(key: str, at, quantity: str, account: str = "acme") -> tuple:
    us = int(at.timestamp()) * 1_000_000
    return (us, key, account, "j1", "growth", "worker_seconds", 1, quantity, "s", "ab" * 16, "cd" * 8, "{}")


def test_the_writer_finds_a_key_moved_within_a_month_across_months_and_within_one_batch(fresh_db):
    import uuid
    from datetime import UTC, datetime, timedelta

    import psycopg

    from spanmeter.billing.ledger import migrate, partitions
    from spanmeter.billing.ledger.database import resolve_database
    from spanmeter.billing.ledger.writer import LedgerWriter

    migrate.upgrade(resolve_database(fresh_db, data_dir=None))
    now = datetime.now(UTC).replace(microsecond=0)
    first = now.replace(day=1, hour=1, minute=0, second=0) + timedelta(minutes=7)
    next_month = (first.replace(day=28) + timedelta(days=5)).replace(day=2)
    key, twin, fresh = (uuid.uuid4().hex for _ in range(3))
    with psycopg.connect(fresh_db) as conn:
        partitions.ensure(conn, now)
        conn.commit()
        writer = LedgerWriter(conn)
        assert writer.write_usage([_writer_row(key, first, "30")], producer="svc-a").inserted == 1
        conn.commit()
        for moved in (first + timedelta(hours=3), next_month):
            written = writer.write_usage([_writer_row(key, moved, "30")], producer="svc-a")
            conn.commit()
            assert written.inserted == 0 and written.inserted_keys == frozenset()
            [held] = written.conflicts
            assert held.idempotency_key == key and held.account_id == "acme" and held.quantity == "30"
            assert held.occurred_at_us == int(first.timestamp()) * 1_000_000
            assert held.differs("acme", "j1", "growth", 1, "30", "svc-a", int(moved.timestamp()) * 1_000_000)
            assert not held.differs("acme", "j1", "growth", 1, "30", "svc-a", held.occurred_at_us)
            assert first.isoformat().replace("+00:00", "Z") in held.describe()
        # one batch holding a new key twice at two end times: the first is billed, the second conflicts with it
        written = writer.write_usage(
            [_writer_row(twin, first, "4"), _writer_row(twin, first + timedelta(seconds=1), "4"),
             _writer_row(fresh, first, "1")]
        )  # fmt: skip
        conn.commit()
        assert written.inserted == 2 and written.inserted_keys == frozenset({twin, fresh})
        assert [(c.idempotency_key, c.occurred_at_us) for c in written.conflicts] == [
            (twin, int(first.timestamp()) * 1_000_000)
        ]
        # an exact retry is a duplicate, not a conflict
        again = writer.write_usage([_writer_row(key, first, "30")], producer="svc-a")
        conn.commit()
        assert again.inserted == 0 and again.conflicts == ()
        rows = conn.execute("SELECT idempotency_key::text, count(*) FROM usage_events GROUP BY 1").fetchall()
        assert sorted(count for _, count in rows) == [1, 1, 1]
        registered = conn.execute("SELECT count(*) FROM usage_event_keys").fetchone()[0]
        assert registered == 3


def test_keys_billed_twice_before_the_registry_are_registered_once_and_reconcile_lists_them(fresh_db):
    """A ledger from before migration 0018 may hold a key at two end times (the write path could not see it
    then). The upgrade registers each key once, at the end time of the row received first (here the later end
    time arrived first); reconcile still lists the other row until a correction references it; a third end
    time is now a conflict at the door, and the registry is append-only even for the owner."""
    import uuid
    from datetime import UTC, datetime, timedelta

    import psycopg

    from spanmeter.billing import adjustments, reconcile, subscriptions
    from spanmeter.billing.ledger import migrate
    from spanmeter.billing.ledger.database import resolve_database
    from spanmeter.billing.ledger.writer import LedgerWriter
    from spanmeter.billing.periods import Period

    database = resolve_database(fresh_db, data_dir=None)
    migrate.upgrade(database, "0017_trace_links")
    nov = Period(2026, 11)
    first = datetime(2026, 11, 10, 12, 0, tzinfo=UTC)
    key, other = uuid.uuid4().hex, uuid.uuid4().hex
    legacy = """
        INSERT INTO usage_events (occurred_at, idempotency_key, account_id, job_id, plan_code, meter_code,
                                  meter_version, quantity, unit, trace_id, span_id, producer, received_at)
        VALUES (%s, %s, 'acme', 'j1', 'growth', 'worker_seconds', 1, %s, 's', 'ab', 'cd', %s, %s)"""
    with psycopg.connect(fresh_db) as conn:
        later = first + timedelta(hours=3)
        conn.execute(legacy, (later, key, 30, "svc-b", later))  # received first
        conn.execute(legacy, (first, other, 5, "svc-a", first))
        conn.execute(legacy, (first, key, 30, "svc-a", later + timedelta(hours=1)))  # received second
        conn.commit()
    migrate.upgrade(database)
    with psycopg.connect(fresh_db) as conn:
        registered = conn.execute("SELECT idempotency_key::text, occurred_at FROM usage_event_keys").fetchall()
        assert sorted(registered) == sorted([(str(uuid.UUID(key)), later), (str(uuid.UUID(other)), first)])
        subscriptions.set_subscription(
            conn, account_id="acme", plan_code="growth", pricing_version="v2_compute",
            valid_from=nov.start, valid_to=None, created_by="test",
        )  # fmt: skip
        result = reconcile.reconcile(conn, nov)
        conn.commit()
        assert result.delta == Decimal(30)
        assert [(d["idempotency_key"], d["occurred_at"], d["first_occurred_at"], d["producer"], d["first_producer"])
                for d in result.billed_twice] == [(key, "2026-11-10T12:00:00Z", "2026-11-10T15:00:00Z", "svc-a", "svc-b")]  # fmt: skip
        assert "keys billed twice:     1 row(s)" in result.summary()
        # since the registry, a third end time is refused at the door
        written = LedgerWriter(conn).write_usage([_writer_row(key, first + timedelta(hours=5), "30")])
        conn.commit()
        assert written.inserted == 0
        assert [c.occurred_at_us for c in written.conflicts] == [int(later.timestamp()) * 10**6]
        # append-only, for the owner too (the trigger; the writer role has no such privilege at all)
        assert_append_only(
            conn,
            (
                "DELETE FROM usage_event_keys",
                "UPDATE usage_event_keys SET occurred_at = now()",
                "TRUNCATE usage_event_keys",
            ),
        )

        adjustments.record(
            conn, idempotency_key="double-1", account_id="acme", meter_code="worker_seconds",
            quantity=Decimal(-30), occurred_at=first, reason="span re-sent with another end time",
            created_by="test", reference=key,
        )  # fmt: skip
        conn.commit()
        settled = reconcile.reconcile(conn, nov)
        conn.commit()
        assert settled.billed_twice == [] and settled.delta == 0
    out = subprocess.run(
        [SPANMETER, "reconcile", "--period", "2026-11", "--database-url", fresh_db], capture_output=True, text=True
    )
    assert out.returncode == 0 and "keys billed twice:     0 row(s)" in out.stdout, out.stdout + out.stderr


def _without_account(body: bytes) -> bytes:
    request = ExportTraceServiceRequest.FromString(body)
    for span in request.resource_spans[0].scope_spans[0].spans:
        kept = [kv for kv in span.attributes if kv.key != "account_id"]
        del span.attributes[:]
        span.attributes.extend(kept)
    return request.SerializeToString()


def test_a_replay_or_a_backfill_of_a_moved_span_keeps_a_conflict_and_bills_nothing(tmp_path, fresh_db):
    """Replay and file backfill write through the same ledger path: a span whose key the ledger holds at
    another end time is kept as key_conflict (with its span, for dead-letter resolve), never counted as a
    duplicate, and the replayed dead letter stays pending."""
    import gzip
    import struct

    collector = Collector(fresh_db).start()
    try:
        ids = (os.urandom(16), os.urandom(8))
        genuine = _request([(*ids, "acct-m", 2 * SECOND)], "svc-m")
        assert raw_export(collector.endpoint, genuine).code == grpc.StatusCode.OK
        # the same span re-created an hour earlier, without its account: rejected at the door, unattributed
        moved = _without_account(_moved(genuine, -3600))
        answer = raw_export(collector.endpoint, moved)
        assert "unattributed" in answer.response.partial_success.error_message
    finally:
        collector.kill()
    [(pending_id,)] = ledger(fresh_db, "SELECT rejection_key FROM rejected_spans WHERE reason = 'unattributed'")

    out = _cli(fresh_db, "dead-letter", "replay", "--reason", "unattributed", "--patch", "account_id=acct-m",
               "--why", "INC-9")  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "0 billed" in out.stdout and "key_conflict x1" in out.stdout, out.stdout
    assert totals(fresh_db, "acct-m") == {"worker_seconds": Decimal("2.0")}  # billed once
    kept = ledger(fresh_db, "SELECT rejection_key, octet_length(payload) > 0, error_message FROM rejected_spans"
                  " WHERE reason = 'key_conflict'")  # fmt: skip
    assert len(kept) == 1 and kept[0][1] and "ended" in kept[0][2]
    listed = json.loads(_cli(fresh_db, "dead-letter", "list", "--format", "json").stdout)
    assert {d["id"]: d["status"] for d in listed}[str(pending_id)] == "pending"
    # the conflict is decided like one found live
    done = _cli(fresh_db, "dead-letter", "resolve", str(kept[0][0]), "--decision", "keep-ledger", "--why", "moved")
    assert done.returncode == 0, done.stderr

    # a file of the moved span with its account (a Collector's file exporter): kept, not a duplicate
    with_account = _moved(genuine, -7200)
    path = tmp_path / "moved.binpb.gz"
    with gzip.open(path, "wb") as out_file:
        out_file.write(struct.pack(">I", len(with_account)) + with_account)
    ingested = _cli(fresh_db, "ingest", "--otlp-file", str(path))
    assert ingested.returncode == 0, ingested.stderr
    assert "0 new usage rows, 0 already in the ledger, 1 rejected" in ingested.stdout, ingested.stdout
    assert "key_conflict" in ingested.stdout, ingested.stdout
    assert ledger(fresh_db, "SELECT count(*) FROM rejected_spans WHERE reason = 'key_conflict'") == [(2,)]
    assert totals(fresh_db, "acct-m") == {"worker_seconds": Decimal("2.0")}


def test_the_same_span_pending_twice_at_two_end_times_is_billed_once_by_a_replay(fresh_db):
    """Two dead letters of one span (re-created with another end time, both without an account): a replay bills
    the first whole, keeps the second as a key_conflict and leaves it pending."""
    collector = Collector(fresh_db).start()
    try:
        ids = (os.urandom(16), os.urandom(8))
        first = _without_account(_request([(*ids, "x", 2 * SECOND)], "svc-t"))
        for body in (first, _moved(first, -60)):
            assert "unattributed" in raw_export(collector.endpoint, body).response.partial_success.error_message
    finally:
        collector.kill()
    out = _cli(fresh_db, "dead-letter", "replay", "--reason", "unattributed", "--patch", "account_id=acct-t",
               "--why", "INC-10")  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "2 rejected spans selected: 1 billed (1 new usage rows, 0 already in the ledger)" in out.stdout, out.stdout
    assert "key_conflict x1" in out.stdout, out.stdout
    assert totals(fresh_db, "acct-t") == {"worker_seconds": Decimal("2.0")}
    statuses = sorted(d["status"] for d in json.loads(_cli(fresh_db, "dead-letter", "list", "--format", "json").stdout))
    assert statuses == ["pending", "pending", "replayed"]  # the second copy, and its key_conflict
    assert ledger(fresh_db, "SELECT count(*) FROM rejected_spans WHERE reason = 'key_conflict'") == [(1,)]
    assert ledger(fresh_db, "SELECT count(*) FROM dead_letter_replays") == [(1,)]


def test_rows_already_in_the_ledger_but_not_registered_are_counted_exactly_even_under_a_savepoint(fresh_db):
    """A row written without its key (a receiver older than migration 0018 still running after the upgrade):
    the registry takes its key, the primary key still skips the row, and the write says which row was new."""
    import uuid
    from datetime import UTC, datetime

    import psycopg

    from spanmeter.billing.ledger import migrate
    from spanmeter.billing.ledger.database import resolve_database
    from spanmeter.billing.ledger.writer import LedgerWriter

    migrate.upgrade(resolve_database(fresh_db, data_dir=None))
    at = datetime.now(UTC).replace(microsecond=0)
    old, new = uuid.uuid4().hex, uuid.uuid4().hex
    with psycopg.connect(fresh_db) as conn:
        conn.execute(
            "INSERT INTO usage_events (occurred_at, idempotency_key, account_id, job_id, plan_code, meter_code,"
            " meter_version, quantity, unit, trace_id, span_id)"
            " VALUES (%s, %s, 'acme', 'j1', 'growth', 'worker_seconds', 1, 30, 's', 'ab', 'cd')",
            (at, old),
        )
        conn.commit()
        writer = LedgerWriter(conn)
        conn.execute("SELECT 1")  # in a transaction, so the block below is a savepoint
        with conn.transaction():  # as the exporter's isolating path writes
            written = writer.write_usage([_writer_row(old, at, "30"), _writer_row(new, at, "1")])
        conn.commit()
        assert written.inserted == 1 and written.inserted_keys == frozenset({new}) and written.conflicts == ()
        assert conn.execute("SELECT count(*) FROM usage_event_keys").fetchone()[0] == 2
        assert conn.execute("SELECT count(*) FROM usage_events").fetchone()[0] == 2
