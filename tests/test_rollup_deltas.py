"""Rollup deltas and folding (migration 0005) on a real PostgreSQL: every figure exact at every moment,
across concurrent writers, retries, interrupted folds, competing folders, rebuilds and an upgrade of a
ledger that the old per-row trigger maintained."""

from __future__ import annotations

import importlib
import itertools
import json
import random
import threading
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import psycopg
import pytest

from spanmeter.billing import rollups
from spanmeter.billing.ledger import migrate, rollup_store
from spanmeter.billing.ledger.database import resolve_database
from spanmeter.billing.ledger.writer import LedgerWriter
from spanmeter.billing.periods import Period
from support import insert_as_an_old_writer

NOV = Period(2026, 11)
_keys = itertools.count(1)


def row(account, meter, quantity, when, *, job=None, plan="growth", model=None):
    micros = int(when.timestamp()) * 1_000_000 + when.microsecond
    key = uuid.UUID(int=next(_keys) + (uuid.uuid4().int >> 64 << 64)).hex
    metadata = json.dumps({"gen_ai.model": model} if model else {})
    unit = "s" if meter.endswith("seconds") else "{token}"
    return (micros, key, account, job, plan, meter, 1, str(quantity), unit, "ab" * 16, "cd" * 8, metadata)


def write(db, rows):
    with psycopg.connect(db) as conn:
        result = LedgerWriter(conn).write_usage(rows)
        conn.commit()
        return result


@pytest.fixture
def db(fresh_db):
    migrate.upgrade(resolve_database(fresh_db, data_dir=None))
    return fresh_db


def raw_totals(conn, account, start, end):
    """The truth: straight from usage_events."""
    return {
        meter: (Decimal(q), int(n))
        for meter, q, n in conn.execute(
            "SELECT meter_code, sum(quantity), count(*) FROM usage_events WHERE account_id = %s "
            "AND occurred_at >= %s AND occurred_at < %s GROUP BY 1",
            (account, start, end),
        )
    }


def live_totals(conn, account, start, end):
    return {m: (t.quantity, t.events) for m, t in rollups.rollup_totals(conn, account, start, end).items()}


def pending(conn) -> int:
    return conn.execute("SELECT count(*) FROM usage_rollup_deltas").fetchone()[0]


def test_a_batch_appends_one_delta_per_group_and_no_row_per_job(db):
    t = datetime(2026, 11, 3, 10, 5, tzinfo=UTC)
    batch = [row("acme", "worker_seconds", "0.5", t + timedelta(seconds=i), job=f"job-{i}") for i in range(500)]
    batch += [row("acme", "output_tokens", 10, t, model="m1"), row("acme", "output_tokens", 5, t, model="m2")]
    assert write(db, batch).inserted == 502
    with psycopg.connect(db) as conn:
        # one delta for the 500 worker rows (same account, hour, meter, plan, dimension), one per token model
        assert pending(conn) == 3
        (jobs,) = conn.execute(
            "SELECT cardinality(job_ids) FROM usage_rollup_deltas WHERE job_ids IS NOT NULL"
        ).fetchone()
        assert jobs == 500
        assert conn.execute("SELECT count(*) FROM usage_rollup_jobs").fetchone()[0] == 0  # nothing per job yet
        assert rollups.aggregate(conn, "jobs", "acme", NOV.start, NOV.end) == 500
        assert rollups.aggregate(conn, "worker_seconds", "acme", NOV.start, NOV.end) == Decimal("250.0")
        assert rollups.aggregate(conn, "weighted_output_tokens", "acme", NOV.start, NOV.end) == Decimal(15)
    # a retried batch adds no delta at all: only rows the statement really inserted count
    assert write(db, batch).inserted == 0
    with psycopg.connect(db) as conn:
        assert pending(conn) == 3
        assert rollup_store.fold(conn).deltas == 3
        assert pending(conn) == 0
        assert conn.execute("SELECT count(*) FROM usage_rollup_jobs").fetchone()[0] == 500
        assert rollups.aggregate(conn, "jobs", "acme", NOV.start, NOV.end) == 500
        assert rollup_store.check(conn) == []


def test_figures_are_exact_at_every_moment_of_random_writes_retries_and_folds(db):
    rng = random.Random(7)
    accounts = ("acme", "globex", "initech")
    base = datetime(2026, 11, 1, tzinfo=UTC)
    written: list[tuple] = []
    with psycopg.connect(db) as reader:
        for step in range(40):
            action = rng.random()
            if action < 0.55:
                batch = [
                    row(
                        rng.choice(accounts),
                        rng.choice(("worker_seconds", "input_tokens")),
                        rng.choice(("0.1", "1.5", "12", "300.7")),
                        base + timedelta(hours=rng.randrange(24 * 29), minutes=rng.randrange(60)),
                        job=rng.choice((None, "j1", "j2", f"j{step}")),
                        plan=rng.choice(("growth", "scale")),
                    )
                    for _ in range(rng.randrange(1, 60))
                ]
                write(db, batch)
                written.extend(batch)
            elif action < 0.7 and written:
                write(db, rng.sample(written, min(len(written), 30)))  # retries of committed rows
            else:
                rollup_store.fold(reader, max_deltas=rng.choice((1, 3, 50_000)))  # partial and whole folds
            # whole-hour windows that cut days, so the daily, hourly and pending branches all contribute
            start = base + timedelta(hours=rng.randrange(0, 300))
            end = start + timedelta(hours=rng.randrange(1, 400))
            for account in accounts:
                assert live_totals(reader, account, start, end) == raw_totals(reader, account, start, end)
                assert live_totals(reader, account, NOV.start, NOV.end) == raw_totals(
                    reader, account, NOV.start, NOV.end
                )
            assert rollup_store.check(reader) == []
            reader.commit()
        assert rollup_store.fold(reader).deltas >= 0 and pending(reader) == 0
        assert rollup_store.check(reader) == []


def test_a_fold_that_dies_before_commit_loses_and_doubles_nothing(db):
    t = datetime(2026, 11, 5, 9, 0, tzinfo=UTC)
    write(db, [row("acme", "worker_seconds", "2.5", t, job="a"), row("acme", "worker_seconds", "1", t, job="b")])
    with psycopg.connect(db) as conn:
        before = live_totals(conn, "acme", NOV.start, NOV.end)
    victim = psycopg.connect(db)
    fold_sql = rollup_store.FOLD  # the fold's own statement, run by a process that is then killed
    victim.execute("SELECT pg_advisory_xact_lock(%s)", (rollup_store.FOLD_LOCK_ID,))
    victim.execute(fold_sql, {"limit": 50_000})
    pid = victim.info.backend_pid
    with psycopg.connect(db, autocommit=True) as admin:  # SIGTERM the backend mid-transaction (a crash)
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    with pytest.raises(psycopg.OperationalError):
        victim.execute("SELECT 1")
    victim.close()
    with psycopg.connect(db) as conn:
        assert pending(conn) == 1  # still pending: the delete rolled back with the upserts
        assert conn.execute("SELECT count(*) FROM usage_rollups_daily").fetchone()[0] == 0
        assert live_totals(conn, "acme", NOV.start, NOV.end) == before
        assert rollup_store.fold(conn).deltas == 1
        assert live_totals(conn, "acme", NOV.start, NOV.end) == before
        assert rollups.aggregate(conn, "jobs", "acme", NOV.start, NOV.end) == 2
        assert rollup_store.check(conn) == []


def test_an_aborted_ingest_transaction_leaves_no_delta(db):
    t = datetime(2026, 11, 5, 9, 0, tzinfo=UTC)
    with psycopg.connect(db) as conn:
        LedgerWriter(conn).write_usage([row("acme", "worker_seconds", "9", t)])
        conn.rollback()
        assert pending(conn) == 0 and live_totals(conn, "acme", NOV.start, NOV.end) == {}


def test_one_folder_at_a_time_and_a_rebuild_locks_folders_out(db):
    t = datetime(2026, 11, 7, 12, 0, tzinfo=UTC)
    write(db, [row("acme", "worker_seconds", "4", t, job="x")])
    holder = psycopg.connect(db)
    holder.execute("SELECT pg_advisory_xact_lock(%s)", (rollup_store.FOLD_LOCK_ID,))  # a folder (or rebuild) at work
    with psycopg.connect(db) as conn:
        assert rollup_store.fold(conn).locked_out  # returns at once, takes nothing
        assert pending(conn) == 1
    holder.rollback()
    holder.close()

    # a rebuild waits for a running fold, and a fold started during a rebuild is locked out
    write(db, [row("globex", "worker_seconds", "1", t, job="y")])
    rebuilding, results = threading.Event(), {}
    blocker = psycopg.connect(db)
    blocker.execute("LOCK TABLE usage_rollups_hourly IN ACCESS EXCLUSIVE MODE")  # holds the rebuild mid-way

    def rebuild():
        with psycopg.connect(db) as conn:
            rebuilding.set()
            results["rebuild"] = rollup_store.rebuild(conn)

    thread = threading.Thread(target=rebuild)
    thread.start()
    rebuilding.wait(5)
    with psycopg.connect(db, autocommit=True) as watcher:
        for _ in range(100):
            if watcher.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND objid = %s",
                (rollup_store.FOLD_LOCK_ID & 0xFFFFFFFF,),
            ).fetchone()[0]:
                break
            threading.Event().wait(0.05)
    with psycopg.connect(db) as conn:
        assert rollup_store.fold(conn).locked_out
    blocker.rollback()
    blocker.close()
    thread.join(30)
    assert results["rebuild"]["usage_rollup_deltas discarded"] == 2  # recomputed, not folded on top
    with psycopg.connect(db) as conn:
        assert pending(conn) == 0
        assert rollup_store.check(conn) == []
        assert live_totals(conn, "acme", NOV.start, NOV.end) == {"worker_seconds": (Decimal(4), 1)}


def test_concurrent_writers_and_a_folder_end_exact(db):
    base = datetime(2026, 11, 10, tzinfo=UTC)
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer(seed):
        rng = random.Random(seed)
        try:
            with psycopg.connect(db) as conn:
                w = LedgerWriter(conn)
                for _ in range(25):
                    batch = [
                        row(
                            rng.choice(("a1", "a2", "a3", "a4")),
                            "worker_seconds",
                            "0.3",
                            base + timedelta(minutes=rng.randrange(600)),
                            job=f"j{rng.randrange(50)}",
                        )
                        for _ in range(40)
                    ]
                    w.write_usage(batch)
                    conn.commit()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def folder():
        with psycopg.connect(db) as conn:
            while not stop.is_set():
                rollup_store.fold(conn, max_deltas=7)

    threads = [threading.Thread(target=writer, args=(s,)) for s in range(3)]
    fold_thread = threading.Thread(target=folder)
    fold_thread.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    stop.set()
    fold_thread.join(30)
    assert not errors
    with psycopg.connect(db) as conn:
        assert rollup_store.check(conn) == []
        for account in ("a1", "a2", "a3", "a4"):
            assert live_totals(conn, account, NOV.start, NOV.end) == raw_totals(conn, account, NOV.start, NOV.end)
        rollup_store.fold(conn)
        assert pending(conn) == 0 and rollup_store.check(conn) == []


def test_upgrading_a_ledger_the_old_trigger_maintained_keeps_its_rollups(fresh_db):
    database = resolve_database(fresh_db, data_dir=None)
    migrate.upgrade(database, "0004_operations")
    t = datetime(2026, 11, 3, 10, 0, tzinfo=UTC)
    insert_as_an_old_writer(
        fresh_db, [row("acme", "worker_seconds", "3", t, job="old"), row("acme", "input_tokens", 7, t)]
    )
    with psycopg.connect(fresh_db) as conn:  # the old trigger upserted the rollups directly
        assert conn.execute("SELECT count(*) FROM usage_rollups_daily").fetchone()[0] == 2
    migrate.upgrade(database)
    write(fresh_db, [row("acme", "worker_seconds", "2", t, job="new")])
    with psycopg.connect(fresh_db) as conn:
        assert pending(conn) == 1
        assert rollup_store.check(conn) == []
        assert live_totals(conn, "acme", NOV.start, NOV.end) == {
            "worker_seconds": (Decimal(5), 2),
            "input_tokens": (Decimal(7), 1),
        }
        assert rollups.aggregate(conn, "jobs", "acme", NOV.start, NOV.end) == 2
    # and back: the downgrade folds what is pending before the old trigger returns
    head = importlib.import_module("spanmeter.billing.ledger.migrations.versions.0005_rollup_deltas")
    from alembic import command

    from spanmeter.billing.ledger.migrate import _config

    engine = database.engine()
    with engine.begin() as connection:
        command.downgrade(_config(connection), head.down_revision)
    engine.dispose()
    with psycopg.connect(fresh_db) as conn:
        assert conn.execute("SELECT to_regclass('usage_rollup_deltas')").fetchone()[0] is None
        (quantity,) = conn.execute(
            "SELECT sum(quantity) FROM usage_rollups_daily WHERE account_id = 'acme' AND meter_code = 'worker_seconds'"
        ).fetchone()
        assert quantity == Decimal(5)
        jobs = conn.execute("SELECT job_id FROM usage_rollup_jobs ORDER BY 1").fetchall()
        assert jobs == [("new",), ("old",)]


def test_narrowing_the_job_sets_keeps_every_folded_job_and_new_jobs_join_their_sets(fresh_db):
    """Migration 0009 moves folded jobs into (set, job) rows: counts per account and month are unchanged,
    a job folded again adds nothing, and the view keeps the old columns."""
    database = resolve_database(fresh_db, data_dir=None)
    migrate.upgrade(database, "0008_usage_producer")
    dec = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)
    t = datetime(2026, 11, 3, 10, 0, tzinfo=UTC)
    folded = [row("acme", "worker_seconds", "1", t, job=f"j{i}") for i in range(5)]
    folded += [row("acme", "worker_seconds", "1", dec, job="j0"), row("globex", "worker_seconds", "1", t, job="j0")]
    insert_as_an_old_writer(fresh_db, folded)  # today's writer needs the partitioned ledger (0010)
    with psycopg.connect(fresh_db) as conn:
        conn.execute("SELECT * FROM spanmeter_fold_rollups(1000)")
        before = conn.execute("SELECT * FROM usage_rollup_jobs ORDER BY 1, 2, 3, 4").fetchall()
    assert len(before) == 7
    migrate.upgrade(database)
    with psycopg.connect(fresh_db) as conn:
        assert conn.execute("SELECT * FROM usage_rollup_jobs ORDER BY 1, 2, 3, 4").fetchall() == before
        assert conn.execute("SELECT count(*) FROM usage_job_sets").fetchone()[0] == 3  # acme Nov, acme Dec, globex
        assert conn.execute("SELECT count(*) FROM usage_job_set_members").fetchone()[0] == 7
    write(fresh_db, [row("acme", "worker_seconds", "1", t, job="j4"), row("acme", "worker_seconds", "1", t, job="j9")])
    write(fresh_db, [row("initech", "worker_seconds", "1", t, job="j0")])  # a set the fold creates
    with psycopg.connect(fresh_db) as conn:
        assert rollups.aggregate(conn, "jobs", "acme", NOV.start, NOV.end) == 6  # j0..j4 and j9, pending or not
        result = rollup_store.fold(conn)
        assert result.new_jobs == 2  # j9 for acme, j0 for initech; j4 was there
        assert rollups.aggregate(conn, "jobs", "acme", NOV.start, NOV.end) == 6
        assert rollups.aggregate(conn, "jobs", "initech", NOV.start, NOV.end) == 1
        assert conn.execute("SELECT count(*) FROM usage_job_sets").fetchone()[0] == 4
        # folding into existing sets draws no set number: the integer must not run out fold by fold
        (counter,) = conn.execute("SELECT last_value FROM usage_job_sets_set_id_seq").fetchone()
    for _ in range(3):
        write(fresh_db, [row("acme", "worker_seconds", "1", t, job=f"again-{uuid.uuid4()}")])
        with psycopg.connect(fresh_db) as conn:
            assert rollup_store.fold(conn).new_jobs == 1
    with psycopg.connect(fresh_db) as conn:
        assert conn.execute("SELECT last_value FROM usage_job_sets_set_id_seq").fetchone()[0] == counter
        assert rollup_store.check(conn) == []
        rebuilt = rollup_store.rebuild(conn)
        assert rebuilt["usage_rollup_jobs"] == 12
        assert rollups.aggregate(conn, "jobs", "acme", NOV.start, NOV.end) == 9
        assert rollup_store.check(conn) == []
