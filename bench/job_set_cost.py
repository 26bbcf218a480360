"""What one new distinct job costs the fold, by the shape of the job set's key (migration 0009's reason).

The fold adds every job it has not seen to the set of its (account, UTC month, meter). Before 0009 the set was
``usage_rollup_jobs``, keyed by ``(account_id, month_start, meter_code, job_id)``; since 0009 a set is numbered
once (``usage_job_sets``) and its members are ``(set_id, job_id)`` rows. Both receive random job ids, so every
new job lands on a random leaf page; the narrow key makes that index half as wide, and the fold sorts the new
jobs in byte order (``COLLATE "C"``: no strcoll per comparison). This measures both side by
side: each table prefilled with ``--prefill-jobs`` jobs over 2,000 accounts, then alternating batches of
``--batch`` new random jobs inserted exactly as the fold does (``INSERT … SELECT DISTINCT … ORDER BY …
ON CONFLICT DO NOTHING``; the narrow one joins the set numbers in the same statement), median µs per job of
``--rounds`` batches per shape.

    python bench/job_set_cost.py --database-url postgresql://postgres@127.0.0.1/postgres

Creates and drops the database ``spanmeter_job_set_bench`` on that server. Measured figures are in
bench/README.md ("The distinct-job set, narrowed").
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import psycopg
from psycopg.conninfo import make_conninfo

DB = "spanmeter_job_set_bench"
MONTH = "2026-12-01 00:00+00"
ACCOUNTS = [f"acct_{i:05d}" for i in range(2000)]
DDL = """
CREATE TABLE jobs_wide (account_id text NOT NULL, month_start timestamptz NOT NULL, meter_code text NOT NULL,
  job_id text NOT NULL, PRIMARY KEY (account_id, month_start, meter_code, job_id));
CREATE TABLE job_sets (set_id integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY, account_id text NOT NULL,
  month_start timestamptz NOT NULL, meter_code text NOT NULL, UNIQUE (account_id, month_start, meter_code));
CREATE TABLE job_set_members (set_id integer NOT NULL, job_id text NOT NULL, PRIMARY KEY (set_id, job_id));
"""
FOLD = {
    "(account, month, meter, job) key, before 0009": """
        INSERT INTO jobs_wide
        SELECT DISTINCT a, %(month)s::timestamptz, 'worker_seconds', j FROM unnest(%(a)s::text[], %(j)s::text[]) AS u(a, j)
         ORDER BY 1, 2, 3, 4
        ON CONFLICT DO NOTHING""",
    "(set_id, job) key": """
        INSERT INTO job_set_members
        SELECT DISTINCT s.set_id, u.j FROM unnest(%(a)s::text[], %(j)s::text[]) AS u(a, j)
          JOIN job_sets AS s ON s.account_id = u.a AND s.month_start = %(month)s AND s.meter_code = 'worker_seconds'
         ORDER BY 1, 2
        ON CONFLICT DO NOTHING""",
    "(set_id, job) key, sorted in byte order (0009)": """
        INSERT INTO job_set_members
        SELECT DISTINCT s.set_id, u.j COLLATE "C" FROM unnest(%(a)s::text[], %(j)s::text[]) AS u(a, j)
          JOIN job_sets AS s ON s.account_id = u.a AND s.month_start = %(month)s AND s.meter_code = 'worker_seconds'
         ORDER BY 1, 2
        ON CONFLICT DO NOTHING""",
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--database-url", required=True, help="a server to create the bench database on (superuser)")
    p.add_argument("--prefill-jobs", type=int, default=4_000_000, help="jobs in each set table before measuring")
    p.add_argument("--batch", type=int, default=50_000, help="new jobs per fold")
    p.add_argument("--rounds", type=int, default=7)
    args = p.parse_args()
    with psycopg.connect(args.database_url, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {DB}")
        admin.execute(f"CREATE DATABASE {DB}")
    dsn = make_conninfo(args.database_url, dbname=DB)
    rng = random.Random(7)
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(DDL)
            conn.execute(
                "INSERT INTO job_sets (account_id, month_start, meter_code) "
                "SELECT 'acct_' || lpad(a::text, 5, '0'), %s, 'worker_seconds' FROM generate_series(0, 1999) AS a",
                (MONTH,),
            )
            conn.execute(
                "INSERT INTO jobs_wide SELECT 'acct_' || lpad((g %% 2000)::text, 5, '0'), %s, 'worker_seconds', "
                "'job-' || substr(md5(g::text), 1, 12) FROM generate_series(1, %s) AS g ON CONFLICT DO NOTHING",
                (MONTH, args.prefill_jobs),
            )
            conn.execute(
                "INSERT INTO job_set_members SELECT 1 + g %% 2000, 'job-' || substr(md5(g::text), 1, 12) "
                "FROM generate_series(1, %s) AS g ON CONFLICT DO NOTHING",
                (args.prefill_jobs,),
            )
            conn.execute("VACUUM ANALYZE")
            conn.execute("CHECKPOINT")
            shared_buffers = conn.execute("SHOW shared_buffers").fetchone()[0]
            sizes = conn.execute(
                "SELECT pg_relation_size('jobs_wide_pkey') / 1048576, pg_relation_size('job_set_members_pkey') / 1048576"
            ).fetchone()
        costs: dict[str, list[float]] = {name: [] for name in FOLD}
        with psycopg.connect(dsn, autocommit=True) as conn:
            for round_no in range(args.rounds):
                names = list(FOLD) if round_no % 2 == 0 else list(reversed(FOLD))
                for name in names:
                    accounts = [ACCOUNTS[rng.getrandbits(11) % 2000] for _ in range(args.batch)]
                    jobs = [f"job-{rng.getrandbits(48):012x}" for _ in range(args.batch)]
                    began = time.perf_counter()
                    with conn.transaction():
                        conn.execute(FOLD[name], {"a": accounts, "j": jobs, "month": MONTH})
                    costs[name].append((time.perf_counter() - began) / args.batch * 1e6)
        print(
            f"prefill {args.prefill_jobs:,} jobs per table (index {sizes[0]} MiB wide, {sizes[1]} MiB narrow); "
            f"shared_buffers {shared_buffers}; {args.rounds} rounds of {args.batch:,} new jobs"
        )
        wide = statistics.median(costs[next(iter(FOLD))])
        for name in FOLD:
            cost = statistics.median(costs[name])
            print(f"  {name:<48} {cost:6.2f} µs per new job   ratio {cost / wide:.2f}")
    finally:
        with psycopg.connect(args.database_url, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {DB}")


if __name__ == "__main__":
    main()
