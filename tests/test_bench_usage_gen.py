"""The bench's simulated rollups are what the product makes of the same rows.

``bench/partition_reads.py`` writes the current month through the real write path but only *simulates* the rollups
of the 11 older months (``bench/_usage_gen.py``: 90M raw rows do not fit on the disk). Here one small month goes
both ways: its rows through ``LedgerWriter`` (the delta trigger) and ``rollup_store.fold``, and through the simulation;
the hourly and daily rollups and the distinct-job sets must be equal, row for row.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import psycopg

from spanmeter.billing.ledger import migrate, partitions, rollup_store
from spanmeter.billing.ledger.database import resolve_database
from spanmeter.billing.ledger.writer import LedgerWriter
from spanmeter.collector.processors.usage import idempotency_key

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import _usage_gen as gen


def _rollup(line: str) -> tuple:
    a, bucket, meter, version, plan, dim, q, events, largest, latest_at, latest_q = line.rstrip("\n").split("\t")
    at = datetime.fromisoformat
    return (
        a,
        at(bucket.replace("Z", "+00:00")),
        meter,
        int(version),
        plan,
        dim,
        Decimal(q),
        int(events),
        Decimal(largest),
        at(latest_at.replace("Z", "+00:00")),
        Decimal(latest_q),
    )


def test_simulated_rollups_equal_the_folded_ones(fresh_db):
    migrate.upgrade(resolve_database(fresh_db, Path(".")))
    start = partitions.month_start(datetime.now(UTC))  # the migration makes this month's partition
    _, probs = gen.zipf(40)
    month = gen.make_month(7, 6_000, start, partitions.months_after(start, 1), probs)

    with psycopg.connect(fresh_db) as conn:
        writer = LedgerWriter(conn)
        for lo in range(0, len(month), 1_000):
            rows = gen.ledger_rows(month, lo, min(len(month), lo + 1_000), seed=lo)
            written = writer.write_usage(rows)
            conn.commit()
            assert (written.inserted, written.outside) == (len(rows), ())
        while rollup_store.fold(conn).deltas:
            pass
        conn.commit()
        columns = gen.ROLLUP_COLUMNS
        folded = {
            table: conn.execute(f"SELECT {columns} FROM {table} ORDER BY 1, 2, 3, 4, 5, 6").fetchall()
            for table in ("usage_rollups_hourly", "usage_rollups_daily")
        }
        jobs = conn.execute("SELECT account_id, job_id FROM usage_rollup_jobs ORDER BY 1, 2").fetchall()
        (key,) = conn.execute("SELECT replace(idempotency_key::text, '-', '') FROM usage_events LIMIT 1").fetchone()
        row = conn.execute(
            "SELECT trace_id, span_id, meter_code FROM usage_events WHERE idempotency_key = %s::uuid", (key,)
        ).fetchone()

    hourly, daily = gen.rollup_copies(month)
    assert folded["usage_rollups_hourly"] == sorted(_rollup(line) for line in hourly)
    assert folded["usage_rollups_daily"] == sorted(_rollup(line) for line in daily)
    assert len(folded["usage_rollups_daily"]) < len(folded["usage_rollups_hourly"]) < len(month)
    simulated = sorted((gen.account_id(rank), job) for rank, js in gen.job_sets(month).items() for job in js)
    assert jobs == simulated and len(jobs) > 100
    # the keys are the product's: BLAKE2b-128 of trace id ‖ span id ‖ meter code
    assert key == idempotency_key(bytes.fromhex(row[0]), bytes.fromhex(row[1]), row[2])
