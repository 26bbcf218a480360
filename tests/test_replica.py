"""Reads off the primary, on a real streaming replica: a primary and a hot standby built with the pgserver
wheel's own PostgreSQL 16 (``initdb``, ``pg_basebackup -R``, ``pg_ctl``; see :mod:`replication`), usage
written through the ledger's writer and folded by the compactor's fold.

- once replay has caught up (by LSN), usage, draft invoices and exports read through
  ``--read-database-url`` equal the primary's;
- while replay is paused and the primary keeps writing, ``spanmeter serve`` reports the lag
  (``spanmeter_read_replica_*``), readers of the replica get the older figures and a note saying so,
  and ``invoice --finalize`` still rates what the primary holds (it never opens the replica); after resume
  the lag is 0;
- a recovery conflict cancelling a standby read is retried on a new snapshot, a bounded number of times;
- an unreachable or unusable replica is one message naming the setting, never a traceback.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest
from prometheus_client import CollectorRegistry
from replication import StreamingPair

from spanmeter.billing import rollups, subscriptions
from spanmeter.billing.ledger import migrate, partitions, rollup_store
from spanmeter.billing.ledger.database import resolve_database
from spanmeter.billing.ledger.replica import (
    Databases,
    ReplicaConflict,
    read_connection,
    replica_database,
)
from spanmeter.billing.ledger.writer import LedgerWriter
from spanmeter.billing.periods import Period
from spanmeter.collector.metrics import ReadReplicaMetrics
from spanmeter.collector.replica_lag import ReplicaLagMonitor
from support import SPANMETER, Collector, wait_until

pytestmark = pytest.mark.integration  # a streaming replica pair

NOW = datetime.now(UTC)
THIS = Period.containing(NOW)
LAST = THIS.previous()  # finalizable at once with a drift window of 0
_keys = itertools.count(1)
_UNITS = {"worker_seconds": "s", "gpu_seconds": "s", "api_requests": "{request}"}


def row(account: str, meter: str, quantity: str, when: datetime, job: str = "job-1") -> tuple:
    """A usage row as the collector's exporter hands it to the writer (fresh idempotency key)."""
    micros = int(when.timestamp()) * 1_000_000 + when.microsecond
    key = uuid.UUID(int=next(_keys) + (uuid.uuid4().int >> 64 << 64)).hex
    unit = _UNITS.get(meter, "{token}")
    return (micros, key, account, job, "growth", meter, 1, quantity, unit, "ab" * 16, "cd" * 8, "{}")


def write(conninfo: str, rows: list[tuple], fold: bool = False) -> None:
    with psycopg.connect(conninfo) as conn:
        written = LedgerWriter(conn).write_usage(rows)
        conn.commit()
        assert (written.inserted, written.outside) == (len(rows), ())  # every row landed in a partition
        if fold:
            rollup_store.fold(conn)  # what serve's compactor does every second
            conn.commit()


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StreamingPair]:
    """The primary (migrated, with usage of last month and this one) and its streaming standby."""
    servers = StreamingPair(tmp_path_factory.mktemp("replica") / "pg")
    try:
        servers.start()
        primary = servers.primary.conninfo()
        migrate.upgrade(resolve_database(primary, Path(".")))
        with psycopg.connect(primary) as conn:
            partitions.ensure(conn, back_to=LAST.start)  # the ledger is partitioned by month: last month too
            for account, plan in (("acme", "growth"), ("globex", "scale")):
                subscriptions.set_subscription(
                    conn, account_id=account, plan_code=plan, pricing_version="v2_compute",
                    valid_from=LAST.start, created_by="test_replica",
                )  # fmt: skip
            conn.commit()
        day = LAST.start + timedelta(days=3, hours=10)
        write(primary, [row("acme", "worker_seconds", "1.5", day + timedelta(minutes=i)) for i in range(40)], fold=True)
        write(primary, [row("globex", "input_tokens", "1200", day), row("globex", "gpu_seconds", "30.0", day)])
        write(primary, [row("acme", "output_tokens", "300", day + timedelta(days=2))])  # left pending, unfolded
        write(primary, [row(a, "api_requests", "1", THIS.start + timedelta(hours=1)) for a in ("acme", "globex")])
        servers.wait_for_replay()
        yield servers
    finally:
        servers.stop()
        assert not servers.primary.running() and not servers.standby.running(), "a PostgreSQL server outlived the test"


def spanmeter(
    pair: StreamingPair, *args: str, replica: str | None = "standby", **env: str
) -> subprocess.CompletedProcess:
    """The CLI on the primary, reading the standby (``replica="standby"``), another read URL, or none."""
    read_url = pair.standby.conninfo() if replica == "standby" else replica
    flags = ["--database-url", pair.primary.conninfo(), *(["--read-database-url", read_url] if read_url else [])]
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SPANMETER_") or k == "SPANMETER_DEBUG"}
    return subprocess.run([SPANMETER, *args, *flags], capture_output=True, text=True, timeout=120, env={**clean, **env})


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, (result.args, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    return result.stdout


def usage_doc(pair: StreamingPair, account: str, replica: str | None = "standby") -> dict:
    args = ("usage", "--account", account, "--from", LAST.start.isoformat(), "--to", THIS.end.isoformat())
    return json.loads(ok(spanmeter(pair, *args, "--format", "json", replica=replica)))


def invoice_doc(pair: StreamingPair, account: str, replica: str | None = "standby") -> dict:
    args = ("invoice", "--account", account, "--period", str(LAST), "--format", "json")
    return json.loads(ok(spanmeter(pair, *args, replica=replica)))


def raw_total(conninfo: str, account: str, meter: str) -> Decimal:
    with psycopg.connect(conninfo) as conn:
        return conn.execute(
            "SELECT coalesce(sum(quantity), 0) FROM usage_events WHERE account_id = %s AND meter_code = %s",
            (account, meter),
        ).fetchone()[0]


def test_figures_read_on_the_replica_equal_the_primarys_once_replay_caught_up(pair):
    pair.wait_for_replay()
    for account in ("acme", "globex"):
        on_replica, on_primary = usage_doc(pair, account), usage_doc(pair, account, replica=None)
        assert on_replica == on_primary
        meters = {m["meter_code"]: Decimal(m["quantity"]) for m in on_replica["meters"]}
        assert meters and all(q == raw_total(pair.primary.conninfo(), account, m) for m, q in meters.items())
        draft_replica, draft_primary = invoice_doc(pair, account), invoice_doc(pair, account, replica=None)
        assert draft_replica == draft_primary and Decimal(draft_replica["total"]) > 0
    month = spanmeter(pair, "usage", "--account", "acme", "--format", "json")  # month to date, on the replica
    assert json.loads(ok(month))["month_to_date"]["usage"]["api_requests"] == "1"
    for what in ("usage", "invoices", "focus"):
        export = spanmeter(pair, "export", what, "--period", str(LAST))
        assert ok(export) == ok(spanmeter(pair, "export", what, "--period", str(LAST), replica=None))
        assert "acme" in export.stdout and "globex" in export.stdout
        assert "note:" not in export.stderr  # caught up: nothing to say


def test_lag_is_a_metric_stale_reads_say_so_and_finalize_reads_the_primary(pair, tmp_path):
    primary, standby = pair.primary.conninfo(), pair.standby.conninfo()
    serve = Collector(primary, env={"SPANMETER_READ_DATABASE_URL": standby}).start()
    monitor = ReplicaLagMonitor(
        resolve_database(primary, Path(".")), replica_database(standby), ReadReplicaMetrics(CollectorRegistry())
    )
    try:
        wait_until(lambda: serve.metrics().get("spanmeter_read_replica_last_measured_timestamp_seconds", 0) > 0, 30)
        stale_draft = invoice_doc(pair, "acme")
        pair.pause_replay()
        try:
            late = LAST.start + timedelta(days=20)  # usage of last month the standby does not see
            write(primary, [row("acme", "worker_seconds", "7200.0", late), row("acme", "gpu_seconds", "900.0", late)])
            lag = monitor.refresh()
            assert lag.standby and lag.replay_paused and lag.lag_bytes > 0 and lag.replay_delay_seconds > 0

            def serve_sees_lag() -> bool:
                m = serve.metrics()
                return (
                    m.get("spanmeter_read_replica_lag_bytes", 0) > 0 and m["spanmeter_read_replica_replay_paused"] == 1
                )

            wait_until(serve_sees_lag, 30, 0.5, "serve's spanmeter_read_replica_lag_bytes > 0")
            assert serve.metrics()["spanmeter_read_replica_replay_delay_seconds"] > 0

            # the replica still answers, with the older figures, and says so
            read = spanmeter(pair, "invoice", "--account", "acme", "--period", str(LAST), "--format", "json")
            assert json.loads(ok(read)) == stale_draft
            assert "note:" in read.stderr and "paused" in read.stderr
            current = invoice_doc(pair, "acme", replica=None)
            assert Decimal(current["total"]) > Decimal(stale_draft["total"])

            # finalize reads the primary, with the stale replica configured (and with an unreachable one)
            final = spanmeter(
                pair, "invoice", "--account", "acme", "--period", str(LAST), "--finalize", "--format", "json",
                SPANMETER_INVOICE_DRIFT_WINDOW_SECONDS="0",
            )  # fmt: skip
            document = json.loads(ok(final))
            assert document["status"] == "finalized" and document["total"] == current["total"]
            assert document["usage"] == current["usage"] != stale_draft["usage"]
            globex = spanmeter(
                pair, "invoice", "--account", "globex", "--period", str(LAST), "--finalize", "--format", "json",
                replica="postgresql://nobody@127.0.0.1:1/spanmeter", SPANMETER_INVOICE_DRIFT_WINDOW_SECONDS="0",
            )  # fmt: skip
            assert json.loads(ok(globex))["status"] == "finalized"
        finally:
            pair.resume_replay()
        pair.wait_for_replay()
        lag = monitor.refresh()
        assert (lag.lag_bytes, lag.replay_delay_seconds, lag.replay_paused) == (0, 0.0, False)

        def serve_sees_caught_up() -> bool:
            m = serve.metrics()
            return m["spanmeter_read_replica_lag_bytes"] == 0 and m["spanmeter_read_replica_replay_delay_seconds"] == 0

        wait_until(serve_sees_caught_up, 30, 0.5, "serve's replica lag back to 0")
        assert serve.metrics()["spanmeter_read_replica_replay_paused"] == 0
        # caught up: the replica now serves the finalized invoice, as the primary does
        assert invoice_doc(pair, "acme") == invoice_doc(pair, "acme", replica=None) == {**document}
    finally:
        serve.kill()


def test_a_recovery_conflict_is_read_again_on_a_new_snapshot_a_bounded_number_of_times(pair):
    primary = pair.primary.conninfo()
    databases = Databases(resolve_database(primary, Path(".")), replica_database(pair.standby.conninfo()))
    attempts: list[int] = []

    def conflict_once(database, conflicts: int) -> dict:
        """Read the rollups; on the first ``conflicts`` attempts, make the primary's fold and vacuum remove
        the pending deltas this snapshot still sees, so replay cancels it."""
        attempts.append(1)
        when = LAST.start + timedelta(days=9, hours=len(attempts))
        write(primary, [row("conflicted", "worker_seconds", "2.0", when)])  # a pending delta, on both servers
        pair.wait_for_replay()
        with read_connection(database) as conn:
            first = rollups.rollup_totals(conn, "conflicted", LAST.start, LAST.end)
            if len(attempts) <= conflicts:
                with psycopg.connect(primary, autocommit=True) as writer:
                    writer.execute("SELECT * FROM spanmeter_fold_rollups(100000)")
                    writer.execute("VACUUM usage_rollup_deltas")
                pair.wait_for_replay()
            again = rollups.rollup_totals(conn, "conflicted", LAST.start, LAST.end)  # the same snapshot
            assert again == first
            return again

    totals = databases.read(lambda database: conflict_once(database, conflicts=1))
    assert len(attempts) == 2  # cancelled once, read again on a new connection
    assert totals["worker_seconds"].quantity == raw_total(primary, "conflicted", "worker_seconds") == Decimal("4.0")

    attempts.clear()
    with pytest.raises(ReplicaConflict) as raised:
        databases.read(lambda database: conflict_once(database, conflicts=99), pause_seconds=0.05)
    assert len(attempts) == 3
    message = str(raised.value)
    assert "conflict with recovery" in message and "hot_standby_feedback" in message
    assert "SPANMETER_READ_DATABASE_URL" in message


def _one_message(result: subprocess.CompletedProcess, *expected: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) <= 2, result.stderr
    for text in expected:
        assert text in result.stderr, (text, result.stderr)


def test_an_unreachable_or_unusable_replica_is_one_message_naming_the_setting(pair):
    usage = ("usage", "--account", "acme")
    unreachable = spanmeter(pair, *usage, replica="postgresql://nobody@127.0.0.1:1/spanmeter")
    _one_message(unreachable, "cannot read the read replica", "SPANMETER_READ_DATABASE_URL", "127.0.0.1:1")
    not_migrated = spanmeter(pair, *usage, replica=pair.standby.conninfo(dbname="postgres"))
    _one_message(not_migrated, "read replica", "has schema none", "SPANMETER_READ_DATABASE_URL")
    bad = spanmeter(
        pair, "export", "usage", "--period", str(LAST), replica=None, SPANMETER_READ_DATABASE_URL="mysql://x@y/z"
    )
    _one_message(bad, "SPANMETER_READ_DATABASE_URL='mysql://x@y/z' is invalid", "unset it to read the primary")
    flag = spanmeter(pair, *usage, replica="mysql://x@y/z")
    _one_message(flag, "--read-database-url='mysql://x@y/z' is invalid")
    alone = subprocess.run(
        [SPANMETER, *usage, "--read-database-url", pair.standby.conninfo()],
        capture_output=True, text=True, timeout=120,
        env={k: v for k, v in os.environ.items() if not k.startswith("SPANMETER_")},
    )  # fmt: skip
    _one_message(alone, "SPANMETER_READ_DATABASE_URL", "SPANMETER_DATABASE_URL")
    primary_only = spanmeter(pair, *usage, replica="")  # '' reads the primary, whatever the environment says
    assert ok(primary_only) and "note:" not in primary_only.stderr
