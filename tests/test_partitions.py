"""The partitioned ledger (migration 0010) on a real PostgreSQL: an existing ledger converted without a rewrite,
every partition append-only, months created ahead, a span of a month without a partition kept and replayable,
readers that prune partitions, and archive / restore of closed months that double-bills nothing."""

from __future__ import annotations

import gzip
import hashlib
import itertools
import json
import subprocess
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import psycopg
import pytest
from opentelemetry.sdk.trace.export import SpanExportResult

from spanmeter.billing import invoices, reconcile, subscriptions
from spanmeter.billing.ledger import archive, migrate, partitions, rollup_store
from spanmeter.billing.ledger.database import resolve_database
from spanmeter.billing.ledger.usage_store import usage_statement
from spanmeter.billing.ledger.writer import LedgerWriter
from spanmeter.billing.periods import Period
from support import SPANMETER, SpanFactory, exporter, insert_as_an_old_writer, ledger

OCT, NOV, DEC = Period(2026, 10), Period(2026, 11), Period(2026, 12)
MS = 1_000_000
_keys = itertools.count(1)


# the rollup columns before 0014 added the provider (the rows of a ledger without providers are unchanged by it)
ROLLUP_COLUMNS = (
    "account_id, bucket_start, meter_code, meter_version, plan_code, dimension, quantity, events, max_quantity,"
    " latest_at, latest_quantity"
)


def usage(account, quantity, when, *, meter="worker_seconds", job=None):
    micros = int(when.timestamp()) * 1_000_000 + when.microsecond
    key = uuid.UUID(int=next(_keys) + (uuid.uuid4().int >> 64 << 64)).hex
    unit = "s" if meter.endswith("seconds") else "{token}"
    return (micros, key, account, job, "growth", meter, 1, str(quantity), unit, "ab" * 16, "cd" * 8, "{}")


def write(db, rows):
    with psycopg.connect(db) as conn:
        result = LedgerWriter(conn).write_usage(rows)
        conn.commit()
        return result


def month_partition(moment: datetime) -> str:
    return f"usage_events_{moment:%Y_%m}"


@pytest.fixture
def db(fresh_db):
    migrate.upgrade(resolve_database(fresh_db, data_dir=None))
    return fresh_db


def test_a_populated_ledger_becomes_a_partition_without_a_rewrite(fresh_db):
    database = resolve_database(fresh_db, data_dir=None)
    migrate.upgrade(database, "0009_narrow_job_sets")
    t = datetime(2026, 10, 20, 12, 0, tzinfo=UTC)
    old = [usage(f"acct-{i % 7}", Decimal(i) / 8, t + timedelta(minutes=i)) for i in range(3000)]
    insert_as_an_old_writer(fresh_db, old)
    (filenode,) = ledger(fresh_db, "SELECT pg_relation_filenode('usage_events')")[0]
    with psycopg.connect(fresh_db) as conn:
        rollup_store.fold(conn)
        conn.commit()
        daily_before = conn.execute(f"SELECT {ROLLUP_COLUMNS} FROM usage_rollups_daily ORDER BY 1, 2, 3").fetchall()

    migrate.upgrade(database)

    legacy = "usage_events_before_2026_11"  # the month after its latest row (Oct 22)
    assert ledger(fresh_db, f"SELECT pg_relation_filenode('{legacy}')") == [(filenode,)]  # the same file
    assert ledger(fresh_db, "SELECT relkind FROM pg_class WHERE relname = 'usage_events'") == [("p",)]
    assert ledger(fresh_db, f"SELECT count(*), sum(quantity) FROM {legacy}") == [
        (3000, sum(Decimal(r[7]) for r in old))
    ]
    with psycopg.connect(fresh_db) as conn:
        listed = partitions.list_partitions(conn)
        names = [p.name for p in listed]
        now = datetime.now(UTC)
        expected = [legacy] + [
            month_partition(partitions.months_after(datetime(2026, 11, 1, tzinfo=UTC), i))
            for i in range((now.year - 2026) * 12 + now.month - 11 + partitions.MONTHS_AHEAD + 1)
        ]
        assert names == expected
        assert listed[0].from_at is None and listed[0].to_at == datetime(2026, 11, 1, tzinfo=UTC)
        # the old table's index and key serve the parent's: no second copy was built
        assert conn.execute("SELECT count(*) FROM pg_index WHERE indrelid = %s::regclass", (legacy,)).fetchone() == (2,)
        assert (
            conn.execute(f"SELECT {ROLLUP_COLUMNS} FROM usage_rollups_daily ORDER BY 1, 2, 3").fetchall()
            == daily_before
        )
        assert rollup_store.check(conn) == []
    # a retry of an old row is still a duplicate: the primary key reaches into the old table
    again = write(fresh_db, [*old[:10], usage("acct-new", 1, t)])
    assert again.inserted == 1 and again.outside == ()
    assert ledger(fresh_db, "SELECT count(*) FROM usage_events") == [(3001,)]
    # and back: the downgrade copies every row into one plain table again
    with resolve_database(fresh_db, data_dir=None).engine().connect() as connection:
        from alembic import command

        from spanmeter.billing.ledger.migrate import _config

        command.downgrade(_config(connection), "0009_narrow_job_sets")
        connection.commit()
    assert ledger(fresh_db, "SELECT relkind FROM pg_class WHERE relname = 'usage_events'") == [("r",)]
    assert ledger(fresh_db, "SELECT count(*) FROM usage_events") == [(3001,)]


@pytest.mark.parametrize(
    "statement",
    [
        "DELETE FROM {month}",
        "UPDATE {month} SET quantity = 0",
        "TRUNCATE {month}",
        "TRUNCATE {legacy}",
        "DELETE FROM {legacy}",
        "ALTER TABLE usage_events DETACH PARTITION {month}",
        "ALTER TABLE usage_events DETACH PARTITION {legacy}",
        "DROP TABLE {month}",
    ],
)
def test_no_partition_can_be_changed_or_taken_away_even_by_a_superuser(db, statement):
    now = datetime.now(UTC)
    write(db, [usage("acme", 3, now - timedelta(minutes=1)), usage("acme", 4, datetime(2026, 10, 1, tzinfo=UTC))])
    legacy = ledger(db, "SELECT partition_name FROM usage_event_partitions WHERE NOT isfinite(from_at)")[0][0]
    sql = statement.format(month=month_partition(now), legacy=legacy)
    with (
        psycopg.connect(db) as conn,  # the test server's superuser
        pytest.raises(psycopg.errors.InsufficientPrivilege, match=r"append-only|spanmeter db archive"),
    ):
        conn.execute(sql)
    assert ledger(db, "SELECT count(*), sum(quantity) FROM usage_events") == [(2, Decimal(7))]


@pytest.mark.parametrize(
    "statement",
    [
        "DELETE FROM {month}",
        "TRUNCATE {month}",
        "INSERT INTO {month} SELECT * FROM usage_events",  # would bypass the parent's rollup-delta trigger
        "ALTER TABLE usage_events DETACH PARTITION {month}",
        "ALTER TABLE {month} DISABLE TRIGGER ALL",
        "DROP TABLE {month}",
        "SELECT spanmeter_attach_usage_partition('usage_events_2099_01', '2099-01-01', '2099-02-01')",
        "DELETE FROM usage_event_partitions",
    ],
)
def test_the_writer_has_no_route_to_a_partition(db, statement):
    write(db, [usage("acme", 3, datetime.now(UTC) - timedelta(minutes=1))])
    with psycopg.connect(db) as conn:
        conn.execute("SET ROLE spanmeter_writer")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(statement.format(month=month_partition(datetime.now(UTC))))
    assert ledger(db, "SELECT count(*) FROM usage_events") == [(1,)]


def test_months_are_created_ahead_once_by_the_writer_and_never_over_an_archived_month(db):
    later = datetime.now(UTC) + timedelta(days=200)
    results: list[list[str]] = []

    def create() -> None:
        with psycopg.connect(db) as conn:
            conn.execute("SET ROLE spanmeter_writer")  # what serve runs as
            results.append(partitions.ensure(conn, now=later))
            conn.commit()

    threads = [threading.Thread(target=create) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    created = sorted(itertools.chain.from_iterable(results))
    assert len(created) == len(set(created)) >= 6  # each month once, whoever got there first
    with psycopg.connect(db) as conn:
        cover = partitions.coverage(conn)
        assert cover.to_at == partitions.months_after(partitions.month_start(later), partitions.MONTHS_AHEAD + 1)
        owners = conn.execute(
            "SELECT DISTINCT pg_get_userbyid(c.relowner) FROM usage_event_partitions p "
            "JOIN pg_class c ON c.oid = to_regclass(p.partition_name)"
        ).fetchall()
        assert len(owners) == 1 and owners[0][0] != "spanmeter_writer"  # the ledger's owner, not serve's role
        # every partition carries the append-only trigger
        assert conn.execute(
            "SELECT count(*) FROM usage_event_partitions p WHERE NOT EXISTS (SELECT FROM pg_trigger t "
            "WHERE t.tgrelid = to_regclass(p.partition_name) AND t.tgname = p.partition_name || '_append_only')"
        ).fetchone() == (0,)
        assert partitions.ensure(conn, now=later) == []


def test_a_span_of_a_month_without_a_partition_is_kept_then_billed_once_by_replay(fresh_db, make_collector):
    """Serve cannot create months (its role lost EXECUTE on the function: the keeper fails); a producer whose
    clock runs months ahead sends spans of a month without a partition. They are kept, counted, replayable;
    the end gauge still says when the newest partition ends, so the alert would fire as it nears."""
    migrate.upgrade(resolve_database(fresh_db, data_dir=None))
    function = "spanmeter_create_usage_partitions(timestamptz, timestamptz)"
    _run(fresh_db, f"REVOKE EXECUTE ON FUNCTION {function} FROM spanmeter_writer")
    skew = str(400 * 86400)  # the clock skew serve accepts
    collector = make_collector(fresh_db, SPANMETER_MAX_CLOCK_SKEW_SECONDS=skew)
    f = SpanFactory({"service.name": "far-svc"})
    far = time.time_ns() + 200 * 86400 * 10**9  # ~6.5 months ahead: beyond the 2 months the migration made
    spans = [
        f.span(
            "run/task",
            {"celery.action": "run", "account_id": "acct-far", "job_id": f"j{i}"},
            2000 * MS,
            end_ns=far + i * MS,
        )
        for i in range(3)
    ]
    near = f.span("run/task", {"celery.action": "run", "account_id": "acct-far", "job_id": "now"}, 1000 * MS)
    assert exporter(collector.endpoint).export([*spans, near]) == SpanExportResult.SUCCESS
    assert ledger(fresh_db, "SELECT count(*) FROM usage_events") == [(1,)]  # the rest of the request committed
    assert ledger(fresh_db, "SELECT reason, count(*) FROM rejected_spans GROUP BY 1") == [("no_partition", 3)]
    message = ledger(fresh_db, "SELECT error_message FROM rejected_spans LIMIT 1")[0][0]
    assert "no partition" in message and "spanmeter db partitions --create" in message
    metrics = collector.metrics()
    assert metrics['spanmeter_spans_rejected_total{reason="no_partition"}'] == 3
    assert metrics["spanmeter_ledger_partition_errors_total"] >= 1
    end = ledger(fresh_db, "SELECT extract(epoch FROM to_at) FROM usage_event_coverage")[0][0]
    assert metrics["spanmeter_ledger_partitions_end_timestamp_seconds"] == float(end)
    assert metrics.get('spanmeter_usage_events_duplicate_total{meter="worker_seconds"}', 0) == 0

    env = {"SPANMETER_MAX_CLOCK_SKEW_SECONDS": skew}
    replay = [SPANMETER, "dead-letter", "replay", "--reason", "no_partition", "--database-url", fresh_db]
    run = subprocess.run(replay, capture_output=True, text=True, timeout=60, env={**_env(), **env})
    assert run.returncode == 0, run.stderr
    assert "0 billed" in run.stdout and "no_partition x3" in run.stdout  # still no month: still pending
    assert ledger(fresh_db, "SELECT count(*) FROM dead_letter_replays") == [(0,)]

    _run(fresh_db, f"GRANT EXECUTE ON FUNCTION {function} TO spanmeter_writer")
    create = [SPANMETER, "db", "partitions", "--create", "--months-ahead", "8", "--database-url", fresh_db]
    made = subprocess.run(create, capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    assert month_partition(datetime.fromtimestamp(far / 1e9, UTC)) in made.stdout
    run = subprocess.run(replay, capture_output=True, text=True, timeout=60, env={**_env(), **env})
    assert run.returncode == 0 and "3 billed" in run.stdout, run.stdout + run.stderr
    run = subprocess.run(replay, capture_output=True, text=True, timeout=60, env={**_env(), **env})
    assert ledger(fresh_db, "SELECT count(*) FROM usage_events") == [(4,)]  # once, however often replayed


def test_serve_keeps_as_many_months_ready_as_the_clock_skew_it_accepts():
    assert partitions.months_ahead_for(300) == partitions.MONTHS_AHEAD
    assert partitions.months_ahead_for(90 * 86400) == 5  # a span 90 days ahead has its month
    assert partitions.months_ahead_for(10_000 * 86400) == 24  # the function's cap


def test_the_months_covered_do_not_change_under_a_writer_transaction(db):
    """A writer's INSERT and its look at what it left out must see the same months: creating one waits for
    the writer transactions in flight (they hold the partition lock shared)."""
    later = datetime.now(UTC) + timedelta(days=120)
    with psycopg.connect(db) as writer_conn:
        written = LedgerWriter(writer_conn).write_usage([usage("acme", 1, later)])
        assert written.inserted == 0 and [r for _k, r in written.outside] == ["no_partition"]
        done = threading.Event()

        def create() -> None:
            with psycopg.connect(db) as conn:
                partitions.ensure(conn, now=later)
                conn.commit()
            done.set()

        creator = threading.Thread(target=create)
        creator.start()
        assert not done.wait(1.0)  # waits for the writer's transaction
        writer_conn.commit()
        assert done.wait(10)
        creator.join()
    assert write(db, [usage("acme", 1, later)]).inserted == 1  # the next batch sees the new month


def test_the_partition_guard_leaves_other_ddl_alone_and_refuses_every_detach(db):
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("CREATE ROLE guard_other LOGIN")
        conn.execute("CREATE SCHEMA other AUTHORIZATION guard_other")
        conn.execute("SET ROLE guard_other")
        conn.execute("CREATE TABLE other.t (a int)")
        conn.execute("ALTER TABLE other.t ADD COLUMN b int")  # another role's DDL is checked, not refused
        conn.execute("DROP TABLE other.t")
        conn.execute("RESET ROLE")
        month = month_partition(datetime.now(UTC))
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="spanmeter db archive"):
            conn.execute(f"ALTER TABLE usage_events DETACH PARTITION {month} CONCURRENTLY")
        assert conn.execute(  # refused before its first step: nothing is left half-detached
            "SELECT count(*) FROM pg_inherits WHERE inhparent = 'usage_events'::regclass AND inhdetachpending"
        ).fetchone() == (0,)
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="may not be dropped"):
            conn.execute("DROP TABLE usage_events CASCADE")
        assert write(db, [usage("acme", 2, datetime.now(UTC) - timedelta(minutes=1))]).inserted == 1


def test_partitions_are_never_created_further_than_24_months_ahead(db):
    with psycopg.connect(db) as conn, pytest.raises(psycopg.errors.InvalidParameterValue, match="24 months"):
        partitions.ensure(conn, now=datetime(2060, 1, 1, tzinfo=UTC))
    assert ledger(db, "SELECT count(*) <= 5 FROM usage_event_partitions") == [(True,)]


def _run(db: str, statement: str) -> None:
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(statement)


def _env() -> dict[str, str]:
    import os

    return dict(os.environ)


def _relations(conn: psycopg.Connection, sql: str, params: dict | tuple = ()) -> set[str]:
    """The tables a statement's plan reads (partitions the planner did not prune)."""
    (plan,) = conn.execute(f"EXPLAIN (FORMAT JSON) {sql}", params).fetchone()
    found: set[str] = set()

    def walk(node: dict) -> None:
        if "Relation Name" in node:
            found.add(node["Relation Name"])
        for child in node.get("Plans", ()):
            walk(child)

    walk(plan[0]["Plan"])
    return found


def test_the_raw_readers_read_only_their_months_partition(db):
    with psycopg.connect(db) as conn:
        partitions.ensure(conn, now=datetime(2027, 6, 1, tzinfo=UTC))
        conn.commit()
    write(db, [usage("acme", 1, datetime(2026, 12, 3, tzinfo=UTC)), usage("acme", 2, datetime(2027, 3, 3, tzinfo=UTC))])
    month = "usage_events_2026_12"
    with psycopg.connect(db) as conn:
        # spanmeter usage
        statement = usage_statement("acme", DEC.start, DEC.end)
        compiled = statement.compile(dialect=_pg_dialect(), compile_kwargs={"literal_binds": True})
        assert _relations(conn, str(compiled)) == {month}
        # rollups check and reconcile (which runs it): the raw recomputation of the window
        window = {"start": DEC.start, "end": DEC.end}
        for sql in rollup_store.raw_readers():
            assert {r for r in _relations(conn, sql, window) if r.startswith("usage_events")} == {month}, sql
        # the whole ledger is read only where there is no window
        assert len(_relations(conn, "SELECT count(*) FROM usage_events")) >= 7


def _pg_dialect():
    from sqlalchemy.dialects import postgresql

    return postgresql.dialect()


def _finalize(db, account, period, now):
    with psycopg.connect(db) as conn:
        invoices.finalize_invoice(conn, account, period, now=now, finalized_by="test")
        conn.commit()


def _sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_closed_months_are_archived_to_checked_files_and_restored_exactly(db, tmp_path):
    with psycopg.connect(db) as conn:
        subscriptions.set_subscription(
            conn, account_id="acme", plan_code="growth", pricing_version="v2_compute",
            valid_from=OCT.start, valid_to=None, created_by="test",
        )  # fmt: skip
        conn.commit()
    legacy = ledger(db, "SELECT partition_name FROM usage_event_partitions WHERE NOT isfinite(from_at)")[0][0]
    cutover = ledger(db, "SELECT to_at FROM usage_event_partitions WHERE NOT isfinite(from_at)")[0][0]
    first_month = month_partition(cutover)
    old = [usage("acme", Decimal(i) / 4, datetime(2026, 10, 5, tzinfo=UTC) + timedelta(hours=i)) for i in range(400)]
    monthly = [usage("acme", i + 1, cutover + timedelta(hours=i)) for i in range(50)]
    write(db, old + monthly)
    with psycopg.connect(db) as conn:
        rollup_store.fold(conn)
        conn.commit()
    months = sorted({Period(r.year, r.month) for r in (datetime.fromtimestamp(u[0] / 1e6, UTC) for u in old + monthly)})
    much_later = partitions.months_after(cutover, 3)
    with psycopg.connect(db) as conn:
        invoice_before = invoices.build_invoice(conn, "acme", months[0]).to_dict()

    def run_archive(before, now=much_later, max_age=30 * 86400):
        with psycopg.connect(db) as conn:
            return archive.archive(
                conn, before, tmp_path, max_span_age_seconds=max_age, max_clock_skew_seconds=300, now=now
            )

    # refused while a month may still receive spans, then while its invoices are not finalized
    with pytest.raises(archive.ArchiveError, match="may still receive spans"):
        run_archive(cutover, now=cutover + timedelta(days=3))
    with pytest.raises(archive.ArchiveError, match="without a finalized invoice"):
        run_archive(cutover)
    assert not list(tmp_path.glob("*.copy.gz"))
    for period in months:
        _finalize(db, "acme", period, now=much_later)

    done = run_archive(partitions.months_after(cutover, 1))
    assert [a.partition for a in done] == [legacy, first_month]
    for a, rows in zip(done, (old, monthly), strict=True):
        assert a.rows == len(rows) and _sha256(a.data_file) == a.sha256
        manifest = json.loads(a.manifest.read_text())
        assert (manifest["rows"], manifest["sha256"], manifest["partition"]) == (len(rows), a.sha256, a.partition)
        lines = gzip.decompress(a.data_file.read_bytes()).decode().splitlines()
        assert len(lines) == len(rows) and sorted(line.split("\t")[1].replace("-", "") for line in lines) == sorted(
            r[1] for r in rows
        )
    assert ledger(db, "SELECT count(*) FROM usage_events") == [(0,)]
    assert ledger(db, "SELECT action, partition_name, row_count FROM usage_partition_archives ORDER BY archive_id") == [
        ("archived", legacy, 400),
        ("archived", first_month, 50),
    ]
    with psycopg.connect(db) as conn:
        # finalized invoices still explain themselves: the rollups and the stored documents stay
        assert invoices.build_invoice(conn, "acme", months[0]).to_dict()["lines"] == invoice_before["lines"]
        assert invoices.finalized_invoice(conn, "acme", months[0]) is not None
        assert rollup_store.check(conn) == []  # attached months only
        rollup_store.rebuild(conn)
        assert invoices.build_invoice(conn, "acme", months[0]).to_dict()["lines"] == invoice_before["lines"]
        assert reconcile.reconcile(conn, months[0]).delta == 0
    # a span of an archived month again: never billed twice, kept for a decision
    again = write(db, [old[0], usage("acme", 9, datetime(2026, 10, 6, tzinfo=UTC))])
    assert again.inserted == 0 and {reason for _key, reason in again.outside} == {"archived_period"}
    # ... nor at an end time in a live month: its key stays in the key registry after the archive
    live = partitions.months_after(cutover, 1) + timedelta(days=1)
    moved = write(db, [(int(live.timestamp()) * 1_000_000, *old[0][1:])])
    assert moved.inserted == 0 and moved.outside == ()
    [held] = moved.conflicts
    assert (held.idempotency_key, held.account_id, held.occurred_at_us) == (old[0][1], None, old[0][0])
    assert "archived month" in held.describe()
    with psycopg.connect(db) as conn, pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match="archived"):
        partitions.ensure(conn, back_to=datetime(2026, 10, 1, tzinfo=UTC))

    # spanmeter usage says when its window reaches into archived months (their raw rows are in the files)
    usage_cli = [SPANMETER, "usage", "--account", "acme", "--from", "2026-10-01", "--to", "2026-12-01"]
    said = subprocess.run([*usage_cli, "--database-url", db], capture_output=True, text=True, timeout=60)
    assert said.returncode == 0 and "was archived" in said.stderr, said.stdout + said.stderr
    # no downgrade while a month is archived: the plain table would take its spans again (one transaction, as
    # an operator runs it: the later migrations' downgrades roll back with the refusal)
    with resolve_database(db, data_dir=None).engine().begin() as connection:
        from alembic import command

        from spanmeter.billing.ledger.migrate import _config

        with pytest.raises(Exception, match="restore them"):
            command.downgrade(_config(connection), "0009_narrow_job_sets")
    # a manifest is only a pointer: bounds, columns, checksum and rows are the ledger's own record
    tampered = tmp_path / "tampered"
    tampered.mkdir()
    for change in ({"from": "2026-06-01T00:00:00+00:00"}, {"columns": "swap"}):
        manifest = json.loads(done[1].manifest.read_text())
        if change.get("columns") == "swap":
            cols = manifest["columns"]
            i, j = cols.index("account_id"), cols.index("unit")
            cols[i], cols[j] = cols[j], cols[i]
        else:
            manifest.update(change)
        (tampered / done[1].manifest.name).write_text(json.dumps(manifest))
        (tampered / done[1].data_file.name).write_bytes(done[1].data_file.read_bytes())
        if "from" in change:  # bounds are not the manifest's to say: kept for the restore below
            widened = tampered / "widened"
            widened.mkdir()
            (widened / done[1].manifest.name).write_text(json.dumps(manifest))
            (widened / done[1].data_file.name).write_bytes(done[1].data_file.read_bytes())
            continue
        with psycopg.connect(db) as conn, pytest.raises(archive.ArchiveError, match="does not describe the archive"):
            archive.restore(conn, tampered / done[1].manifest.name)
    assert ledger(db, "SELECT count(*) FROM usage_events") == [(0,)]

    # restore: the newest archived month first; a damaged file is refused and changes nothing
    with psycopg.connect(db) as conn, pytest.raises(archive.ArchiveError, match="newest archived month first"):
        archive.restore(conn, done[0].manifest)
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / done[1].manifest.name).write_text(done[1].manifest.read_text())
    (damaged / done[1].data_file.name).write_bytes(gzip.compress(b"\n".join([b"x"] * 50) + b"\n"))
    with psycopg.connect(db) as conn, pytest.raises(archive.ArchiveError, match="does not match its manifest"):
        archive.restore(conn, damaged / done[1].manifest.name)
    for a, manifest_path in ((done[1], tmp_path / "tampered" / "widened" / done[1].manifest.name), (done[0], None)):
        with psycopg.connect(db) as conn:
            restored = archive.restore(conn, manifest_path or a.manifest)
        assert (restored.partition, restored.rows, restored.from_at) == (a.partition, a.rows, a.from_at)
        if manifest_path is not None:  # the widened manifest said June: the ledger's record said otherwise
            assert ledger(db, f"SELECT from_at FROM usage_event_partitions WHERE partition_name = '{a.partition}'") == [
                (a.from_at,)
            ]
            late = write(db, [usage("acme", 1, datetime(2026, 10, 7, tzinfo=UTC))])  # still archived: refused
            assert late.inserted == 0 and [r for _k, r in late.outside] == ["archived_period"]
    assert ledger(db, "SELECT count(*), sum(quantity) FROM usage_events") == [
        (450, sum(Decimal(r[7]) for r in old + monthly))
    ]
    with psycopg.connect(db) as conn:
        assert rollup_store.check(conn) == []  # the restored rows match the rollups that never left
        assert partitions.coverage(conn).from_at is None
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(f"DELETE FROM {first_month}")
    assert write(db, old[:5]).inserted == 0  # the restored keys are seen again


def test_the_cli_names_what_is_wrong_with_an_archive_request(db, tmp_path):
    def cli(*args):
        return subprocess.run(
            [SPANMETER, "db", *args, "--database-url", db], capture_output=True, text=True, timeout=60
        )

    bad = cli("archive", "--before", "2026-13", "--to", str(tmp_path))
    assert bad.returncode == 2 and "--before '2026-13'" in bad.stderr and "YYYY-MM" in bad.stderr
    early = cli("archive", "--before", f"{datetime.now(UTC) + timedelta(days=40):%Y-%m}", "--to", str(tmp_path))
    assert early.returncode == 2 and "may still receive spans" in early.stderr and "Traceback" not in early.stderr
    missing = cli("restore", str(tmp_path / "nope.json"))
    assert missing.returncode == 2 and "cannot read the archive manifest" in missing.stderr
    listing = cli("partitions")
    assert listing.returncode == 0 and "MINVALUE" in listing.stdout and "days ahead" in listing.stdout
