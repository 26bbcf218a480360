"""What partitioning ``usage_events`` by month costs the write path: the same writer into both ledgers, side by side.

Two ledgers on one server, each migrated by spanmeter's own migrations and prefilled with ``--prefill-rows``
rows spread over the last ``--prefill-days`` days (time-ordered, random keys, 1,000 accounts):

- ``unpartitioned``: schema 0009, the last one with a plain ``usage_events``; given a ``usage_event_coverage``
  view that covers all time, so the writer's SQL, coverage filter included, is byte for byte the same;
- ``partitioned``: the head schema (0010 and later), monthly partitions.

Then alternating batches of ``--batch-rows`` rows ending now, written by the real ``LedgerWriter`` (COPY into
staging, ``INSERT … ON CONFLICT DO NOTHING``, the rollup-delta trigger) and committed, timed from the first COPY
byte to COMMIT; the deltas are folded between batches, untimed. Medians of ``--rounds`` per ledger.

    python bench/partition_cost.py --database-url postgresql://postgres@127.0.0.1/postgres

Creates and drops the databases ``spanmeter_partition_bench_{unpartitioned,partitioned}`` on that server (a
superuser: the prefill skips triggers with ``session_replication_role``). Figures: bench/README.md ("Partitioned
ledger, measured").
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import uuid

import psycopg
from psycopg.conninfo import make_conninfo

from spanmeter.billing.ledger import migrate, rollup_store
from spanmeter.billing.ledger.database import resolve_database
from spanmeter.billing.ledger.writer import LedgerWriter

LEDGERS = {"unpartitioned": "0009_narrow_job_sets", "partitioned": "head"}
ALL_TIME = """
CREATE VIEW usage_event_coverage AS
SELECT '-infinity'::timestamptz AS from_at, 'infinity'::timestamptz AS to_at, NULL::timestamptz AS archived_to
"""
PREFILL = """
INSERT INTO usage_events (occurred_at, idempotency_key, account_id, job_id, plan_code, meter_code, meter_version,
                          quantity, unit, trace_id, span_id, metadata)
SELECT now() - %(days)s * interval '1 day' + i * (%(days)s * interval '1 day' / %(rows)s), gen_random_uuid(),
       'acct-' || (i %% 1000), 'job-' || i, 'growth', 'worker_seconds', 1, 1.5, 's', md5(i::text), left(md5(i::text), 16),
       '{}'
  FROM generate_series(1, %(rows)s) i
"""


def _batch(start_us: int, rows: int) -> bytes:
    return "".join(
        f"{start_us + i}\t{uuid.uuid4().hex}\tacct-{i % 1000}\tjob-{start_us}-{i}\tgrowth\tworker_seconds\t1\t1.5\ts\t"
        f"{'ab' * 16}\t{'cd' * 8}\t{{}}\n"
        for i in range(rows)
    ).encode()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--database-url", required=True, help="a server to create the bench databases on (superuser)")
    p.add_argument("--prefill-rows", type=int, default=10_000_000)
    p.add_argument("--prefill-days", type=int, default=45)
    p.add_argument("--batch-rows", type=int, default=20_000)
    p.add_argument("--rounds", type=int, default=15)
    args = p.parse_args()
    dsns = {}
    with psycopg.connect(args.database_url, autocommit=True) as admin:
        for ledger in LEDGERS:
            db = f"spanmeter_partition_bench_{ledger}"
            admin.execute(f"DROP DATABASE IF EXISTS {db}")
            admin.execute(f"CREATE DATABASE {db}")
            dsns[ledger] = make_conninfo(args.database_url, dbname=db)
    try:
        for ledger, revision in LEDGERS.items():
            began = time.perf_counter()
            migrate.upgrade(resolve_database(dsns[ledger], data_dir=None), revision)
            with psycopg.connect(dsns[ledger], autocommit=True) as conn:
                if ledger == "unpartitioned":
                    conn.execute(ALL_TIME)
                conn.execute("SET session_replication_role = replica")  # the prefill bypasses the rollup trigger
                conn.execute(PREFILL, {"rows": args.prefill_rows, "days": args.prefill_days})
                conn.execute("RESET session_replication_role")
                conn.execute("VACUUM ANALYZE")
                conn.execute("CHECKPOINT")
                shape = conn.execute(
                    "SELECT count(*), pg_size_pretty(sum(pg_total_relation_size(c.oid))) FROM pg_class c "
                    "WHERE c.relname ~ '^usage_events' AND c.relkind = 'r'"
                ).fetchone()
            print(f"{ledger:14} prefilled in {time.perf_counter() - began:5.0f} s: {shape[0]} table(s), {shape[1]}")
        rates: dict[str, list[float]] = {ledger: [] for ledger in LEDGERS}
        start_us = int(time.time() * 1e6) - args.rounds * 2 * args.batch_rows
        conns = {ledger: psycopg.connect(dsn) for ledger, dsn in dsns.items()}
        writers = {ledger: LedgerWriter(conn) for ledger, conn in conns.items()}
        for round_no in range(args.rounds):
            order = list(LEDGERS) if round_no % 2 == 0 else list(reversed(LEDGERS))
            for ledger in order:
                data = _batch(start_us, args.batch_rows)
                start_us += args.batch_rows
                conn = conns[ledger]
                began = time.perf_counter()
                written = writers[ledger].write_copy(data, args.batch_rows)
                conn.commit()
                rates[ledger].append(args.batch_rows / (time.perf_counter() - began))
                assert written.inserted == args.batch_rows and not written.outside, written
                while rollup_store.fold(conn).deltas:
                    pass
        for conn in conns.values():
            conn.close()
        unpart, part = (statistics.median(rates[ledger]) for ledger in LEDGERS)
        print(
            f"prefill {args.prefill_rows:,} rows per ledger over {args.prefill_days} days; batches of "
            f"{args.batch_rows:,}; {args.rounds} rounds each, alternating; load {os.getloadavg()[0]:.2f}"
        )
        print(f"  unpartitioned (schema 0009)           {unpart:10,.0f} rows/s")
        print(
            f"  partitioned by month (head)           {part:10,.0f} rows/s   ratio {part / unpart:.3f}   "
            f"target >= 0.950   {'PASS' if part / unpart >= 0.95 else 'MISS'}"
        )
    finally:
        with psycopg.connect(args.database_url, autocommit=True) as admin:
            for ledger in LEDGERS:
                admin.execute(f"DROP DATABASE IF EXISTS spanmeter_partition_bench_{ledger}")


if __name__ == "__main__":
    main()
