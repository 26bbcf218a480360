#!/usr/bin/env python
"""spanmeter rating benchmark: month-to-date reads from the rollups and the raw ledger, rollup upkeep, invoices.

    .venv/bin/python bench/rating_bench.py            # full run: 10M events, 2,000 accounts (~12 min first time)
    .venv/bin/python bench/rating_bench.py --quick    # smoke run: 300,000 events, 200 accounts

One run, one dedicated embedded PostgreSQL (``--data-dir``, default ``bench/.data-rating``), one ledger of
``--events`` usage events over the 30 days 2026-10-01..2026-10-30 (UTC) for ``--accounts`` accounts with Zipf
sizes (weight 1/rank^s; the largest account, ``acct_00001``, holds >= 10% of the events). Figures:

1. ``rollup_totals(conn, account, 2026-10-01, 2026-10-30T18:00)`` (month to date as of Oct 30 18:00: 29 daily
   buckets + 18 hourly ones) for every account, ``--passes`` passes on one warm connection: per-account
   median, then p50/p99/max over accounts. Target: p99 <= 5 ms for every account.
2. the same month-to-date totals from the raw ``usage_events`` for the largest account, with the existing
   ``(account_id, occurred_at)`` index and with a covering index (created for the measurement, then dropped).
3. rollup upkeep: the same 2,000-row batches through ``LedgerWriter.write_usage`` + commit with the rollup
   delta trigger enabled (then the block's deltas folded, the time counted) vs disabled (``ALTER TABLE …
   DISABLE TRIGGER usage_events_rollup_deltas``), interleaved A/B;
   they land on Oct 31 (the live day after the prefill) and are deleted again at the end of the run.
4. rating every account for 2026-10: ``set_subscription`` for all, then ``build_invoice`` for all (target
   <= 10 s), and the pure ``rate_plan`` alone.

See bench/README.md ("Rating benchmark") for the method and the latest figures.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import random
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import psycopg
from psycopg import sql

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

import _ledger  # noqa: E402

DB = "spanmeter_bench_rating"
MONTH_START = datetime(2026, 10, 1, tzinfo=UTC)
PREFILL_END = MONTH_START + timedelta(days=30)  # 2026-10-31 00:00: stage 3 writes the live day after it
MTD_END = MONTH_START + timedelta(days=29, hours=18)  # month to date "as of" 2026-10-30 18:00 UTC
MONTH_US = 30 * 86_400 * 1_000_000
CHUNK_ROWS = 500_000
PLANS = ("starter", "growth", "scale", "platform")  # plan of rank a: PLANS[(a + 1) % 4] (the largest: scale)
MODELS = ("gpt-4o-mini", "claude-sonnet-4", "docpipe-classifier-small")
TRIGGER = "usage_events_rollup_deltas"  # migration 0005: appends rollup deltas; serve folds them
COVERING_INDEX = "bench_usage_events_account_time_cover"


def log(msg: str = "") -> None:
    print(msg, flush=True)


def account_id(rank: int) -> str:
    return f"acct_{rank:05d}"


def plan_of(rank: int) -> str:
    return PLANS[(rank + 1) % 4]


def pct(values: list[float], q: float) -> float:
    """The q-quantile (0..1), linear interpolation between closest ranks."""
    s = sorted(values)
    if not s:
        return float("nan")
    pos = (len(s) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def zipf(n: int, s: float, min_top: float = 0.10) -> tuple[float, list[float]]:
    """Probabilities 1/rank^s (normalised); s is raised until the top account gets >= min_top (+0.5%)."""
    while True:
        w = [1 / r**s for r in range(1, n + 1)]
        total = sum(w)
        probs = [x / total for x in w]
        if probs[0] >= min_top + 0.005 or n == 1:
            return s, probs
        s = round(s + 0.01, 2)


# -- PostgreSQL -----------------------------------------------------------------------------------------
class Postgres:
    """The dedicated embedded server under --data-dir, tuned like the ingest bench (restart when needed)."""

    def __init__(self, args: argparse.Namespace) -> None:
        from spanmeter.billing.ledger.embedded import EmbeddedPostgres

        self.args = args
        self.embedded = EmbeddedPostgres(Path(args.data_dir))
        self.started_here = False
        self.settings: dict[str, str] = {}

    def start(self) -> None:
        t = time.monotonic()
        self.started_here = not self.embedded.is_running()
        self.admin = _ledger.db_conninfo(self.embedded.start(), "postgres")
        wanted = {"shared_buffers": self.args.pg_shared_buffers, "max_wal_size": self.args.pg_max_wal_size}
        restart = _ledger.apply_server_settings(self.admin, wanted)
        if restart and self.started_here:
            import pgserver

            log("  restarting the embedded server to apply settings")
            self.embedded.stop()
            pgserver.PostgresServer._instances.pop(self.embedded.pgdata, None)
            self.admin = _ledger.db_conninfo(self.embedded.start(), "postgres")
        elif restart:
            log("  warning: shared_buffers/max_wal_size need a restart this run may not do (server not ours)")
        self.url = _ledger.db_conninfo(self.admin, DB)
        with _ledger.connect(self.admin, autocommit=True) as conn:
            self.version = conn.execute("SHOW server_version").fetchone()[0]
            for name in ("shared_buffers", "max_wal_size", "work_mem", "synchronous_commit", "jit"):
                self.settings[name] = conn.execute(f"SHOW {name}").fetchone()[0]
        log(f"  embedded PostgreSQL {self.version} in {self.embedded.pgdata} up in {time.monotonic() - t:.1f} s")

    def stop(self) -> None:
        if self.started_here:
            self.embedded.stop()


# -- prefill --------------------------------------------------------------------------------------------
_META = """
CREATE TABLE IF NOT EXISTS bench_meta (
    name text PRIMARY KEY, events bigint NOT NULL, accounts int NOT NULL, zipf_s double precision NOT NULL,
    prefill_done boolean NOT NULL DEFAULT false, rollups_done boolean NOT NULL DEFAULT false,
    seconds jsonb NOT NULL DEFAULT '{}'
)
"""

# One chunk of the month in time order (as real traffic arrives): Zipf account by inverse CDF
# (width_bucket over the cumulative probabilities), 70% worker_seconds with a job id (~4 spans per job),
# 10% input_tokens, 10% output_tokens (with gen_ai.model), 10% api_requests; random uuid keys.
_PREFILL = """
INSERT INTO usage_events (occurred_at, idempotency_key, account_id, meter_code, meter_version, quantity, unit,
                          job_id, plan_code, trace_id, span_id, received_at, metadata)
SELECT ts, gen_random_uuid(), 'acct_' || lpad(a::text, 5, '0'),
       (ARRAY['worker_seconds', 'input_tokens', 'output_tokens', 'api_requests'])[m], 1,
       CASE m WHEN 1 THEN round((0.1 + random() * 300)::numeric, 1)
              WHEN 4 THEN 1
              ELSE (1 + floor(random() * 4000))::numeric END,
       (ARRAY['s', '{token}', '{token}', '{request}'])[m],
       CASE WHEN m = 1 THEN
           'job-' || substr(md5(a::text || ':' || floor(random() * (%(jobs)s::int8[])[a])::text), 1, 16) END,
       (ARRAY['starter', 'growth', 'scale', 'platform'])[1 + (a + 1) %% 4],
       h, substr(md5(h), 1, 16),
       ts + random() * interval '400 ms',
       CASE WHEN m IN (2, 3) THEN jsonb_build_object('span.name', 'chat ' || model, 'gen_ai.model', model,
                                                    'service.name', 'svc-' || lpad((a %% 23)::text, 2, '0'))
            WHEN m = 1 THEN jsonb_build_object('span.name', 'run/tasks.render_report',
                                               'celery.task_name', 'tasks.render_report',
                                               'service.name', 'svc-' || lpad((a %% 23)::text, 2, '0'))
            ELSE jsonb_build_object('span.name', 'GET /v1/items', 'http.route', '/v1/items',
                                    'service.name', 'svc-' || lpad((a %% 23)::text, 2, '0')) END
FROM (
    SELECT %(t_start)s::timestamptz + ((g * %(step_us)s)::bigint + floor(random() * %(step_us)s)::bigint)
                                      * interval '1 microsecond' AS ts,
           1 + width_bucket(random(), %(cdf)s::float8[]) AS a,
           CASE WHEN r < 0.7 THEN 1 WHEN r < 0.8 THEN 2 WHEN r < 0.9 THEN 3 ELSE 4 END AS m,
           (ARRAY['gpt-4o-mini', 'claude-sonnet-4', 'docpipe-classifier-small'])[1 + floor(random() * 3)::int] AS model,
           md5(random()::text || g::text) AS h
    FROM (SELECT g, random() AS r FROM generate_series(%(lo)s::bigint, %(hi)s::bigint - 1) AS g) AS s0
) AS s
"""


def trim(url: str) -> int:
    """Remove what stage 3 added (rows from Oct 31 on, their rollup buckets and job ids); re-enable the
    rollup trigger. Bench database only: session_replication_role = replica skips the append-only trigger."""
    with _ledger.connect(url, autocommit=True) as conn:
        conn.execute(f"ALTER TABLE usage_events ENABLE TRIGGER {TRIGGER}")
        conn.execute("SET session_replication_role = replica")
        deleted = conn.execute("DELETE FROM usage_events WHERE occurred_at >= %s", (PREFILL_END,)).rowcount
        for table in ("usage_rollups_hourly", "usage_rollups_daily", "usage_rollup_deltas"):
            conn.execute(f"DELETE FROM {table} WHERE bucket_start >= %s", (PREFILL_END,))
        conn.execute("DELETE FROM usage_job_set_members WHERE job_id LIKE 'ingest-%%'")
        conn.execute("RESET session_replication_role")
        if deleted:
            conn.execute(
                "VACUUM (ANALYZE) usage_events, usage_rollups_hourly, usage_rollups_daily, usage_job_sets, usage_job_set_members"
            )
    return deleted


def prepare(pg: Postgres, args: argparse.Namespace, zipf_s: float, probs: list[float]) -> dict:
    """Schema, prefill (reused when it matches), rollups rebuilt and laid out in time order, VACUUM."""
    from spanmeter.billing.ledger import migrate, rollup_store
    from spanmeter.billing.ledger.database import resolve_database

    if args.reset:
        _ledger.drop_database(pg.admin, DB)
    _ledger.ensure_database(pg.admin, DB)
    with _ledger.connect(pg.url, autocommit=True) as conn:
        conn.execute(_META)
        meta = conn.execute(
            "SELECT events, accounts, zipf_s, prefill_done, rollups_done, seconds FROM bench_meta WHERE name = 'rating'"
        ).fetchone()
    if meta is not None and (meta[0], meta[1], round(meta[2], 2)) != (args.events, args.accounts, zipf_s):
        log(f"  existing ledger is {meta[0]:,} events / {meta[1]:,} accounts / s={meta[2]}: dropping it")
        _ledger.drop_database(pg.admin, DB)
        _ledger.ensure_database(pg.admin, DB)
        meta = None
    before, after = migrate.upgrade(resolve_database(pg.url, Path(args.data_dir)))
    log(f"  schema: {before or 'empty'} -> {after}")
    removed = trim(pg.url)
    if removed:
        log(f"  removed {removed:,} rows an earlier (interrupted) stage 3 left behind")
    info: dict = {"reused": bool(meta and meta[4])}
    with _ledger.connect(pg.url, autocommit=True) as conn:
        conn.execute(_META)
        if meta is None:
            conn.execute(
                "INSERT INTO bench_meta (name, events, accounts, zipf_s) VALUES ('rating', %s, %s, %s)",
                (args.events, args.accounts, zipf_s),
            )
            meta = (args.events, args.accounts, zipf_s, False, False, {})
        seconds = dict(meta[5])
        if not meta[3]:
            done = conn.execute("SELECT count(*) FROM usage_events").fetchone()[0]
            cdf, acc = [], 0.0
            for p in probs[:-1]:
                acc += p
                cdf.append(acc)
            jobs = [max(1, round(args.events * p * 0.7 / 4)) for p in probs]
            started = time.monotonic()
            # the rollup trigger is off for this session only (replica role): rollups are rebuilt afterwards
            conn.execute("SET session_replication_role = replica")
            while done < args.events:
                hi = min(args.events, done + CHUNK_ROWS)
                t = time.monotonic()
                conn.execute(
                    _PREFILL,
                    {
                        "t_start": MONTH_START,
                        "step_us": MONTH_US / args.events,
                        "lo": done,
                        "hi": hi,
                        "cdf": cdf,
                        "jobs": jobs,
                    },
                )
                rate = (hi - done) / (time.monotonic() - t)
                done = hi
                log(f"  prefill {done:,}/{args.events:,} ({rate:,.0f} rows/s, {time.monotonic() - started:.0f} s)")
            conn.execute("RESET session_replication_role")
            seconds["prefill"] = seconds.get("prefill", 0) + time.monotonic() - started
            conn.execute(
                "UPDATE bench_meta SET prefill_done = true, seconds = %s WHERE name = 'rating'", (json.dumps(seconds),)
            )
        if not meta[4]:
            t = time.monotonic()
            conn.execute("SET work_mem = '1GB'")
            counts = rollup_store.rebuild(conn)
            seconds["rebuild"] = time.monotonic() - t
            log(f"  rollup_store.rebuild: {counts} in {seconds['rebuild']:.0f} s")
            # rebuild() writes each account's rows together; the trigger writes them as time goes by, so one
            # account's buckets end up spread over the table. Re-lay them out in time order (random within
            # a bucket) so the reads below pay for that the way production does.
            t = time.monotonic()
            for table in ("usage_rollups_hourly", "usage_rollups_daily"):
                conn.execute(f"CREATE TEMP TABLE relayout AS SELECT * FROM {table}")
                conn.execute(f"TRUNCATE {table}")
                conn.execute(f"INSERT INTO {table} SELECT * FROM relayout ORDER BY bucket_start, random()")
                conn.execute("DROP TABLE relayout")
            conn.execute("RESET work_mem")
            seconds["relayout"] = time.monotonic() - t
            t = time.monotonic()
            conn.execute(
                "VACUUM (FREEZE, ANALYZE) usage_events, usage_rollups_hourly, usage_rollups_daily, usage_job_sets, usage_job_set_members"
            )
            conn.execute("CHECKPOINT")
            seconds["vacuum"] = time.monotonic() - t
            log(
                f"  relayout {seconds['relayout']:.0f} s, VACUUM (FREEZE, ANALYZE) + CHECKPOINT {seconds['vacuum']:.0f} s"
            )
            conn.execute(
                "UPDATE bench_meta SET rollups_done = true, seconds = %s WHERE name = 'rating'", (json.dumps(seconds),)
            )
        else:
            log(f"  reusing the prefill and rollups (built in {sum(seconds.values()):.0f} s: {_fmt_seconds(seconds)})")
        info["build_seconds"] = seconds
        info["rows"] = conn.execute("SELECT count(*) FROM usage_events").fetchone()[0]
        by_account = dict(
            conn.execute("SELECT account_id, sum(events)::bigint FROM usage_rollups_daily GROUP BY account_id")
        )
        largest = account_id(1)
        info["largest_raw_count"] = conn.execute(
            "SELECT count(*) FROM usage_events WHERE account_id = %s", (largest,)
        ).fetchone()[0]
        info["largest_rollup_events"] = by_account.get(largest, 0)
        counts = sorted(by_account.values())
        info["accounts_with_events"] = len(counts)
        info["events_per_account"] = {"min": counts[0], "median": pct(counts, 0.5), "max": counts[-1]}
        info["rollup_rows"] = {
            t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
            for t in ("usage_rollups_hourly", "usage_rollups_daily", "usage_rollup_jobs")
        }
        # usage_events is partitioned (0010): its size is its partitions'; the jobs are a view over the job sets (0009)
        size = "SELECT sum(pg_total_relation_size(relid)) / 1048576.0 FROM pg_partition_tree(%s)"
        info["sizes_mib"] = {
            t: float(conn.execute(size, (table,)).fetchone()[0] or 0)
            for t, table in (
                ("usage_events", "usage_events"),
                ("usage_rollups_hourly", "usage_rollups_hourly"),
                ("usage_rollups_daily", "usage_rollups_daily"),
                ("usage_rollup_jobs", "usage_job_set_members"),
            )
        }
        info["largest_hourly_rows_mtd"] = conn.execute(
            "SELECT count(*) FROM usage_rollups_hourly WHERE account_id = %s AND bucket_start >= %s AND bucket_start < %s",
            (largest, MONTH_START, MTD_END),
        ).fetchone()[0]
    return info


def _fmt_seconds(seconds: dict) -> str:
    return ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items())


# -- helpers for plans ----------------------------------------------------------------------------------
def explain(conn: psycopg.Connection, query: str, params) -> dict:
    """EXPLAIN (ANALYZE, BUFFERS): execution ms, scan nodes (relation/index, rows, rows removed by filter,
    heap fetches, shared buffers hit/read)."""
    (plan,) = conn.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + query, params).fetchone()
    scans: list[dict] = []

    def walk(node: dict) -> None:
        if "Scan" in node["Node Type"]:
            scans.append(
                {
                    "node": node["Node Type"],
                    "relation": node.get("Relation Name"),
                    "index": node.get("Index Name"),
                    "rows": node.get("Actual Rows", 0) * node.get("Actual Loops", 1),
                    "removed_by_filter": node.get("Rows Removed by Filter", 0),
                    "heap_fetches": node.get("Heap Fetches"),
                    "shared_hit": node.get("Shared Hit Blocks", 0),
                    "shared_read": node.get("Shared Read Blocks", 0),
                }
            )
        for child in node.get("Plans", []):
            walk(child)

    walk(plan[0]["Plan"])
    return {"execution_ms": plan[0]["Execution Time"], "scans": scans}


def scans_text(plan: dict) -> str:
    parts = []
    for s in plan["scans"]:
        name = s["index"] or s["relation"]
        extra = f", {s['removed_by_filter']:,} removed by filter" if s["removed_by_filter"] else ""
        extra += f", heap fetches {s['heap_fetches']:,}" if s["heap_fetches"] is not None else ""
        parts.append(f"{s['node']} {name}: {s['rows']:,} rows{extra}, {s['shared_hit'] + s['shared_read']:,} buffers")
    return "; ".join(parts)


# -- stage 1: month to date from the rollups --------------------------------------------------------------
def stage_rollup_reads(url: str, accounts: list[str], passes: int) -> dict:
    from spanmeter.billing import rollups
    from spanmeter.billing.ledger import rollup_store

    largest = accounts[0]
    lat: dict[str, list[float]] = {a: [] for a in accounts}
    with psycopg.connect(url, autocommit=True) as conn:
        for a in accounts:  # warm-up pass (connection, prepared statements, buffers): not counted
            rollups.rollup_totals(conn, a, MONTH_START, MTD_END)
        order = list(accounts)
        rng = random.Random(1)
        for _ in range(passes):
            rng.shuffle(order)
            for a in order:
                t = time.perf_counter()
                rollups.rollup_totals(conn, a, MONTH_START, MTD_END)
                lat[a].append((time.perf_counter() - t) * 1e3)
        day_from, day_to = rollups.split_days(MONTH_START, MTD_END)
        params = {"account": largest, "start": MONTH_START, "end": MTD_END, "day_from": day_from, "day_to": day_to}
        plan_mtd = explain(conn, rollup_store.TOTALS, params)
        period_end = datetime(2026, 11, 1, tzinfo=UTC)
        params = {
            "account": largest,
            "start": MONTH_START,
            "end": period_end,
            "day_from": MONTH_START,
            "day_to": period_end,
        }
        plan_period = explain(conn, rollup_store.TOTALS, params)
        # psycopg prepares a statement on its 5th execution; PostgreSQL may then switch to a generic plan,
        # which cannot turn the hourly branch's NOT (day range) into two index ranges. Show that plan.
        numbered = rollup_store.TOTALS
        for i, name in enumerate(("account", "start", "end", "day_from", "day_to"), start=1):
            numbered = numbered.replace(f"%({name})s", f"${i}")
        conn.execute(f"PREPARE bench_totals (text, timestamptz, timestamptz, timestamptz, timestamptz) AS {numbered}")
        conn.execute("SET plan_cache_mode = force_generic_plan")
        generic = (largest, MONTH_START, MTD_END, day_from, day_to)
        literals = sql.SQL(", ").join(sql.Literal(v) for v in generic).as_string(conn)
        plan_generic = explain(conn, f"EXECUTE bench_totals ({literals})", None)
        conn.execute("RESET plan_cache_mode")
        conn.execute("DEALLOCATE bench_totals")
    with psycopg.connect(url, autocommit=True, prepare_threshold=None) as conn:  # never prepared: custom plans
        for a in accounts[:1] * 5:
            rollups.rollup_totals(conn, a, MONTH_START, MTD_END)
        unprepared = []
        for _ in range(max(20, passes)):
            t = time.perf_counter()
            rollups.rollup_totals(conn, largest, MONTH_START, MTD_END)
            unprepared.append((time.perf_counter() - t) * 1e3)
    medians = {a: statistics.median(v) for a, v in lat.items()}
    meds = list(medians.values())
    every = [x for v in lat.values() for x in v]
    worst = max(medians, key=medians.get)
    return {
        "passes": passes,
        "p50_ms": pct(meds, 0.5),
        "p99_ms": pct(meds, 0.99),
        "max_ms": max(meds),
        "worst_account": worst,
        "all_calls_p99_ms": pct(every, 0.99),
        "all_calls_max_ms": max(every),
        "largest_ms": medians[largest],
        "largest_max_ms": max(lat[largest]),
        "accounts_over_5ms": sum(1 for m in meds if m > 5.0),
        "plan_largest_mtd": plan_mtd,
        "plan_largest_full_period": plan_period,
        "plan_largest_mtd_generic": plan_generic,
        "largest_unprepared_ms": statistics.median(unprepared),
        "per_account_median_ms": medians,
    }


# -- stage 2: the same totals from the raw ledger ---------------------------------------------------------
RAW_TOTALS = """
SELECT meter_code, sum(quantity), count(*) FROM usage_events
 WHERE account_id = %s AND occurred_at >= %s AND occurred_at < %s GROUP BY meter_code
"""
RAW_EXACT = """
SELECT meter_code, coalesce(plan_code, ''), sum(quantity), count(*), array_agg(DISTINCT meter_version) FROM usage_events
 WHERE account_id = %s AND occurred_at >= %s AND occurred_at < %s GROUP BY 1, 2
"""


def _time(conn: psycopg.Connection, query: str, params, runs: int) -> tuple[float, list[float], list]:
    result = conn.execute(query, params).fetchall()  # warm-up, not counted
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        conn.execute(query, params).fetchall()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times), times, result


def stage_raw_reads(url: str, largest: str, typical: str, runs: int) -> dict:
    from spanmeter.billing import rollups

    out: dict = {"runs": runs}
    with psycopg.connect(url, autocommit=True) as conn:
        for label, acct in (("largest", largest), ("typical", typical)):
            params = (acct, MONTH_START, MTD_END)
            ms, times, rows = _time(conn, RAW_TOTALS, params, runs)
            out[f"{label}_existing_ms"], out[f"{label}_existing_runs"] = ms, times
            out[f"{label}_existing_plan"] = explain(conn, RAW_TOTALS, params)
            if any(scan["node"] == "Seq Scan" for scan in out[f"{label}_existing_plan"]["scans"]):
                # the planner prefers a full scan: time the index path too and keep the faster one
                out[f"{label}_planner_ms"], out[f"{label}_planner_plan"] = ms, out[f"{label}_existing_plan"]
                conn.execute("SET enable_seqscan = off")
                ms2, times2, _ = _time(conn, RAW_TOTALS, params, runs)
                plan2 = explain(conn, RAW_TOTALS, params)
                conn.execute("RESET enable_seqscan")
                out[f"{label}_index_path_ms"], out[f"{label}_index_path_plan"] = ms2, plan2
                if ms2 < ms:
                    out[f"{label}_existing_ms"], out[f"{label}_existing_runs"] = ms2, times2
                    out[f"{label}_existing_plan"] = plan2
            if label == "largest":
                totals = rollups.rollup_totals(conn, acct, MONTH_START, MTD_END)
                out["largest_matches_rollups"] = all(
                    totals[m].quantity == Decimal(q) and totals[m].events == n for m, q, n in rows
                ) and len(rows) == len(totals)
                ms, times, _ = _time(conn, RAW_EXACT, params, runs)
                out["largest_exact_existing_ms"], out["largest_exact_existing_runs"] = ms, times
        t = time.monotonic()
        conn.execute("SET maintenance_work_mem = '1GB'")
        conn.execute(f"DROP INDEX IF EXISTS {COVERING_INDEX}")
        conn.execute(
            f"CREATE INDEX {COVERING_INDEX} ON usage_events (account_id, occurred_at) INCLUDE (meter_code, quantity)"
        )
        out["covering_build_s"] = time.monotonic() - t
        out["covering_mib"] = conn.execute(f"SELECT pg_relation_size('{COVERING_INDEX}') / 1048576.0").fetchone()[0]
        try:
            for label, acct in (("largest", largest), ("typical", typical)):
                params = (acct, MONTH_START, MTD_END)
                ms, times, _ = _time(conn, RAW_TOTALS, params, runs)
                out[f"{label}_covering_ms"], out[f"{label}_covering_runs"] = ms, times
                out[f"{label}_covering_plan"] = explain(conn, RAW_TOTALS, params)
        finally:
            conn.execute(f"DROP INDEX IF EXISTS {COVERING_INDEX}")
    return out


# -- stage 4: rating every account -------------------------------------------------------------------------
def stage_rating(url: str, ranks: list[int], passes: int) -> dict:
    from spanmeter.billing import rollups
    from spanmeter.billing.invoices import build_invoice
    from spanmeter.billing.periods import Period
    from spanmeter.billing.rating import PRICING_VERSIONS, rate_plan
    from spanmeter.billing.subscriptions import set_subscription

    period = Period(2026, 10)
    accounts = [account_id(r) for r in ranks]
    out: dict = {}
    with psycopg.connect(url) as conn:
        conn.execute("SET session_replication_role = replica")  # bench database only: start from no subscriptions
        conn.execute("DELETE FROM subscriptions")
        conn.execute("RESET session_replication_role")
        conn.commit()
        t = time.perf_counter()
        for r in ranks:
            set_subscription(
                conn,
                account_id=account_id(r),
                plan_code=plan_of(r),
                pricing_version="v2_compute",
                valid_from=MONTH_START,
                created_by="rating_bench",
            )
        conn.commit()
        out["set_subscription_s"] = time.perf_counter() - t
    with psycopg.connect(url, autocommit=True) as conn:
        pass_totals, invoices = [], {}
        per_account: dict[str, list[float]] = {a: [] for a in accounts}
        for _ in range(passes):
            t0 = time.perf_counter()
            for a in accounts:
                t = time.perf_counter()
                invoices[a] = build_invoice(conn, a, period)
                per_account[a].append((time.perf_counter() - t) * 1e3)
            pass_totals.append(time.perf_counter() - t0)
        out["build_invoice_pass_s"] = pass_totals
        out["build_invoice_s"] = max(pass_totals)  # judged on the slowest pass
        meds = [statistics.median(v) for v in per_account.values()]
        out["build_invoice_account_p50_ms"] = pct(meds, 0.5)
        out["build_invoice_account_p99_ms"] = pct(meds, 0.99)
        out["build_invoice_largest_ms"] = statistics.median(per_account[accounts[0]])
        out["invoices_total_eur"] = str(sum((inv.total for inv in invoices.values()), Decimal(0)))
        out["largest_invoice_total_eur"] = str(invoices[accounts[0]].total)
        # where an invoice's time goes: the usage read (rollup_totals over the whole period) alone
        t = time.perf_counter()
        for a in accounts:
            rollups.rollup_totals(conn, a, period.start, period.end)
        out["rollup_totals_period_s"] = time.perf_counter() - t
    plans = PRICING_VERSIONS["v2_compute"].plans
    work = [(invoices[account_id(r)].usage, plans[plan_of(r)]) for r in ranks]
    times = []
    for _ in range(5):
        t = time.perf_counter()
        for usage, plan in work:
            rate_plan(usage, plan)
        times.append(time.perf_counter() - t)
    out["rate_plan_s"] = statistics.median(times)
    out["rate_plan_runs_s"] = times
    return out


# -- stage 4b: per-model prices from a price book, side by side with v2_compute -------------------------------
_BENCH_BOOK = {
    "book": "bench",
    "version": "2026-01",
    "effective_from": "2026-01-01T00:00:00Z",
    "currency": "EUR",
    "description": "rating bench: the three models of the bench ledger at different prices",
    "tokens": {
        "per": 1000000,
        "models": [
            {
                "model": "gpt-4o-mini",
                "price": {"input": "0.30", "output": "1.20"},
                "cost": {"input": "0.14", "output": "0.55"},
            },
            {
                "model": "claude-sonnet-4",
                "price": {"input": "4.00", "output": "18.00"},
                "cost": {"input": "3.00", "output": "15.00"},
            },
            {"model": "docpipe-classifier-small", "price": {"input": "0.05", "output": "0.10"}},
        ],
    },
    "gpus": {"per": 1, "models": [{"model": "l4", "price": "0.00025"}]},
}


def stage_rating_models(url: str, ranks: list[int], passes: int) -> dict:
    """build_invoice for every account under v2_compute (one rate per token) and under a per-model pricing
    version over a price book (``pricing_override``), passes alternating on one connection; then ``invoice
    explain`` for the largest account on each."""
    from spanmeter.billing import prices
    from spanmeter.billing.explain import explain_invoice
    from spanmeter.billing.invoices import build_invoice
    from spanmeter.billing.periods import Period
    from spanmeter.billing.pricebook import parse_book
    from spanmeter.billing.pricebook.parse import read_document
    from spanmeter.billing.rating.plan_data import parse_pricing_version
    from spanmeter.billing.subscriptions import set_subscription

    period = Period(2026, 10)
    accounts = [account_id(r) for r in ranks]
    version = {**read_document(BENCH_DIR.parent / "demo" / "pricing" / "v3_models.yaml"), "pricing_version": "v3_bench",
               "price_book": "bench"}  # fmt: skip
    with psycopg.connect(url) as conn:
        prices.import_book(conn, parse_book(_BENCH_BOOK), imported_by="rating_bench", drift_window=timedelta(days=2))
        prices.import_pricing_version(conn, parse_pricing_version(version), imported_by="rating_bench")
        conn.commit()
    out: dict = {"v2_pass_s": [], "models_pass_s": []}
    totals: dict[str, Decimal] = {}
    with psycopg.connect(url, autocommit=True) as conn:
        for _ in range(passes):
            for key, override in (("v2_pass_s", None), ("models_pass_s", "v3_bench")):
                t0 = time.perf_counter()
                for a in accounts:
                    invoice = build_invoice(conn, a, period, pricing_override=override)
                    if override:
                        totals[a] = invoice.total
                        assert not invoice.unpriced_models, invoice.unpriced_models
                out[key].append(time.perf_counter() - t0)
        out["v2_s"] = statistics.median(out["v2_pass_s"])
        out["models_s"] = statistics.median(out["models_pass_s"])
        out["ratio"] = out["models_s"] / out["v2_s"]
        out["models_invoices_total_eur"] = str(sum(totals.values(), Decimal(0)))
        largest = accounts[0]
        runs = []
        for _ in range(3):
            t = time.perf_counter()
            _, explained = explain_invoice(conn, largest, period)
            runs.append(time.perf_counter() - t)
        out["explain_v2_largest_s"] = statistics.median(runs)
        out["explain_v2_lines"] = len(explained)
    with psycopg.connect(url) as conn:  # the largest account moves to the per-model version (a new row supersedes)
        set_subscription(conn, account_id=largest, plan_code=plan_of(1), pricing_version="v3_bench",
                         valid_from=MONTH_START, created_by="rating_bench")  # fmt: skip
        conn.commit()
    with psycopg.connect(url, autocommit=True) as conn:
        runs = []
        for _ in range(3):
            t = time.perf_counter()
            _, explained = explain_invoice(conn, largest, period)
            runs.append(time.perf_counter() - t)
        out["explain_models_largest_s"] = statistics.median(runs)
        out["explain_models_lines"] = len(explained)
        out["explain_models_rows"] = sum(int(t["rows"]) for e in explained for t in e.totals)
        # one line priced per model (`invoice explain --line N`): the largest such line of the largest account
        book_lines = [e for e in explained if e.line.get("price_book")]
        line = max(book_lines, key=lambda e: sum(Decimal(t["quantity"]) for t in e.totals))
        runs = []
        for _ in range(3):
            t = time.perf_counter()
            explain_invoice(conn, largest, period, line_no=line.line_no)
            runs.append(time.perf_counter() - t)
        out["explain_line_s"] = statistics.median(runs)
        out["explain_line_rows"] = sum(int(t["rows"]) for t in line.totals)
    return out


# -- stage 3: rollup upkeep per 1,000 ingested rows ---------------------------------------------------------
_META_WORKER = json.dumps(
    {"span.name": "run/tasks.render_report", "celery.task_name": "tasks.render_report", "service.name": "svc-01"},
    separators=(",", ":"),
)
_META_API = json.dumps({"span.name": "GET /v1/items", "http.route": "/v1/items"}, separators=(",", ":"))
_META_MODEL = {m: json.dumps({"span.name": f"chat {m}", "gen_ai.model": m}, separators=(",", ":")) for m in MODELS}


def make_templates(probs: list[float], batches: int, batch_rows: int, seed: int = 42) -> list[list[tuple]]:
    """The batches every block writes: Zipf accounts, the stage's meter mix, times inside one hour in order
    (batch b covers the b-th slice of the hour, like a receiver at the live edge). Keys, trace/span ids and
    job ids are made fresh per block (the same rows twice would be duplicates, skipped by ON CONFLICT)."""
    rng = random.Random(seed)
    ranks = list(range(1, len(probs) + 1))
    cum, acc = [], 0.0
    for p in probs:
        acc += p
        cum.append(acc)
    block_rows = batches * batch_rows
    slice_us = 3_600_000_000 // batches
    templates = []
    for b in range(batches):
        rows = []
        for rank in rng.choices(ranks, cum_weights=cum, k=batch_rows):
            offset = b * slice_us + rng.randrange(slice_us)
            r = rng.random()
            if r < 0.7:
                jobs = max(1, int(probs[rank - 1] * block_rows * 0.7 / 4))  # ~4 spans per job
                rows.append(
                    (
                        offset,
                        rank,
                        rng.randrange(jobs),
                        "worker_seconds",
                        f"{rng.randint(1, 3000) / 10:.1f}",
                        "s",
                        _META_WORKER,
                    )
                )
            elif r < 0.9:
                meter = "input_tokens" if r < 0.8 else "output_tokens"
                rows.append(
                    (offset, rank, None, meter, str(rng.randint(1, 4000)), "{token}", _META_MODEL[rng.choice(MODELS)])
                )
            else:
                rows.append((offset, rank, None, "api_requests", "1", "{request}", _META_API))
        rows.sort(key=lambda row: row[0])
        templates.append(rows)
    return templates


def materialize(templates: list[list[tuple]], block: int, rng: random.Random) -> list[list[tuple]]:
    """UsageEventTuple batches for block ``block`` (hour ``block`` of Oct 31)."""
    base_us = int(PREFILL_END.timestamp() * 1_000_000) + block * 3_600_000_000
    bits = rng.getrandbits
    out = []
    for tmpl in templates:
        out.append(
            [
                (
                    base_us + offset,
                    f"{bits(128):032x}",
                    account_id(rank),
                    None if job is None else f"ingest-{block:02d}-{rank}-{job}",
                    plan_of(rank),
                    meter,
                    1,
                    quantity,
                    unit,
                    f"{bits(128):032x}",
                    f"{bits(64):016x}",
                    metadata,
                )
                for offset, rank, job, meter, quantity, unit, metadata in tmpl
            ]
        )
    return out


def stage_ingest(url: str, probs: list[float], rounds: int, batches: int, batch_rows: int) -> dict:
    from spanmeter.billing.ledger import rollup_store
    from spanmeter.billing.ledger.writer import LedgerWriter

    templates = make_templates(probs, batches, batch_rows)
    rng = random.Random(7)
    blocks: list[dict] = []
    admin = psycopg.connect(url, autocommit=True)
    wconn = psycopg.connect(url)
    try:
        wconn.execute("SET track_functions = 'pl'")  # pg_stat_user_functions: time inside the trigger function
        wconn.commit()
        writer = LedgerWriter(wconn)

        def trigger_ms() -> tuple[int, float]:
            admin.execute("SELECT pg_stat_clear_snapshot()")
            row = admin.execute(
                "SELECT coalesce(sum(calls), 0), coalesce(sum(total_time), 0) FROM pg_stat_user_functions"
                " WHERE funcname = 'spanmeter_rollup_deltas'"
            ).fetchone()
            return int(row[0]), float(row[1])

        def run_block(block: int, enabled: bool, n_batches: int) -> dict:
            admin.execute(f"ALTER TABLE usage_events {'ENABLE' if enabled else 'DISABLE'} TRIGGER {TRIGGER}")
            work = materialize(templates[:n_batches], block, rng)
            admin.execute("CHECKPOINT")  # every block starts right after a checkpoint (full-page writes alike)
            calls0, ms0 = trigger_ms()
            latencies = []
            for rows in work:
                t = time.perf_counter()
                result = writer.write_usage(rows)
                wconn.commit()
                latencies.append(time.perf_counter() - t)
                if result.inserted != len(rows):
                    raise RuntimeError(f"block {block}: {result.inserted} of {len(rows)} rows were new")
            fold_seconds = 0.0
            if enabled:  # the upkeep's second half: fold the block's deltas, as serve does in the background
                t = time.perf_counter()
                while rollup_store.fold(wconn).deltas:
                    pass
                fold_seconds = time.perf_counter() - t
            wconn.execute("SELECT pg_stat_force_next_flush()")
            wconn.commit()
            time.sleep(0.3)
            calls1, ms1 = trigger_ms()
            rows_n = sum(len(r) for r in work)
            seconds = sum(latencies) + fold_seconds
            return {
                "block": block,
                "trigger": enabled,
                "rows": rows_n,
                "seconds": seconds,
                "ms_per_1k": seconds * 1e3 / (rows_n / 1000),
                "rows_per_s": rows_n / seconds,
                "batch_p50_ms": pct(latencies, 0.5) * 1e3,
                "batch_p99_ms": pct(latencies, 0.99) * 1e3,
                "trigger_calls": calls1 - calls0,
                "fold_ms_per_1k": fold_seconds * 1e3 / (rows_n / 1000),
                "trigger_fn_ms_per_1k": (ms1 - ms0) / (rows_n / 1000),
            }

        warm = run_block(0, True, min(10, batches))
        log(f"    warm-up block (trigger on, not counted): {warm['ms_per_1k']:.1f} ms per 1,000 rows")
        block = 1
        for rnd in range(rounds):
            for enabled in (True, False) if rnd % 2 == 0 else (False, True):
                res = run_block(block, enabled, batches)
                blocks.append(res)
                log(
                    f"    round {rnd + 1} trigger {'on ' if enabled else 'off'}: {res['rows']:,} rows, "
                    f"{res['ms_per_1k']:.1f} ms per 1,000 rows ({res['rows_per_s']:,.0f} rows/s), batch p50 "
                    f"{res['batch_p50_ms']:.0f} ms p99 {res['batch_p99_ms']:.0f} ms; trigger function "
                    f"{res['trigger_fn_ms_per_1k']:.1f} ms per 1,000 rows in {res['trigger_calls']} calls; fold "
                    f"{res['fold_ms_per_1k']:.1f} ms per 1,000 rows"
                )
                block += 1
        admin.execute(f"ALTER TABLE usage_events ENABLE TRIGGER {TRIGGER}")
        # the rollups must hold exactly the rows written with the trigger on (warm-up included)
        expected = warm["rows"] + sum(b["rows"] for b in blocks if b["trigger"])
        got = admin.execute(
            "SELECT coalesce(sum(events), 0) FROM usage_rollups_daily_live WHERE bucket_start >= %s", (PREFILL_END,)
        ).fetchone()[0]
    finally:
        wconn.close()
        admin.execute(f"ALTER TABLE usage_events ENABLE TRIGGER {TRIGGER}")
        admin.close()
    on = [b for b in blocks if b["trigger"]]
    off = [b for b in blocks if not b["trigger"]]
    ms_on = statistics.median(b["ms_per_1k"] for b in on)
    ms_off = statistics.median(b["ms_per_1k"] for b in off)
    return {
        "rounds": rounds,
        "batches": batches,
        "batch_rows": batch_rows,
        "ms_per_1k_on": ms_on,
        "ms_per_1k_off": ms_off,
        "ms_per_1k_diff": ms_on - ms_off,
        "rows_per_s_ratio": ms_off / ms_on,
        "trigger_fn_ms_per_1k": statistics.median(b["trigger_fn_ms_per_1k"] for b in on),
        "fold_ms_per_1k": statistics.median(b["fold_ms_per_1k"] for b in on),
        "rollup_events_check": {"expected": expected, "in_rollups": int(got), "exact": expected == int(got)},
        "warmup": warm,
        "blocks": blocks,
    }


# -- main ------------------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--events", type=int, default=None, help="usage events in the ledger (10,000,000; --quick 300,000)")
    p.add_argument("--accounts", type=int, default=None, help="accounts (2,000; --quick 200)")
    p.add_argument("--zipf-s", type=float, default=1.0, help="Zipf exponent; raised until the top account has >= 10%%")
    p.add_argument("--passes", type=int, default=5, help="measured passes over all accounts for figure (1)")
    p.add_argument("--raw-runs", type=int, default=3, help="timed runs of each raw-table query for figure (2)")
    p.add_argument("--ab-rounds", type=int, default=3, help="A/B rounds (one block on, one off) for figure (3)")
    p.add_argument("--batches", type=int, default=50, help="batches per block for figure (3)")
    p.add_argument("--batch-rows", type=int, default=2000, help="rows per batch for figure (3)")
    p.add_argument("--invoice-passes", type=int, default=2, help="passes of build_invoice over all accounts")
    p.add_argument("--quick", action="store_true", help="smoke run: 300,000 events, 200 accounts")
    p.add_argument("--data-dir", default=str(BENCH_DIR / ".data-rating"), help="dedicated embedded PostgreSQL")
    p.add_argument("--pg-shared-buffers", default="4GB", help="'' keeps the server's value")
    p.add_argument("--pg-max-wal-size", default="4GB", help="'' keeps the server's value")
    p.add_argument("--reset", action="store_true", help="drop the bench database and build a new prefill")
    p.add_argument("--keep-db", action="store_true", help="leave the embedded server running at the end")
    p.add_argument("--results", default=str(BENCH_DIR / "results"), help="where the JSON results go")
    args = p.parse_args(argv)
    if args.events is None:
        args.events = 300_000 if args.quick else 10_000_000
    if args.accounts is None:
        args.accounts = 200 if args.quick else 2_000
    if args.ab_rounds * 2 + 1 > 24:
        p.error("--ab-rounds: at most 11 (one hour of Oct 31 per block)")
    return args


def code_under_test() -> str:
    try:
        head = subprocess.run(
            ["git", "log", "-1", "--format=%h %s"], capture_output=True, text=True, cwd=BENCH_DIR, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "billing"], capture_output=True, text=True, cwd=BENCH_DIR
        ).stdout.strip()
        return head[:70] + (" (+ uncommitted changes in billing/)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    zipf_s, probs = zipf(args.accounts, args.zipf_s)
    ranks = list(range(1, args.accounts + 1))
    accounts = [account_id(r) for r in ranks]
    started = time.monotonic()
    log(f"spanmeter rating bench  {datetime.now(UTC).isoformat(timespec='seconds')}")
    log(f"  code under test: {code_under_test()}")
    log(
        f"  ledger: {args.events:,} events, {args.accounts:,} accounts, Zipf s={zipf_s} (largest expected "
        f"{probs[0]:.1%} = {args.events * probs[0]:,.0f} events), {MONTH_START:%Y-%m-%d}..{PREFILL_END - timedelta(days=1):%Y-%m-%d}"
    )
    Path(args.data_dir).mkdir(parents=True, exist_ok=True)
    lock = open(Path(args.data_dir) / "bench.lock", "w")  # noqa: SIM115 (held for the whole run)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        log(f"rating_bench: another run is using {args.data_dir} (bench.lock is held); wait or pass --data-dir")
        return 2
    pg = Postgres(args)
    pg.start()
    log("  " + ", ".join(f"{k}={v}" for k, v in pg.settings.items()))
    results: dict = {"args": vars(args), "zipf_s": zipf_s, "code": code_under_test(), "postgres": pg.version}
    try:
        log("prepare")
        t = time.monotonic()
        info = results["ledger"] = prepare(pg, args, zipf_s, probs)
        log(f"  prepare took {time.monotonic() - t:.0f} s this run")
        log(
            f"  usage_events: {info['rows']:,} rows, {info['sizes_mib']['usage_events'] / 1024:.2f} GiB; accounts with "
            f"events {info['accounts_with_events']:,}; events per account min {info['events_per_account']['min']:,} "
            f"median {info['events_per_account']['median']:,.0f} max {info['events_per_account']['max']:,}"
        )
        log(
            f"  largest account {accounts[0]}: {info['largest_raw_count']:,} events (raw count; rollups say "
            f"{info['largest_rollup_events']:,}); {info['largest_hourly_rows_mtd']:,} hourly rollup rows month to date"
        )
        log(
            "  rollups: "
            + ", ".join(f"{t} {n:,} rows ({info['sizes_mib'][t]:,.0f} MiB)" for t, n in info["rollup_rows"].items())
        )

        log(f"(1) month to date from the rollups, all {len(accounts):,} accounts, {args.passes} passes")
        t = time.monotonic()
        r1 = results["1"] = stage_rollup_reads(pg.url, accounts, args.passes)
        log(
            f"    per-account median: p50 {r1['p50_ms']:.2f} ms, p99 {r1['p99_ms']:.2f} ms, max {r1['max_ms']:.2f} ms "
            f"({r1['worst_account']}); all calls p99 {r1['all_calls_p99_ms']:.2f} ms max {r1['all_calls_max_ms']:.2f} ms;"
            f" largest {r1['largest_ms']:.2f} ms (max of passes {r1['largest_max_ms']:.2f}); {time.monotonic() - t:.0f} s"
        )
        log(
            f"    largest on a connection that never prepares (custom plans only): {r1['largest_unprepared_ms']:.2f} ms"
        )
        for key, label in (
            ("plan_largest_mtd", "month to date, custom plan"),
            ("plan_largest_mtd_generic", "month to date, generic plan"),
            ("plan_largest_full_period", "whole period, custom plan"),
        ):
            plan = r1[key]
            log(f"    EXPLAIN largest, {label}: {plan['execution_ms']:.2f} ms in the server; {scans_text(plan)}")

        log(f"(2) month to date from the raw ledger, {args.raw_runs} runs each (after 1 warm-up)")
        t = time.monotonic()
        r2 = results["2"] = stage_raw_reads(pg.url, accounts[0], accounts[len(accounts) // 2], args.raw_runs)
        for label in ("largest", "typical"):
            for idx in ("existing", "covering"):
                log(
                    f"    {label} ({accounts[0] if label == 'largest' else accounts[len(accounts) // 2]}), {idx} index: "
                    f"p50 {r2[f'{label}_{idx}_ms']:,.1f} ms; {scans_text(r2[f'{label}_{idx}_plan'])}"
                )
            if f"{label}_planner_ms" in r2:
                log(
                    f"    {label}: the planner chose a full scan ({r2[f'{label}_planner_ms']:,.1f} ms; "
                    f"{scans_text(r2[f'{label}_planner_plan'])}); index path with enable_seqscan=off: "
                    f"{r2[f'{label}_index_path_ms']:,.1f} ms; the faster is reported"
                )
        log(
            f"    largest, exact rollup_totals equivalent (plan code split, meter versions), planner's plan: "
            f"p50 {r2['largest_exact_existing_ms']:,.1f} ms; raw totals match the rollups: {r2['largest_matches_rollups']}"
        )
        log(
            f"    covering index built in {r2['covering_build_s']:.0f} s ({r2['covering_mib']:,.0f} MiB), then dropped; {time.monotonic() - t:.0f} s"
        )

        log(f"(4) rate every account for 2026-10 ({args.invoice_passes} passes of build_invoice)")
        t = time.monotonic()
        r4 = results["4"] = stage_rating(pg.url, ranks, args.invoice_passes)
        log(
            f"    set_subscription x {len(ranks):,}: {r4['set_subscription_s']:.2f} s; build_invoice passes "
            + ", ".join(f"{s:.2f} s" for s in r4["build_invoice_pass_s"])
            + f"; per account p50 {r4['build_invoice_account_p50_ms']:.2f} ms p99 {r4['build_invoice_account_p99_ms']:.2f} ms,"
            f" largest {r4['build_invoice_largest_ms']:.2f} ms"
        )
        log(
            f"    of which rollup_totals(whole period) alone {r4['rollup_totals_period_s']:.2f} s; pure rate_plan "
            f"{r4['rate_plan_s'] * 1e3:.1f} ms for all accounts; invoices total EUR {r4['invoices_total_eur']}"
            f" (largest EUR {r4['largest_invoice_total_eur']}); {time.monotonic() - t:.0f} s"
        )

        log("(4b) per-model prices: build_invoice for every account, v2_compute and a price book, passes alternating")
        t = time.monotonic()
        r4b = results["4b"] = stage_rating_models(pg.url, ranks, max(3, args.invoice_passes))
        log(
            f"    v2_compute passes {', '.join(f'{x:.2f}' for x in r4b['v2_pass_s'])} s; per-model passes "
            f"{', '.join(f'{x:.2f}' for x in r4b['models_pass_s'])} s; ratio of medians {r4b['ratio']:.2f}; "
            f"invoice explain, largest: {r4b['explain_v2_largest_s']:.2f} s (v2, {r4b['explain_v2_lines']} lines), "
            f"{r4b['explain_models_largest_s']:.2f} s (per model, {r4b['explain_models_lines']} lines, "
            f"{r4b['explain_models_rows']:,} rows), its largest per-model line alone {r4b['explain_line_s']:.2f} s "
            f"({r4b['explain_line_rows']:,} rows); {time.monotonic() - t:.0f} s"
        )

        log(
            f"(3) rollup upkeep: {args.ab_rounds} A/B rounds of {args.batches} x {args.batch_rows:,} rows through "
            "LedgerWriter.write_usage + commit"
        )
        t = time.monotonic()
        r3 = results["3"] = stage_ingest(pg.url, probs, args.ab_rounds, args.batches, args.batch_rows)
        log(f"    rollups exact for the trigger-on rows: {r3['rollup_events_check']}; {time.monotonic() - t:.0f} s")
    finally:
        try:
            t = time.monotonic()
            removed = trim(pg.url)
            log(f"  removed the {removed:,} rows stage 3 added (and their rollups) in {time.monotonic() - t:.0f} s")
        finally:
            if not args.keep_db:
                pg.stop()
    results["summary"] = summarize(results, args, len(accounts))
    results["seconds"] = time.monotonic() - started
    log(f"\nrun took {results['seconds'] / 60:.1f} min")
    out_dir = Path(args.results)
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"rating-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
    out.write_text(json.dumps(results, default=str, indent=1))
    log(f"results: {out}")
    return 0


def summarize(results: dict, args: argparse.Namespace, n_accounts: int) -> list[dict]:
    r1, r2, r3, r4, info = results["1"], results["2"], results["3"], results["4"], results["ledger"]
    rows: list[dict] = []
    width = 82

    def row(label: str, value: str, target: str = "", ok: bool | None = None) -> None:
        verdict = "" if ok is None else ("PASS" if ok else "MISS")
        log(f"{label:<{width}} {value:>16}  {target:<12} {verdict}")
        rows.append({"figure": label, "value": value, "target": target, "pass": ok})

    log("")
    log("=" * 120)
    log(
        f"SUMMARY  {info['rows']:,} events, {n_accounts:,} accounts, largest {info['largest_raw_count']:,} events "
        f"({info['largest_raw_count'] / info['rows']:.1%}); month to date = 2026-10-01 .. 2026-10-30 18:00 UTC"
    )
    log("=" * 120)
    log(f"{'figure':<{width}} {'value':>16}  {'target':<12} verdict")
    row(
        f"(1) rollup_totals MTD, p50 over accounts (median of {r1['passes']} passes)",
        f"{r1['p50_ms']:.2f} ms",
    )
    row("(1) rollup_totals MTD, p99 over accounts", f"{r1['p99_ms']:.2f} ms", "<= 5 ms", r1["p99_ms"] <= 5)
    row(
        f"(1) rollup_totals MTD, worst account ({r1['worst_account']})",
        f"{r1['max_ms']:.2f} ms",
        "<= 5 ms",
        r1["max_ms"] <= 5,
    )
    row("(1) rollup_totals MTD, largest account", f"{r1['largest_ms']:.2f} ms", "<= 5 ms", r1["largest_ms"] <= 5)
    row(
        "    info: largest account, connection that never prepares (custom plans)",
        f"{r1['largest_unprepared_ms']:.2f} ms",
    )
    row("    info: p99 / max of every single call", f"{r1['all_calls_p99_ms']:.2f} / {r1['all_calls_max_ms']:.1f} ms")
    row(
        "(2) raw usage_events MTD, largest, existing (account_id, occurred_at) index",
        f"{r2['largest_existing_ms']:,.1f} ms",
    )
    row(
        "(2) raw usage_events MTD, largest, covering index INCLUDE (meter_code, quantity)",
        f"{r2['largest_covering_ms']:,.1f} ms",
    )
    row(
        "    info: raw exact equivalent (plan split, versions), planner's plan",
        f"{r2['largest_exact_existing_ms']:,.1f} ms",
    )
    row(
        "    info: raw MTD, typical account: existing / covering index",
        f"{r2['typical_existing_ms']:.1f} / {r2['typical_covering_ms']:.1f} ms",
    )
    row(
        "    ratio largest: raw existing index / rollups",
        f"{r2['largest_existing_ms'] / r1['largest_ms']:,.0f}x",
    )
    row(
        "    ratio largest: raw covering index / rollups",
        f"{r2['largest_covering_ms'] / r1['largest_ms']:,.0f}x",
    )
    row("(3) LedgerWriter.write_usage + commit + fold, delta trigger ON", f"{r3['ms_per_1k_on']:.1f} ms/1k rows")
    row("(3) LedgerWriter.write_usage + commit, rollup trigger OFF", f"{r3['ms_per_1k_off']:.1f} ms/1k rows")
    row("(3) rollup upkeep (ON - OFF)", f"{r3['ms_per_1k_diff']:.1f} ms/1k rows")
    row(
        "    info: time inside the trigger function (pg_stat_user_functions)",
        f"{r3['trigger_fn_ms_per_1k']:.1f} ms/1k rows",
    )
    row("    info: of it, folding the deltas afterwards", f"{r3['fold_ms_per_1k']:.1f} ms/1k rows")
    row("    ratio rows/s ON / OFF", f"{r3['rows_per_s_ratio']:.2f}")
    row(
        f"(4) build_invoice for all {n_accounts:,} accounts (slowest of {len(r4['build_invoice_pass_s'])} passes)",
        f"{r4['build_invoice_s']:.2f} s",
        "<= 10 s",
        r4["build_invoice_s"] <= 10,
    )
    row(
        "    info: per account p50 / p99 / largest",
        f"{r4['build_invoice_account_p50_ms']:.2f} / {r4['build_invoice_account_p99_ms']:.2f} / {r4['build_invoice_largest_ms']:.2f} ms",
    )
    row("    info: of which rollup_totals over the whole period", f"{r4['rollup_totals_period_s']:.2f} s")
    row(f"(4) pure rate_plan for all {n_accounts:,} accounts", f"{r4['rate_plan_s'] * 1e3:.1f} ms")
    r4b = results["4b"]
    row(
        f"(4b) build_invoice, all {n_accounts:,} accounts, per-model prices (median of {len(r4b['models_pass_s'])})",
        f"{r4b['models_s']:.2f} s",
        "< 5 s",
        r4b["models_s"] < 5,
    )
    row("(4b) the same under v2_compute, passes alternating", f"{r4b['v2_s']:.2f} s")
    row("(4b) ratio per-model / v2_compute", f"{r4b['ratio']:.2f}", "<= 2", r4b["ratio"] <= 2)
    row(
        "(4b) invoice explain --line N, largest account, its largest per-model line",
        f"{r4b['explain_line_s']:.2f} s",
        "<= 2 s",
        r4b["explain_line_s"] <= 2,
    )
    row(
        "(4b) invoice explain, largest account, every line (per-model version)",
        f"{r4b['explain_models_largest_s']:.2f} s",
        "<= 2 s",
        r4b["explain_models_largest_s"] <= 2,
    )
    row("    info: invoice explain, largest account, v2_compute lines", f"{r4b['explain_v2_largest_s']:.2f} s")
    row(f"(4) set_subscription for all {n_accounts:,} accounts (one commit)", f"{r4['set_subscription_s']:.2f} s")
    log("-" * 120)
    return rows


if __name__ == "__main__":
    raise SystemExit(main())
