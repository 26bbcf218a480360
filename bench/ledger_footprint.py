#!/usr/bin/env python
"""What one usage row costs on disk and in WAL: the partitioned ledger, its indexes, its rollup upkeep.

    .venv/bin/python bench/ledger_footprint.py                  # 1,000,000 rows
    .venv/bin/python bench/ledger_footprint.py --rows 100000    # quick

Writes ``--rows`` rows of realistic usage (``bench/_usage_gen.py``: Zipf accounts, five meters, job ids, model and
GPU dimensions, the product's metadata) through the real write path: ``LedgerWriter.write_usage`` in batches of
``--batch-rows`` (COPY, ``INSERT … ON CONFLICT DO NOTHING``, the rollup-delta trigger), committed, and
``rollup_store.fold`` after every ``--fold-every`` batches (about once a second at this machine's write rate, as
``spanmeter serve`` folds). The rows start at the current month's first instant, ``--events-per-month`` apart on
average (the density decides how many rollup rows an event makes: 8.33M a month is 100M a year).

Reported per row:

- **disk**: the month's partition (heap; TOAST, free-space and visibility maps), each of its indexes, and the rollup
  tables (hourly, daily, the distinct-job sets), after ``VACUUM (ANALYZE)``;
- **WAL**: every record that touches a relation of the bench database or commits one of its transactions, read back
  with ``pg_walinspect`` right after each transaction (the server is shared: other databases' WAL is left out, which a
  plain ``pg_current_wal_lsn()`` difference cannot do), split by relation and into full-page images, for the writes
  and the folds apart; the LSN difference over the whole run is printed too, for comparison;
- **months per TiB** (and TiB per month) at the given average rates, from the disk figures (raw ledger + rollups).

Creates the database ``spanmeter_ledger_footprint`` (and the ``pg_walinspect`` extension in it; a superuser is
needed) and drops it at the end unless ``--keep``. Figures and what they mean: docs/scaling.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

import _usage_gen as gen  # noqa: E402

from spanmeter.billing.ledger import partitions, rollup_store  # noqa: E402

DB = "spanmeter_ledger_footprint"
TB = 1 << 40
# WAL of one transaction, read back before the segments can be recycled: bytes (with and without full-page images)
# per relation of this database, plus the commit records of the transaction
_WAL = """
SELECT coalesce(substring(block_ref FROM 'rel [0-9]+/([0-9]+)/[0-9]+'), '') AS db,
       coalesce(substring(block_ref FROM 'rel [0-9]+/[0-9]+/([0-9]+)'), '') AS filenode,
       resource_manager, xid::text::bigint AS xid, record_length, fpi_length
  FROM pg_get_wal_records_info(%s::pg_lsn, %s::pg_lsn)
"""
RATES = (  # (label, rows per month): what the arithmetic is done at
    ("100M a year (the 4/7 target)", 100e6 / 12),
    ("100M a month", 100e6),
    ("1,000 rows/s sustained", 1_000 * 86_400 * 30.44),
    ("10,000 rows/s sustained", 10_000 * 86_400 * 30.44),
    ("50,000 rows/s sustained (~ (3), one serve)", 50_000 * 86_400 * 30.44),
)


def log(msg: str = "") -> None:
    print(msg, flush=True)


class WalMeter:
    """Sums the WAL of this database's relations and transactions, transaction by transaction."""

    def __init__(self, admin_url: str, dboid: int) -> None:
        self.conn = psycopg.connect(admin_url, autocommit=True)
        self.dboid = str(dboid)
        self.names: dict[str, str] = {}
        self.by_relation: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0, 0])  # bytes, fpi, records
        self.lsn_bytes = 0

    def lsn(self) -> str:
        return self.conn.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()[0]

    def add(self, phase: str, start: str) -> None:
        """The WAL from ``start`` to what is flushed now (the caller just committed): this database's records, and
        the commit records of the transactions that wrote them."""
        end = self.conn.execute("SELECT pg_current_wal_flush_lsn()::text").fetchone()[0]
        self.lsn_bytes += self.conn.execute("SELECT %s::pg_lsn - %s::pg_lsn", (end, start)).fetchone()[0]
        records = self.conn.execute(_WAL, (start, end)).fetchall()
        ours = {xid for db, _, _, xid, _, _ in records if db == self.dboid and xid}
        for db, filenode, rmgr, xid, length, fpi in records:
            if db == self.dboid:
                key = (phase, filenode)
            elif not db and rmgr == "Transaction" and xid in ours:
                key = (phase, "commit records")
            else:
                continue  # another database's, or the server's own (checkpoints, running xacts)
            acc = self.by_relation[key]
            acc[0] += length
            acc[1] += fpi
            acc[2] += 1

    def name(self, url: str) -> None:
        with psycopg.connect(url) as conn:
            for filenode, name in conn.execute(
                "SELECT pg_relation_filenode(c.oid)::text, c.relname FROM pg_class c "
                "WHERE pg_relation_filenode(c.oid) IS NOT NULL"
            ):
                self.names[filenode] = name

    def close(self) -> None:
        self.conn.close()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5432/postgres", help="a superuser")
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--batch-rows", type=int, default=20_000)
    p.add_argument("--fold-every", type=int, default=3, help="batches between folds (~1 s at ~60k rows/s)")
    p.add_argument("--accounts", type=int, default=2000)
    p.add_argument("--events-per-month", type=float, default=100e6 / 12, help="density (rollup rows per event)")
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("--keep", action="store_true", help="keep the database")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from spanmeter.billing.ledger import migrate
    from spanmeter.billing.ledger.database import resolve_database
    from spanmeter.billing.ledger.writer import LedgerWriter

    args = parse_args(argv)
    admin = args.database_url
    url = make_conninfo(admin, dbname=DB)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(DB)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DB)))
        server = {
            n: conn.execute(f"SHOW {n}").fetchone()[0]
            for n in ("server_version", "shared_buffers", "wal_compression", "full_page_writes", "checkpoint_timeout")
        }
    started = time.monotonic()
    try:
        migrate.upgrade(resolve_database(url, data_dir=None))
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_walinspect")
            dboid = conn.execute("SELECT oid FROM pg_database WHERE datname = current_database()").fetchone()[0]
        start = partitions.month_start(datetime.now(UTC))
        span = timedelta(days=30.44 * args.rows / args.events_per_month)
        _, probs = gen.zipf(args.accounts)
        month = gen.make_month(args.seed, args.rows, start, start + span, probs)
        with psycopg.connect(url) as conn:
            partitions.ensure(conn, now=start + span)
            conn.commit()
        log(f"spanmeter ledger footprint  {datetime.now(UTC).isoformat(timespec='seconds')}")
        log("  PostgreSQL " + ", ".join(f"{k}={v}" for k, v in server.items()))
        log(
            f"  {args.rows:,} rows over {span.total_seconds() / 86_400:.1f} days from {start:%Y-%m-%d} "
            f"({args.events_per_month:,.0f} a month), {args.accounts:,} Zipf accounts; batches of "
            f"{args.batch_rows:,}, a fold every {args.fold_every}; load {os.getloadavg()[0]:.2f}"
        )
        wal = WalMeter(url, dboid)
        with psycopg.connect(url) as conn, psycopg.connect(url) as folder:
            writer = LedgerWriter(conn)
            wal.conn.execute("CHECKPOINT")  # full-page images after a checkpoint count, as in production
            t = time.monotonic()
            for batches, lo in enumerate(range(0, args.rows, args.batch_rows), start=1):
                hi = min(args.rows, lo + args.batch_rows)
                rows = gen.ledger_rows(month, lo, hi, seed=args.seed * 7919 + lo)
                before = wal.lsn()
                written = writer.write_usage(rows)
                conn.commit()
                wal.add("write", before)
                if written.inserted != len(rows) or written.outside:
                    raise RuntimeError(f"rows {lo}..{hi}: {written.inserted} new, outside {written.outside}")
                if batches % args.fold_every == 0 or hi == args.rows:
                    while True:
                        before = wal.lsn()
                        folded = rollup_store.fold(folder)
                        wal.add("fold", before)
                        if folded.deltas < 50_000:
                            break
            seconds = time.monotonic() - t
        with psycopg.connect(url, autocommit=True) as conn:
            pending = rollup_store.pending_deltas(conn)
            conn.execute("VACUUM (ANALYZE)")
            partition = f"usage_events_{start:%Y_%m}"
            heap = conn.execute(
                "SELECT pg_relation_size(%s), pg_table_size(%s) - pg_relation_size(%s)", (partition,) * 3
            ).fetchone()
            indexes = conn.execute(
                "SELECT c.relname, pg_relation_size(c.oid) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                "WHERE i.indrelid = %s::regclass ORDER BY 1",
                (partition,),
            ).fetchall()
            rollup_tables = {
                t: conn.execute("SELECT pg_total_relation_size(%s), count(*) FROM " + t, (t,)).fetchone()
                for t in (
                    "usage_rollups_hourly",
                    "usage_rollups_daily",
                    "usage_job_sets",
                    "usage_job_set_members",
                    "usage_rollup_deltas",
                )
            }
        wal.name(url)
        wal.close()
    finally:
        if not args.keep:
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(DB)))

    n = args.rows
    log(
        f"  written in {seconds:.0f} s, folds and reading the WAL back included (not a write-speed figure); "
        f"{pending.deltas} deltas pending"
    )
    log("")
    log("=" * 100)
    log(f"DISK per row ({n:,} rows, after VACUUM (ANALYZE))")
    log("=" * 100)
    raw = heap[0] + heap[1] + sum(size for _, size in indexes)
    log(f"  {'heap (' + partition + ')':<58} {heap[0] / n:>8.1f} B/row")
    log(f"  {'  TOAST, free-space and visibility maps':<58} {heap[1] / n:>8.1f} B/row")
    for name, size in indexes:
        log(f"  {'index ' + name:<58} {size / n:>8.1f} B/row")
    log(f"  {'raw ledger, total':<58} {raw / n:>8.1f} B/row   ({raw / n * 1e9 / (1 << 30):,.0f} GiB per 1,000M rows)")
    roll = 0
    for t, (size, count) in rollup_tables.items():
        if t != "usage_rollup_deltas":
            roll += size
        note = " (transient: folded away; the space is reused)" if t == "usage_rollup_deltas" else ""
        log(f"  {t:<58} {size / n:>8.1f} B/row   {count:>10,} rows, {count / n:.3f} per event{note}")
    log(f"  {'rollups, total (at this density)':<58} {roll / n:>8.1f} B/row")
    per_row = (raw + roll) / n
    log(f"  {'ledger + rollups':<58} {per_row:>8.1f} B/row")

    log("")
    log("=" * 100)
    log("WAL per row (pg_walinspect: this database's records and commits only; full-page images included)")
    log("=" * 100)
    totals: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for (phase, filenode), (length, fpi, records) in sorted(
        wal.by_relation.items(), key=lambda kv: (kv[0][0] != "write", -kv[1][0])
    ):
        name = filenode if filenode == "commit records" else wal.names.get(filenode, f"relfilenode {filenode}")
        log(f"  {phase:<6} {name:<50} {length / n:>8.1f} B/row  (FPI {fpi / n:6.1f}; {records / n:6.3f} records/row)")
        totals[phase][0] += length
        totals[phase][1] += fpi
        totals[phase][2] += records
    for phase, (length, fpi, records) in totals.items():
        log(f"  {phase + ', total':<57} {length / n:>8.1f} B/row  (FPI {fpi / n:6.1f}; {records / n:6.3f} records/row)")
    wal_row = sum(v[0] for v in totals.values()) / n
    log(f"  {'write + fold':<57} {wal_row:>8.1f} B/row")
    log(f"  {'info: pg_current_wal_insert_lsn() difference (whole server)':<57} {wal.lsn_bytes / n:>8.1f} B/row")

    log("")
    log("=" * 100)
    log(f"MONTHS PER TiB (ledger + rollups {per_row:,.0f} B/row on disk; WAL {wal_row:,.0f} B/row)")
    log("=" * 100)
    for label, per_month in RATES:
        log(
            f"  {label:<44} {per_month:>16,.0f} rows/month  {per_row * per_month / TB:>9,.3f} TiB/month  "
            f"{TB / (per_row * per_month):>9,.1f} months per TiB  WAL {wal_row * per_month / 30.44 / (1 << 30):>8,.1f} GiB/day"
        )
    log(f"run took {(time.monotonic() - started) / 60:.1f} min; load {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
