"""What exact "same key, other end time" detection would cost: a key-only unique index on the ledger.

``usage_events``' primary key is ``(occurred_at, idempotency_key)``: inserts land at the right edge of the
index, so a large ledger writes as fast as a small one. Finding a key re-sent with another end time needs a
lookup by key alone, i.e. a unique index led by a random 128-bit key: every insert touches a random leaf
page. This measures that cost side by side: two tables with the ledger's key columns and indexes, each
prefilled with ``--prefill-rows`` rows (time-ordered, random keys), then alternating 200,000-row COPY +
``INSERT … ON CONFLICT DO NOTHING`` batches into each (median of ``--rounds`` per table), the second table
with the extra ``UNIQUE (idempotency_key)``, the third with a (non-unique) hash index on the key that the
INSERT probes for the same key at another end time (``WHERE NOT EXISTS``): detection without a B-tree, exact
except between two concurrent transactions.

    python bench/key_registry_cost.py --database-url postgresql://postgres@127.0.0.1/postgres

Creates and drops the database ``spanmeter_key_registry_bench`` on that server. Measured figures are in
bench/README.md ("The key registry, measured").
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import uuid

import psycopg
from psycopg.conninfo import make_conninfo

DB = "spanmeter_key_registry_bench"
DDL = """
CREATE TABLE {t} (occurred_at timestamptz NOT NULL, idempotency_key uuid NOT NULL, account_id text NOT NULL,
  meter_code text NOT NULL, quantity numeric NOT NULL, metadata jsonb NOT NULL DEFAULT '{{}}',
  PRIMARY KEY (occurred_at, idempotency_key));
CREATE INDEX ON {t} (account_id, occurred_at);
"""
BATCH = int(os.environ.get("KEY_BENCH_BATCH_ROWS", "200000"))


def _batch(start_us: int) -> bytes:
    return "".join(
        f"{start_us + i}\t{uuid.uuid4()}\tacct-{i % 1000}\tworker_seconds\t1.5\t{{}}\n" for i in range(BATCH)
    ).encode()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--database-url", required=True, help="a server to create the bench database on (superuser)")
    p.add_argument("--prefill-rows", type=int, default=10_000_000)
    p.add_argument("--rounds", type=int, default=6)
    args = p.parse_args()
    with psycopg.connect(args.database_url, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {DB}")
        admin.execute(f"CREATE DATABASE {DB}")
    dsn = make_conninfo(args.database_url, dbname=DB)
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(DDL.format(t="base"))
            conn.execute(
                "INSERT INTO base SELECT now() - interval '60 days' + i * interval '500 microseconds', "
                "gen_random_uuid(), 'acct-' || (i %% 1000), 'worker_seconds', 1.5, '{}' "
                "FROM generate_series(1, %s) i",
                (args.prefill_rows,),
            )
            for table, extra in (
                ("ledger_pk", ""),
                ("key_registry", "CREATE UNIQUE INDEX ON key_registry (idempotency_key)"),
                ("hash_probe", "CREATE INDEX ON hash_probe USING hash (idempotency_key)"),
            ):
                conn.execute(f"CREATE TABLE {table} (LIKE base INCLUDING ALL)")
                conn.execute(f"INSERT INTO {table} SELECT * FROM base")
                if extra:
                    conn.execute(extra)
                conn.execute(f"VACUUM ANALYZE {table}")
            conn.execute("DROP TABLE base")
            conn.execute("CHECKPOINT")
            shared_buffers = conn.execute("SHOW shared_buffers").fetchone()[0]
        rates: dict[str, list[float]] = {"ledger_pk": [], "key_registry": [], "hash_probe": []}
        start_us = int(time.time() * 1e6)
        with psycopg.connect(dsn) as conn:
            conn.execute("CREATE TEMP TABLE s (us bigint, k uuid, a text, m text, q numeric, md text)")
            for round_no in range(args.rounds):
                order = ("ledger_pk", "key_registry", "hash_probe")
                order = order if round_no % 2 == 0 else order[::-1]
                for table in order:
                    data = _batch(start_us)
                    start_us += BATCH
                    began = time.perf_counter()
                    with conn.cursor() as cur:
                        with cur.copy("COPY s FROM STDIN") as copy:
                            copy.write(data)
                        probe = (
                            f"WHERE NOT EXISTS (SELECT FROM {table} u WHERE u.idempotency_key = s.k "
                            "AND u.occurred_at <> timestamptz 'epoch' + s.us * interval '1 microsecond') "
                            if table == "hash_probe"
                            else ""
                        )
                        cur.execute(
                            f"INSERT INTO {table} SELECT timestamptz 'epoch' + us * interval '1 microsecond', k, a, "
                            f"m, q, md::jsonb FROM s {probe}ON CONFLICT DO NOTHING"
                        )
                        cur.execute("TRUNCATE s")
                    conn.commit()
                    rates[table].append(BATCH / (time.perf_counter() - began))
        base, registry, hashed = (statistics.median(rates[t]) for t in ("ledger_pk", "key_registry", "hash_probe"))
        print(f"prefill {args.prefill_rows:,} rows per table; shared_buffers {shared_buffers}; {args.rounds} rounds")
        print(f"  (occurred_at, key) primary key only      {base:10,.0f} rows/s")
        print(f"  + UNIQUE (idempotency_key)               {registry:10,.0f} rows/s   ratio {registry / base:.2f}")
        print(f"  + hash index on the key, probed          {hashed:10,.0f} rows/s   ratio {hashed / base:.2f}")
    finally:
        with psycopg.connect(args.database_url, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {DB}")


if __name__ == "__main__":
    main()
