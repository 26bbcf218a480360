#!/usr/bin/env python
"""Reads on a year of partitioned ledger: month to date per account, and a month's invoices for every account.

Targets (issue 4/7, "Scale out on existing engines"): month to date per account p99 <= 5 ms on 100M events over 12
monthly partitions (2,000 Zipf accounts), the largest account included; invoices for 2,000 accounts < 10 s.

    .venv/bin/python bench/partition_reads.py              # full: 10M raw events this month, 90M as rollups (~25 min)
    .venv/bin/python bench/partition_reads.py --small      # 200k raw events this month, 1.8M as rollups (~3 min)

100M raw events need ~66 GiB, so the ledger is built the way review asked: the current month holds ``--current-events``
raw events written through the real write path (``LedgerWriter.write_usage``: COPY, ``INSERT … ON CONFLICT``, the
rollup-delta trigger), folded by ``rollup_store.fold`` in a thread every second as ``spanmeter serve`` does; the 11 older
months hold only the rollup rows (hourly, daily, distinct-job sets) that ``(--total-events - --current-events) / 11``
events a month of the same distribution would have produced, aggregated in Python (``bench/_usage_gen.py``; a test
holds them equal to what the trigger and the fold make of the same rows) and copied in month by month, each row in
the order of its latest event (where the fold, which rewrites a row at every fold that adds to it, leaves its last
version: one account's daily rows end up on as many pages as rows, as in the folded current month). Every account
has a ``v2_compute`` subscription from the first month.

The months: a fresh ledger's migration makes one legacy partition for everything before the current month (no
lower bound), so ``partitions.ensure(back_to=…)`` cannot add older months below it. The bench therefore puts its
year after the cutover: the 11 older months are this calendar month and the 10 after it, the bench's "current
month" is the 12th, and every read is made "as of" that month's last day, 18:00 UTC, through the ``now`` argument
the product's functions take. ``partitions.ensure(now=as_of)`` creates the months.

Figures (each on a warm connection, after one untimed pass):

1. ``quotas.month_to_date(conn, account, as_of)``, what ``spanmeter usage`` prints as month to date and what the
   billing-metrics refresh of ``spanmeter serve`` computes per account, for every account, ``--passes`` shuffled
   passes in a read-only repeatable-read transaction each (as ``read_connection``); per account the median, then
   p50/p99/max over accounts, and the largest account alone. Time inside ``execute`` (statements and round trips)
   is told apart from Python (rating, Decimal) by a timing cursor. Also the whole ``refresh_month_to_date`` (serve's
   refresh: every account in one transaction) and the raw half of ``spanmeter usage`` (``usage.usage_totals`` over
   the current month: the only raw read here, pruned to one partition).
2. ``invoices.build_invoice(conn, account, <the month before the current one>)`` for every account, ``--invoice-passes``
   passes; the slowest pass is judged.

Then ``EXPLAIN (ANALYZE, BUFFERS)`` of the slowest account's month-to-date usage query, the largest account's invoice
usage query, and the raw ``usage_totals`` statement (partition pruning). The server is this machine's PostgreSQL
(``--database-url``, a superuser); the bench creates its own database and drops it at the end unless ``--keep``
(``--reuse`` measures a kept one again). Load average and the server's other active sessions are printed with each
figure: the machine has 2 cores and others share it.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import random
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psutil
import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

import _usage_gen as gen  # noqa: E402

from spanmeter.billing import rollups  # noqa: E402
from spanmeter.billing.ledger import partitions, rollup_store  # noqa: E402

WIDTH = 118


def log(msg: str = "") -> None:
    print(msg, flush=True)


def pct(values: list[float], q: float) -> float:
    """The q-quantile (0..1), linear interpolation between closest ranks."""
    s = sorted(values)
    if not s:
        return float("nan")
    pos = (len(s) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


# -- the machine and the server ------------------------------------------------------------------------------
class Load:
    """Load average, the machine's busy cores over a window, and the server's other active sessions."""

    def __init__(self, admin: str, dbname: str) -> None:
        self.admin, self.dbname = admin, dbname
        self._cpu = psutil.cpu_times()
        self._t = time.monotonic()

    def others(self) -> int:
        with psycopg.connect(self.admin, autocommit=True) as conn:
            return conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND pid <> pg_backend_pid() "
                "AND backend_type = 'client backend' AND datname IS DISTINCT FROM %s",
                (self.dbname,),
            ).fetchone()[0]

    def start(self) -> None:
        self._cpu, self._t = psutil.cpu_times(), time.monotonic()

    def note(self, sample: bool = False) -> dict:
        if sample:  # no window of our own: one second of the machine as it is
            self.start()
            time.sleep(1.0)
        cpu, wall = psutil.cpu_times(), time.monotonic() - self._t
        busy = sum(getattr(cpu, f) - getattr(self._cpu, f) for f in ("user", "system", "nice", "irq", "softirq"))
        return {
            "loadavg": os.getloadavg(),
            "busy_cores": busy / wall if wall > 0 else float("nan"),
            "other_active_sessions": self.others(),
        }

    @staticmethod
    def text(note: dict) -> str:
        one, five, fifteen = note["loadavg"]
        return (
            f"load {one:.2f} {five:.2f} {fifteen:.2f}; machine {note['busy_cores']:.1f}/{psutil.cpu_count()} cores "
            f"busy; {note['other_active_sessions']} other active session(s) on the server"
        )


# which product read a statement is, by the table it reads first
_READS = (
    ("usage_rollups_daily", "rollup_totals"),
    ("FROM subscriptions", "subscriptions"),
    ("FROM usage_adjustments", "adjustments"),
    ("FROM invoices", "invoices"),
)


@dataclass
class SqlClock:
    """Time spent inside ``Cursor.execute`` (statement + round trip; rows are decoded later, in Python), per read."""

    seconds: float = 0.0
    statements: int = 0
    by_read: dict[str, float] = field(default_factory=dict)

    def reset(self) -> None:
        self.seconds, self.statements, self.by_read = 0.0, 0, {}

    def add(self, query, seconds: float) -> None:
        text = query if isinstance(query, str) else str(query)
        label = next((name for key, name in _READS if key in text), "other")
        self.seconds += seconds
        self.statements += 1
        self.by_read[label] = self.by_read.get(label, 0.0) + seconds


def timed_connect(url: str, clock: SqlClock, **kwargs) -> psycopg.Connection:
    class TimedCursor(psycopg.Cursor):
        def execute(self, query, params=None, **kw):
            started = time.perf_counter()
            try:
                return super().execute(query, params, **kw)
            finally:
                clock.add(query, time.perf_counter() - started)

    return psycopg.connect(url, cursor_factory=TimedCursor, **kwargs)


# -- the ledger -----------------------------------------------------------------------------------------------
@dataclass
class Timeline:
    older: list[datetime]  # the 11 older months' starts
    current: datetime  # the current month's start
    as_of: datetime  # "now" for every read: the current month's last day, 18:00 UTC

    @classmethod
    def after_cutover(cls, real_now: datetime) -> Timeline:
        first = partitions.month_start(real_now)  # a fresh ledger's first monthly partition
        older = [partitions.months_after(first, i) for i in range(11)]
        current = partitions.months_after(first, 11)
        return cls(older, current, partitions.months_after(current, 1) - timedelta(hours=6))


@dataclass
class Build:
    seconds: dict[str, float] = field(default_factory=dict)
    notes: dict = field(default_factory=dict)


_META = """
CREATE TABLE IF NOT EXISTS bench_partition_reads (
    params jsonb NOT NULL, timeline jsonb NOT NULL, build jsonb NOT NULL, done boolean NOT NULL DEFAULT false)
"""


class Folder(threading.Thread):
    """``rollup_store.fold`` every second on its own connection, as ``spanmeter serve``'s compactor does."""

    def __init__(self, url: str) -> None:
        super().__init__(name="folder", daemon=True)
        self.url = url
        self.stop = threading.Event()
        self.folds = 0
        self.seconds = 0.0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with psycopg.connect(self.url) as conn:
                while not self.stop.wait(1.0):
                    started = time.perf_counter()
                    while rollup_store.fold(conn).deltas >= 50_000:
                        pass
                    self.seconds += time.perf_counter() - started
                    self.folds += 1
        except BaseException as exc:  # reported by the writer
            self.error = exc


def copy_lines(conn: psycopg.Connection, statement: str, lines: list[str], chunk: int = 50_000) -> None:
    with conn.cursor() as cur, cur.copy(statement) as copy:
        for lo in range(0, len(lines), chunk):
            copy.write("".join(lines[lo : lo + chunk]).encode())


def build(url: str, args: argparse.Namespace, timeline: Timeline, probs) -> Build:
    from spanmeter.billing.ledger import migrate
    from spanmeter.billing.ledger.database import resolve_database
    from spanmeter.billing.ledger.writer import LedgerWriter
    from spanmeter.billing.subscriptions import set_subscription

    out = Build()
    t = time.monotonic()
    before, after = migrate.upgrade(resolve_database(url, data_dir=None))
    out.seconds["migrate"] = time.monotonic() - t
    log(f"  schema {before or 'empty'} -> {after} ({out.seconds['migrate']:.1f} s)")
    with psycopg.connect(url) as conn:
        legacy = [p.name for p in partitions.list_partitions(conn) if p.from_at is None]
        behind = partitions.ensure(conn, back_to=timeline.older[0] - timedelta(days=365))
        created = partitions.ensure(conn, now=timeline.as_of)
        conn.commit()
        monthly = [p for p in partitions.list_partitions(conn) if p.from_at is not None]
    out.notes["legacy_partition"] = legacy
    out.notes["back_to_created"] = behind
    out.notes["partitions_created"] = created
    log(
        f"  the migration's legacy partition {legacy[0]} has no lower bound: ensure(back_to="
        f"{timeline.older[0] - timedelta(days=365):%Y-%m}) created {len(behind)} month(s); "
        f"ensure(now={timeline.as_of:%Y-%m-%d %H:%M}) created {len(created)}: {created[0]} .. {created[-1]}"
    )
    wanted = {f"usage_events_{m:%Y_%m}" for m in [*timeline.older, timeline.current]}
    missing = wanted - {p.name for p in monthly}
    if missing:
        raise RuntimeError(f"monthly partitions missing: {sorted(missing)}")
    log(f"  {len(monthly)} monthly partitions, the bench's year {min(wanted)} .. {max(wanted)} among them")

    t = time.monotonic()
    with psycopg.connect(url) as conn:
        for rank in range(1, args.accounts + 1):
            set_subscription(
                conn,
                account_id=gen.account_id(rank),
                plan_code=gen.plan_of(rank),
                pricing_version="v2_compute",
                valid_from=timeline.older[0],
                created_by="partition_reads",
            )
        conn.commit()
    out.seconds["subscriptions"] = time.monotonic() - t
    log(f"  set_subscription for {args.accounts:,} accounts (v2_compute from {timeline.older[0]:%Y-%m-%d})")

    per_month = (args.total_events - args.current_events) // len(timeline.older)
    totals = {"hourly": 0, "daily": 0, "jobs": 0}
    t_old = time.monotonic()
    with psycopg.connect(url) as conn:
        for i, start in enumerate(timeline.older):
            t = time.monotonic()
            end = partitions.months_after(start, 1)
            month = gen.make_month(args.seed + i, per_month, start, end, probs)
            hourly, daily = gen.rollup_copies(month)
            sets = gen.job_sets(month)
            t_gen = time.monotonic() - t
            del month
            copy_lines(conn, f"COPY usage_rollups_hourly ({gen.ROLLUP_COLUMNS}) FROM STDIN", hourly)
            copy_lines(conn, f"COPY usage_rollups_daily ({gen.ROLLUP_COLUMNS}) FROM STDIN", daily)
            ranks = sorted(sets)
            ids = dict(
                conn.execute(
                    "INSERT INTO usage_job_sets (account_id, month_start, meter_code) "
                    "SELECT a, %s, 'worker_seconds' FROM unnest(%s::text[]) AS a ORDER BY a RETURNING account_id, set_id",
                    (start, [gen.account_id(r) for r in ranks]),
                ).fetchall()
            )
            members = [f"{ids[gen.account_id(r)]}\t{job}\n" for r in ranks for job in sets[r]]
            copy_lines(conn, "COPY usage_job_set_members (set_id, job_id) FROM STDIN", members)
            conn.commit()
            totals["hourly"] += len(hourly)
            totals["daily"] += len(daily)
            totals["jobs"] += len(members)
            log(
                f"  {start:%Y-%m}: rollups of {per_month:,} events: {len(hourly):,} hourly, {len(daily):,} daily rows, "
                f"{len(members):,} jobs in {len(sets):,} sets (simulated in {t_gen:.0f} s, copied in "
                f"{time.monotonic() - t - t_gen:.0f} s)"
            )
    out.seconds["older_months"] = time.monotonic() - t_old
    out.notes["older_months"] = {"events_per_month": per_month, **totals}

    t = time.monotonic()
    month = gen.make_month(args.seed + 100, args.current_events, timeline.current, timeline.as_of, probs)
    pending = min(args.pending_rows, args.current_events)
    folder = Folder(url)
    folder.start()
    written = 0
    with psycopg.connect(url) as conn:
        writer = LedgerWriter(conn)
        last_log = time.monotonic()

        def rows_of(lo: int, hi: int) -> list[tuple]:
            return gen.ledger_rows(month, lo, hi, seed=args.seed * 1_000_003 + lo)

        def write(lo: int, hi: int, rows: list[tuple]) -> None:
            result = writer.write_usage(rows)
            conn.commit()
            if result.inserted != len(rows) or result.outside:
                raise RuntimeError(f"rows {lo}..{hi}: {result.inserted} of {len(rows)} new, outside {result.outside}")

        body = args.current_events - pending
        # the rows are built in a thread while the previous batch is in PostgreSQL (psycopg waits without the GIL)
        ready: queue.Queue = queue.Queue(maxsize=2)
        spans = [(lo, min(body, lo + args.batch_rows)) for lo in range(0, body, args.batch_rows)]
        producer = threading.Thread(
            target=lambda: [ready.put((lo, hi, rows_of(lo, hi))) for lo, hi in spans], daemon=True
        )
        producer.start()
        for _ in spans:
            lo, hi, rows = ready.get()
            write(lo, hi, rows)
            written = hi
            if folder.error is not None:
                raise RuntimeError("the folder failed") from folder.error
            if time.monotonic() - last_log > 30:
                rate = written / (time.monotonic() - t)
                log(
                    f"  {timeline.current:%Y-%m}: {written:,}/{args.current_events:,} rows written ({rate:,.0f} rows/s)"
                )
                last_log = time.monotonic()
        folder.stop.set()
        folder.join()
        out.seconds["current_month_write"] = time.monotonic() - t
        while rollup_store.fold(conn).deltas:
            pass
        conn.commit()
        out.notes["current_month"] = {
            "rows": body,
            "rows_per_s": body / out.seconds["current_month_write"],
            "folds": folder.folds,
            "fold_seconds": folder.seconds,
        }
        log(
            f"  {timeline.current:%Y-%m}: {body:,} raw events through LedgerWriter.write_usage in "
            f"{out.seconds['current_month_write']:.0f} s ({out.notes['current_month']['rows_per_s']:,.0f} rows/s; "
            f"{folder.folds} folds beside it, {folder.seconds:.0f} s of folding), then folded to the last delta"
        )
        t = time.monotonic()
        with psycopg.connect(url, autocommit=True) as admin:
            admin.execute("VACUUM (ANALYZE)")
        out.seconds["vacuum"] = time.monotonic() - t
        if pending:
            write(body, args.current_events, rows_of(body, args.current_events))  # pending, as between two folds
        out.notes["pending_rows"] = pending
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute("CHECKPOINT")
    log(
        f"  VACUUM (ANALYZE) in {out.seconds['vacuum']:.0f} s; the last {pending:,} rows written after it and left "
        "unfolded (pending deltas, as between two folds); CHECKPOINT"
    )
    return out


def inventory(url: str, timeline: Timeline, accounts: int) -> dict:
    with psycopg.connect(url) as conn:
        parts = partitions.list_partitions(conn)
        sizes = {
            t: conn.execute(
                "SELECT pg_total_relation_size(%s), (SELECT reltuples::bigint FROM pg_class WHERE relname = %s)",
                (t, t),
            ).fetchone()
            for t in (
                "usage_rollups_hourly",
                "usage_rollups_daily",
                "usage_job_sets",
                "usage_job_set_members",
                "usage_rollup_deltas",
                "subscriptions",
            )
        }
        raw = conn.execute(
            "SELECT account_id, count(*) FROM usage_events WHERE occurred_at >= %s AND occurred_at < %s "
            "GROUP BY 1 ORDER BY 2 DESC",
            (timeline.current, timeline.as_of),
        ).fetchall()
        year = dict(conn.execute("SELECT account_id, sum(events)::bigint FROM usage_rollups_daily_live GROUP BY 1"))
        pending = conn.execute("SELECT count(*), coalesce(sum(events), 0) FROM usage_rollup_deltas").fetchone()
    return {
        "partitions": [
            {"name": p.name, "rows": p.rows_estimate, "bytes": p.total_bytes, "from": p.from_at, "to": p.to_at}
            for p in parts
        ],
        "tables": {t: {"bytes": b, "rows": r} for t, (b, r) in sizes.items()},
        "current_events": sum(n for _, n in raw),
        "current_largest": raw[0] if raw else None,
        "year_events": sum(year.values()),
        "year_largest": max(year.items(), key=lambda kv: kv[1]) if year else None,
        "accounts_with_usage": len(year),
        "accounts": accounts,
        "pending_deltas": pending[0],
        "pending_events": int(pending[1]),
    }


# -- measuring ------------------------------------------------------------------------------------------------
def measure_mtd(url: str, accounts: list[str], as_of: datetime, passes: int) -> dict:
    from spanmeter.billing.quotas import month_to_date

    clock = SqlClock()
    per: dict[str, list[float]] = {a: [] for a in accounts}
    split: dict[str, list[tuple[float, float, int]]] = {a: [] for a in accounts}
    with timed_connect(url, clock) as conn:
        conn.read_only = True
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        for a in accounts:  # warm-up: connection, buffers, prepared statements (psycopg prepares at the 5th use)
            month_to_date(conn, a, as_of)
            conn.rollback()
        order = list(accounts)
        rng = random.Random(1)
        for _ in range(passes):
            rng.shuffle(order)
            for a in order:
                clock.reset()
                started = time.perf_counter()
                mtd = month_to_date(conn, a, as_of)
                elapsed = time.perf_counter() - started
                conn.rollback()
                if mtd is None:
                    raise RuntimeError(f"{a} has no month to date (no subscription?)")
                per[a].append(elapsed * 1e3)
                split[a].append((elapsed * 1e3, clock.seconds * 1e3, clock.statements, dict(clock.by_read)))
    medians = {a: statistics.median(v) for a, v in per.items()}
    every = [x for v in per.values() for x in v]

    def breakdown(a: str) -> dict:
        rows = split[a]
        return {
            "ms": statistics.median(r[0] for r in rows),
            "sql_ms": statistics.median(r[1] for r in rows),
            "statements": rows[0][2],
            "by_read_ms": {k: statistics.median(r[3].get(k, 0.0) for r in rows) * 1e3 for k in rows[0][3]},
        }

    worst = max(medians, key=medians.get)
    return {
        "passes": passes,
        "p50_ms": pct(list(medians.values()), 0.5),
        "p99_ms": pct(list(medians.values()), 0.99),
        "max_ms": medians[worst],
        "worst_account": worst,
        "largest_ms": medians[accounts[0]],
        "largest_max_ms": max(per[accounts[0]]),
        "calls_p99_ms": pct(every, 0.99),
        "calls_max_ms": max(every),
        "over_5ms": sum(1 for m in medians.values() if m > 5.0),
        "largest": breakdown(accounts[0]),
        "worst": breakdown(worst),
        "typical": breakdown(accounts[len(accounts) // 2]),
        "per_account_ms": medians,
    }


def measure_refresh(url: str, as_of: datetime, runs: int = 2) -> dict:
    """serve's billing-metrics refresh: a new connection, every account in one transaction (it writes
    account_month_to_date), as ``BillingMetrics.refresh`` does."""
    from spanmeter.billing.quotas import refresh_month_to_date

    seconds, exported = [], 0
    for _ in range(runs):
        started = time.perf_counter()
        with psycopg.connect(url, connect_timeout=10) as conn:
            exported = len(refresh_month_to_date(conn, as_of))
        seconds.append(time.perf_counter() - started)
    return {"seconds": seconds, "quota_series": exported}


def measure_usage_cli(url: str, accounts: list[str], timeline: Timeline, sample: int) -> dict:
    """The raw half of ``spanmeter usage --account A`` (``usage_totals`` over the current month, SQLAlchemy, its own
    engine), for the largest account and a sample of the others; plus the whole command's reads for the largest
    on fresh connections (raw totals + month to date, no prepared statements)."""
    from spanmeter.billing.ledger.database import resolve_database
    from spanmeter.billing.quotas import month_to_date
    from spanmeter.billing.usage import usage_totals

    end = partitions.months_after(timeline.current, 1)
    rng = random.Random(2)
    chosen = [accounts[0], *rng.sample(accounts[1:], min(sample, len(accounts) - 1))]
    engine = resolve_database(url, data_dir=None).engine()
    per: dict[str, float] = {}
    try:
        for a in [accounts[0], *chosen]:  # the largest twice: the first call warms the engine and the cache
            started = time.perf_counter()
            usage_totals(engine, a, timeline.current, end)
            per[a] = (time.perf_counter() - started) * 1e3
        whole = []
        for _ in range(3):
            started = time.perf_counter()
            usage_totals(engine, accounts[0], timeline.current, end)
            with psycopg.connect(url) as conn:
                conn.read_only = True
                conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
                month_to_date(conn, accounts[0], timeline.as_of)
                conn.rollback()
            whole.append((time.perf_counter() - started) * 1e3)
    finally:
        engine.dispose()
    others = [per[a] for a in chosen[1:]]
    return {
        "largest_ms": per[accounts[0]],
        "sample": len(others),
        "sample_p50_ms": pct(others, 0.5),
        "sample_p99_ms": pct(others, 0.99),
        "largest_command_reads_ms": statistics.median(whole),
    }


def measure_invoices(url: str, accounts: list[str], period_start: datetime, passes: int) -> dict:
    from spanmeter.billing.invoices import build_invoice
    from spanmeter.billing.periods import Period

    period = Period.containing(period_start)
    clock = SqlClock()
    runs, per, sql_s = [], {a: [] for a in accounts}, []
    total_eur = None
    with timed_connect(url, clock) as conn:
        conn.read_only = True
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        for _ in range(passes):
            clock.reset()
            started = time.perf_counter()
            amounts = []
            for a in accounts:
                t = time.perf_counter()
                amounts.append(build_invoice(conn, a, period).total)
                per[a].append((time.perf_counter() - t) * 1e3)
            conn.rollback()
            runs.append(time.perf_counter() - started)
            sql_s.append((clock.seconds, clock.statements, dict(clock.by_read)))
            total_eur = sum(amounts)
    medians = {a: statistics.median(v) for a, v in per.items()}
    slowest = max(range(passes), key=lambda i: runs[i])
    return {
        "period": str(period),
        "pass_seconds": runs,
        "seconds": runs[slowest],
        "sql_seconds": sql_s[slowest][0],
        "statements": sql_s[slowest][1],
        "by_read_seconds": sql_s[slowest][2],
        "account_p50_ms": pct(list(medians.values()), 0.5),
        "account_p99_ms": pct(list(medians.values()), 0.99),
        "largest_ms": medians[accounts[0]],
        "invoices_total_eur": str(total_eur),
    }


def explain(conn: psycopg.Connection, query: str, params) -> list[str]:
    rows = conn.execute("EXPLAIN (ANALYZE, BUFFERS, SETTINGS) " + query, params).fetchall()
    return [r[0] for r in rows]


def plans(url: str, worst: str, largest: str, timeline: Timeline, invoice_month: datetime) -> dict:
    from sqlalchemy.dialects import postgresql

    from spanmeter.billing.ledger.usage_store import usage_statement

    out = {}
    with psycopg.connect(url, autocommit=True) as conn:
        for key, account, start in (
            ("mtd_worst", worst, timeline.current),
            ("invoice_largest", largest, invoice_month),
        ):
            end = partitions.months_after(start, 1)
            day_from, day_to = rollups.split_days(start, end)
            params = {"account": account, "start": start, "end": end, "day_from": day_from, "day_to": day_to}
            out[key] = explain(conn, rollup_store.TOTALS, params)
        compiled = usage_statement(largest, timeline.current, partitions.months_after(timeline.current, 1)).compile(
            dialect=postgresql.psycopg.dialect()
        )
        out["usage_totals_largest"] = explain(conn, str(compiled), compiled.params)
        attached = [name for (name,) in conn.execute("SELECT partition_name FROM usage_event_partitions")]
    scanned = sorted({name for line in out["usage_totals_largest"] for name in attached if f" on {name} " in line})
    out["usage_totals_partitions"] = {"scanned": scanned, "attached": len(attached)}
    return out


# -- output ---------------------------------------------------------------------------------------------------
def mib(n: float) -> str:
    return f"{n / 1048576:,.0f} MiB" if n < 10 * 1 << 30 else f"{n / (1 << 30):,.1f} GiB"


def print_plan(title: str, lines: list[str]) -> None:
    log(f"  {title}")
    for line in lines:
        log(f"    | {line}")


def summary(r: dict, args: argparse.Namespace) -> list[dict]:
    inv, m, refresh, cli, inv_r = r["inventory"], r["mtd"], r["refresh"], r["usage_cli"], r["invoices"]
    rows: list[dict] = []
    width = 66

    def row(label: str, value: str, target: str = "", ok: bool | None = None, bound: str = "") -> None:
        verdict = "" if ok is None else ("PASS" if ok else "MISS")
        log(f"{label:<{width}} {value:>14}  {target:<9} {verdict:<5} {bound}")
        rows.append({"figure": label, "value": value, "target": target, "pass": ok, "bound_by": bound})

    def split(b: dict) -> str:
        reads = ", ".join(f"{k} {v:.2f}" for k, v in sorted(b["by_read_ms"].items(), key=lambda kv: -kv[1]))
        return (
            f"SQL {b['sql_ms']:.2f} ms in {b['statements']} statements ({reads}; round trips included), "
            f"Python {b['ms'] - b['sql_ms']:.2f} ms (rating, Decimal, rows)"
        )

    largest_name, largest_current = inv["current_largest"]
    log("")
    log("=" * WIDTH)
    log(
        f"SUMMARY  {inv['year_events']:,} events over 12 monthly partitions ({inv['current_events']:,} raw in "
        f"{r['timeline']['current'][:7]}, the rest as rollups), {inv['accounts']:,} Zipf accounts; largest "
        f"{largest_name}: {largest_current:,} events this month"
    )
    log("=" * WIDTH)
    log(f"{'figure':<{width}} {'value':>14}  {'target':<9} {'':<5} bound by")
    row("(1) month_to_date per account, p50 (median of passes)", f"{m['p50_ms']:.2f} ms")
    row(
        "(1) month_to_date per account, p99 over accounts",
        f"{m['p99_ms']:.2f} ms",
        "<= 5 ms",
        m["p99_ms"] <= 5,
        f"typical account: {split(m['typical'])}",
    )
    row(
        f"(1) month_to_date, largest account ({largest_name})",
        f"{m['largest_ms']:.2f} ms",
        "<= 5 ms",
        m["largest_ms"] <= 5,
        split(m["largest"]),
    )
    row(
        f"    info: slowest account ({m['worst_account']})",
        f"{m['max_ms']:.2f} ms",
        "",
        None,
        split(m["worst"]),
    )
    row("    info: p99 / max of every single call", f"{m['calls_p99_ms']:.2f} / {m['calls_max_ms']:.1f} ms")
    row(
        f"    info: accounts over 5 ms (median of {m['passes']} passes)",
        f"{m['over_5ms']:,} of {len(m['per_account_ms']):,}",
    )
    row(
        f"(1b) refresh_month_to_date, all {inv['accounts']:,} accounts (serve, 1/min)",
        f"{max(refresh['seconds']):.2f} s",
        "",
        None,
        "one month_to_date per account + the upsert of account_month_to_date, one transaction",
    )
    row(
        "(1c) spanmeter usage, raw usage_totals this month, largest",
        f"{cli['largest_ms']:,.0f} ms",
        "",
        None,
        "the raw partition: every row of the account this month (EXPLAIN below)",
    )
    row(
        f"     raw usage_totals, p50 / p99 over {cli['sample']} other accounts",
        f"{cli['sample_p50_ms']:.1f} / {cli['sample_p99_ms']:.1f} ms",
    )
    row(
        "     spanmeter usage's reads for the largest (raw + month to date)",
        f"{cli['largest_command_reads_ms']:,.0f} ms",
    )
    row(
        f"(2) build_invoice for all {inv['accounts']:,} accounts, {inv_r['period']} (slowest of "
        f"{len(inv_r['pass_seconds'])})",
        f"{inv_r['seconds']:.2f} s",
        "< 10 s",
        inv_r["seconds"] < 10,
        f"SQL {inv_r['sql_seconds']:.2f} s in {inv_r['statements']:,} statements ("
        + ", ".join(f"{k} {v:.2f}" for k, v in sorted(inv_r["by_read_seconds"].items(), key=lambda kv: -kv[1]))
        + f"), Python {inv_r['seconds'] - inv_r['sql_seconds']:.2f} s",
    )
    row(
        "    info: per account p50 / p99 / largest",
        f"{inv_r['account_p50_ms']:.2f} / {inv_r['account_p99_ms']:.2f} / {inv_r['largest_ms']:.2f} ms",
    )
    log("-" * WIDTH)
    for key, label in (("mtd", "(1)"), ("refresh", "(1b)"), ("usage_cli", "(1c)"), ("invoices", "(2)")):
        log(f"{label:<5} measured under: {Load.text(r['load'][key])}")
    return rows


def code_under_test() -> str:
    try:
        head = subprocess.run(
            ["git", "log", "-1", "--format=%h %s"], capture_output=True, text=True, cwd=BENCH_DIR, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "billing", "collector"],
            capture_output=True,
            text=True,
            cwd=BENCH_DIR,
        ).stdout.strip()
        return head[:70] + (" (+ uncommitted changes in billing/ or collector/)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5432/postgres", help="a superuser")
    p.add_argument("--small", action="store_true", help="quick run: 200k raw events this month, 2M in the year")
    p.add_argument("--current-events", type=int, help="raw events in the current month (10,000,000; --small 200,000)")
    p.add_argument("--total-events", type=int, help="events in the 12 months (100,000,000; --small 2,000,000)")
    p.add_argument("--accounts", type=int, default=2000)
    p.add_argument("--zipf-s", type=float, default=1.0, help="raised until the largest account has >= 10%%")
    p.add_argument("--passes", type=int, default=5, help="measured passes of month_to_date over every account")
    p.add_argument("--invoice-passes", type=int, default=2)
    p.add_argument("--raw-sample", type=int, default=100, help="accounts besides the largest for (1c)")
    p.add_argument("--batch-rows", type=int, default=20_000, help="rows per LedgerWriter batch (the receiver's)")
    p.add_argument("--pending-rows", type=int, default=1_000, help="last rows left unfolded (pending deltas)")
    p.add_argument("--seed", type=int, default=4)
    p.add_argument("--keep", action="store_true", help="keep the bench database (for --reuse)")
    p.add_argument("--reuse", action="store_true", help="measure a database kept by an earlier run of the same size")
    p.add_argument("--results", default=str(BENCH_DIR / "results"))
    args = p.parse_args(argv)
    if args.current_events is None:
        args.current_events = 200_000 if args.small else 10_000_000
    if args.total_events is None:
        args.total_events = 2_000_000 if args.small else 100_000_000
    if args.total_events < args.current_events:
        p.error("--total-events must include --current-events")
    args.dbname = "spanmeter_partition_reads" + ("_small" if args.small else "")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    admin = args.database_url
    url = make_conninfo(admin, dbname=args.dbname)
    zipf_s, probs = gen.zipf(args.accounts, args.zipf_s)
    accounts = [gen.account_id(r) for r in range(1, args.accounts + 1)]
    params = {k: getattr(args, k) for k in ("current_events", "total_events", "accounts", "zipf_s", "seed")}
    load = Load(admin, args.dbname)
    with psycopg.connect(admin, autocommit=True) as conn:
        server = {
            name: conn.execute(f"SHOW {name}").fetchone()[0]
            for name in ("server_version", "shared_buffers", "work_mem", "jit", "random_page_cost", "max_wal_size")
        }
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (args.dbname,)).fetchone() is not None
    log(f"spanmeter partition reads bench  {datetime.now(UTC).isoformat(timespec='seconds')}")
    log(f"  code under test: {code_under_test()}")
    log(f"  machine: {psutil.cpu_count()} cores, {Load.text(load.note(sample=True))}")
    log("  PostgreSQL " + ", ".join(f"{k}={v}" for k, v in server.items()) + f" (database {args.dbname})")
    log(
        f"  ledger: {args.total_events:,} events over 12 months, {args.current_events:,} of them raw in the current "
        f"month; {args.accounts:,} accounts, Zipf s={zipf_s} (largest {probs[0]:.1%})"
    )
    results: dict = {"args": vars(args), "zipf_s": zipf_s, "server": server, "code": code_under_test(), "load": {}}
    timeline = Timeline.after_cutover(datetime.now(UTC))
    reused = False
    try:
        if args.reuse and exists:
            with psycopg.connect(url) as conn:
                row = conn.execute("SELECT params, timeline, build FROM bench_partition_reads WHERE done").fetchone()
            if row is None or row[0] != json.loads(json.dumps(params)):
                raise SystemExit(f"--reuse: {args.dbname} was built with {row and row[0]}, not {params}")
            timeline = Timeline(
                [datetime.fromisoformat(m) for m in row[1]["older"]],
                datetime.fromisoformat(row[1]["current"]),
                datetime.fromisoformat(row[1]["as_of"]),
            )
            results["build"] = row[2]
            reused = True
            log(f"build: reusing {args.dbname} (built in {sum(row[2]['seconds'].values()):.0f} s)")
        else:
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(args.dbname)))
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(args.dbname)))
            log(
                f"build: months {timeline.older[0]:%Y-%m} .. {timeline.older[-1]:%Y-%m} as rollups, "
                f"{timeline.current:%Y-%m} raw; as of {timeline.as_of:%Y-%m-%d %H:%M} UTC"
            )
            t = time.monotonic()
            b = build(url, args, timeline, probs)
            b.seconds["total"] = time.monotonic() - t
            results["build"] = {"seconds": b.seconds, "notes": b.notes}
            with psycopg.connect(url) as conn:
                conn.execute(_META)
                conn.execute(
                    "INSERT INTO bench_partition_reads VALUES (%s, %s, %s, true)",
                    (
                        json.dumps(params),
                        json.dumps(
                            {
                                "older": [m.isoformat() for m in timeline.older],
                                "current": timeline.current.isoformat(),
                                "as_of": timeline.as_of.isoformat(),
                            }
                        ),
                        json.dumps(results["build"], default=str),
                    ),
                )
            log(f"  built in {b.seconds['total'] / 60:.1f} min")
        results["timeline"] = {
            "older": [m.isoformat() for m in timeline.older],
            "current": timeline.current.isoformat(),
            "as_of": timeline.as_of.isoformat(),
        }
        inv = results["inventory"] = inventory(url, timeline, args.accounts)
        log("ledger")
        for p in inv["partitions"]:
            log(f"  {p['name']:<28} {p['rows']:>12,} rows {mib(p['bytes']):>10}")
        for t, v in inv["tables"].items():
            log(f"  {t:<28} {v['rows']:>12,} rows {mib(v['bytes']):>10}")
        log(
            f"  events in the year (live daily rollups) {inv['year_events']:,}; largest account "
            f"{inv['year_largest'][0]} {inv['year_largest'][1]:,}; this month raw {inv['current_events']:,}, largest "
            f"{inv['current_largest'][0]} {inv['current_largest'][1]:,}; {inv['pending_deltas']:,} pending deltas "
            f"({inv['pending_events']:,} events)"
        )
        if inv["current_largest"][0] != accounts[0]:
            raise RuntimeError(f"the largest account this month is {inv['current_largest'][0]}, not {accounts[0]}")

        log(f"(1) month_to_date as of {timeline.as_of:%Y-%m-%d %H:%M}, every account, {args.passes} passes")
        load.start()
        m = results["mtd"] = measure_mtd(url, accounts, timeline.as_of, args.passes)
        results["load"]["mtd"] = load.note()
        log(
            f"    per account p50 {m['p50_ms']:.2f} ms, p99 {m['p99_ms']:.2f} ms, max {m['max_ms']:.2f} ms "
            f"({m['worst_account']}); largest {m['largest_ms']:.2f} ms; {Load.text(results['load']['mtd'])}"
        )
        log("(1b) refresh_month_to_date (serve's billing metrics), 2 runs")
        load.start()
        results["refresh"] = measure_refresh(url, timeline.as_of)
        results["load"]["refresh"] = load.note()
        log(
            "    " + ", ".join(f"{s:.2f} s" for s in results["refresh"]["seconds"]) + f"; "
            f"{results['refresh']['quota_series']} quota series; {Load.text(results['load']['refresh'])}"
        )
        log(f"(1c) spanmeter usage's raw totals (usage_totals), largest + {args.raw_sample} accounts")
        load.start()
        results["usage_cli"] = measure_usage_cli(url, accounts, timeline, args.raw_sample)
        results["load"]["usage_cli"] = load.note()
        log(
            f"    largest {results['usage_cli']['largest_ms']:,.0f} ms; others p50 "
            f"{results['usage_cli']['sample_p50_ms']:.1f} ms; {Load.text(results['load']['usage_cli'])}"
        )
        invoice_month = timeline.older[-1]
        log(f"(2) build_invoice for {invoice_month:%Y-%m}, every account, {args.invoice_passes} passes")
        load.start()
        results["invoices"] = measure_invoices(url, accounts, invoice_month, args.invoice_passes)
        results["load"]["invoices"] = load.note()
        log(
            "    passes "
            + ", ".join(f"{s:.2f} s" for s in results["invoices"]["pass_seconds"])
            + f"; {Load.text(results['load']['invoices'])}"
        )
        log("plans (EXPLAIN ANALYZE, BUFFERS)")
        pl = results["plans"] = plans(url, m["worst_account"], accounts[0], timeline, invoice_month)
        print_plan(
            f"(1) slowest account {m['worst_account']}: rollup_totals over {timeline.current:%Y-%m} (month_to_date's usage read)",
            pl["mtd_worst"],
        )
        print_plan(
            f"(2) largest account: rollup_totals over {invoice_month:%Y-%m} (build_invoice's usage read)",
            pl["invoice_largest"],
        )
        print_plan(
            f"(1c) largest account: usage_totals over {timeline.current:%Y-%m} (raw; pruned to one partition)",
            pl["usage_totals_largest"],
        )
        pruned = pl["usage_totals_partitions"]
        log(
            f"    partitions in the plan: {', '.join(pruned['scanned'])} ({len(pruned['scanned'])} of "
            f"{pruned['attached']} attached; the others pruned at planning)"
        )
        results["summary"] = summary(results, args)
    finally:
        if not args.keep and not reused:
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(args.dbname)))
            log(f"dropped database {args.dbname}")
        elif args.keep:
            log(f"kept database {args.dbname} (--reuse measures it again; drop it when done)")
    results["seconds"] = time.monotonic() - started
    log(f"run took {results['seconds'] / 60:.1f} min; {Load.text(load.note(sample=True))}")
    out_dir = Path(args.results)
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"partition-reads-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    out.write_text(json.dumps(results, default=str, indent=1))
    log(f"results: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
