"""Postgres side of the bench: databases, 10M-row prefill, trimming, and the bare write methods.

Two databases on one server:

- ``spanmeter_bench_ledger``: spanmeter's own schema (Alembic migrations), ``usage_events`` with
  PK (occurred_at, idempotency_key uuid), index (account_id, occurred_at), jsonb metadata, append-only trigger;
- ``spanmeter_bench_textbook``: the schema most teams start from: ``id bigserial`` primary key, a text
  ``idempotency_key`` with a UNIQUE index, the same (account_id, occurred_at) index, jsonb metadata.

Both are pre-filled with the same realistic month (``prefill_rows`` rows, ~2,000 accounts, 5 meters,
occurred_at spread over the 30 days before the prefill, random keys) by server-side
``INSERT … SELECT generate_series`` in time order (as real traffic arrives), in committed chunks so an
interrupted prefill resumes. ``bench_meta`` records the prefill; later runs reuse it when the row count is
there. Rows the bench adds are trimmed at the start of each repeat (``occurred_at`` after the prefill
watermark, or ``id`` above the prefill's), bypassing the append-only trigger with
``session_replication_role = replica`` (superuser, bench databases only), then VACUUM ANALYZE + CHECKPOINT.
"""

from __future__ import annotations

import json
import os
import random
import time
import uuid
from datetime import UTC, datetime
from decimal import Decimal

import psycopg
from psycopg import sql

LEDGER_DB = "spanmeter_bench_ledger"
TEXTBOOK_DB = "spanmeter_bench_textbook"
REGISTRY_TRIGGER = "usage_event_keys_append_only"  # migration 0018
REGISTRY_KEY = "usage_event_keys_pkey"
ROLLUP_TRIGGER = "usage_events_rollup_deltas"  # migration 0005: appends rollup deltas per INSERT statement
CHUNK_ROWS = 500_000
MONTH_US = 30 * 86_400 * 1_000_000

_META = """
CREATE TABLE IF NOT EXISTS bench_meta (
    name text PRIMARY KEY,
    prefill_rows bigint NOT NULL,
    t_start timestamptz NOT NULL,
    t_end timestamptz NOT NULL,
    max_id bigint,
    done boolean NOT NULL DEFAULT false,
    seconds double precision
)
"""

TEXTBOOK_SCHEMA = """
CREATE TABLE IF NOT EXISTS usage_events (
    id bigserial PRIMARY KEY,
    idempotency_key text NOT NULL,
    account_id text NOT NULL,
    meter_code text NOT NULL,
    meter_version smallint NOT NULL,
    quantity numeric NOT NULL,
    unit text NOT NULL,
    job_id text,
    plan_code text,
    trace_id text NOT NULL,
    span_id text NOT NULL,
    occurred_at timestamptz NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    metadata jsonb NOT NULL DEFAULT '{}'::jsonb
)
"""
TEXTBOOK_INDEXES = (
    "CREATE UNIQUE INDEX IF NOT EXISTS usage_events_idempotency_key_key ON usage_events (idempotency_key)",
    "CREATE INDEX IF NOT EXISTS usage_events_account_time_idx ON usage_events (account_id, occurred_at)",
)

# One chunk of the month, in time order. %(key)s is the idempotency key expression (uuid or text).
_PREFILL = """
INSERT INTO usage_events (occurred_at, idempotency_key, account_id, meter_code, meter_version, quantity, unit,
                          job_id, plan_code, trace_id, span_id, received_at, metadata)
SELECT ts, {key}, 'acct_' || lpad(a::text, 5, '0'),
       (ARRAY['worker_seconds','api_requests','input_tokens','output_tokens','gpu_seconds'])[m],
       1,
       CASE m WHEN 1 THEN round((0.1 + random() * 300)::numeric, 1)
              WHEN 2 THEN 1
              WHEN 5 THEN round((0.1 + random() * 600)::numeric, 1) * (1 + a %% 4)
              ELSE floor(random() * 4000)::numeric END,
       (ARRAY['s','{{request}}','{{token}}','{{token}}','s'])[m],
       CASE WHEN m IN (1, 5) THEN 'job-' || substr(h, 1, 12) END,
       (ARRAY['starter','growth','scale','platform'])[1 + a %% 4],
       h, substr(md5(h), 1, 16),
       ts + random() * interval '400 ms',
       jsonb_build_object('span.name', (ARRAY['run/tasks.render_report','GET /v1/items','chat gpt-4o-mini',
                                              'chat gpt-4o-mini','train_step'])[m],
                          'service.name', 'svc-' || lpad((a %% 23)::text, 2, '0'))
FROM (
    SELECT g,
           %(t_start)s::timestamptz + ((g * %(step_us)s)::bigint + floor(random() * %(step_us)s)::bigint)
                                      * interval '1 microsecond' AS ts,
           floor(random() * 2000)::int AS a,
           CASE WHEN r < 0.4 THEN 1 WHEN r < 0.7 THEN 2 WHEN r < 0.8 THEN 3 WHEN r < 0.9 THEN 4 ELSE 5 END AS m,
           md5(random()::text || g::text) AS h
    FROM (SELECT g, random() AS r FROM generate_series(%(lo)s::bigint, %(hi)s::bigint - 1) AS g) AS s0
) AS s
"""


def connect(conninfo: str, **kw) -> psycopg.Connection:
    return psycopg.connect(conninfo, **kw)


def db_conninfo(base: str, dbname: str) -> str:
    return psycopg.conninfo.make_conninfo(base, dbname=dbname)


def apply_server_settings(admin: str, wanted: dict[str, str | None]) -> bool:
    """``ALTER SYSTEM SET`` each non-empty setting and reload; returns whether any needs a restart."""
    import time

    restart = False
    with connect(admin, autocommit=True) as conn:
        for name, value in wanted.items():
            if value:
                conn.execute(f"ALTER SYSTEM SET {name} = '{value}'")
        conn.execute("SELECT pg_reload_conf()")
        time.sleep(0.3)
        for name in wanted:
            pending = conn.execute("SELECT pending_restart FROM pg_settings WHERE name = %s", (name,)).fetchone()
            restart |= bool(pending and pending[0])
    return restart


def ensure_database(admin: str, name: str) -> None:
    with connect(admin, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def drop_database(admin: str, name: str) -> None:
    with connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def _meta(conn: psycopg.Connection, name: str):
    conn.execute(_META)
    return conn.execute(
        "SELECT prefill_rows, t_start, t_end, max_id, done, seconds FROM bench_meta WHERE name = %s", (name,)
    ).fetchone()


def prefill(conninfo: str, name: str, rows: int, textbook: bool, log) -> dict:
    """Fill ``usage_events`` up to ``rows`` rows (resuming), then VACUUM (FREEZE, ANALYZE) + CHECKPOINT."""
    with connect(conninfo, autocommit=True) as conn:
        if textbook:
            conn.execute(TEXTBOOK_SCHEMA)
        meta = _meta(conn, name)
        if meta is not None and meta[4] and meta[0] == rows:
            count = conn.execute("SELECT count(*) FROM usage_events").fetchone()[0]
            if count >= rows:
                log(f"  {name}: reusing prefill of {count:,} rows (built in {meta[5] or 0:.0f} s)")
                return {"reused": True, "rows": count, "seconds": meta[5], "t_end": meta[2], "max_id": meta[3]}
        if meta is None or meta[0] != rows:
            now_us = time.time_ns() // 1000
            t_start = datetime.fromtimestamp((now_us - MONTH_US) / 1e6, UTC)
            t_end = datetime.fromtimestamp(now_us / 1e6, UTC)
            conn.execute("DELETE FROM bench_meta WHERE name = %s", (name,))
            conn.execute(
                "INSERT INTO bench_meta (name, prefill_rows, t_start, t_end) VALUES (%s, %s, %s, %s)",
                (name, rows, t_start, t_end),
            )
            existing = conn.execute("SELECT count(*) FROM usage_events").fetchone()[0]
            if existing:
                raise RuntimeError(
                    f"{name}: usage_events already holds {existing:,} rows from another prefill "
                    "size; rerun with --reset to rebuild the bench databases"
                )
            seconds_before = 0.0
        else:
            t_start, t_end, seconds_before = meta[1], meta[2], meta[5] or 0.0
        started = time.monotonic()
        step_us = MONTH_US / rows
        done = conn.execute("SELECT count(*) FROM usage_events").fetchone()[0]
        key = "md5(h || 'k')" if textbook else "gen_random_uuid()"
        statement = _PREFILL.format(key=key)
        if textbook:  # bulk load first, then build the indexes (much faster than random inserts)
            for index in TEXTBOOK_INDEXES:
                conn.execute(f"DROP INDEX IF EXISTS {index.split('EXISTS ')[1].split(' ')[0]}")
        else:  # history, not ingest: no rollup deltas for it (the ingest bench does not read rollups)
            conn.execute(f"ALTER TABLE usage_events DISABLE TRIGGER {ROLLUP_TRIGGER}")
        while done < rows:
            hi = min(rows, done + CHUNK_ROWS)
            t = time.monotonic()
            conn.execute(statement, {"t_start": t_start, "step_us": step_us, "lo": done, "hi": hi})
            rate = (hi - done) / (time.monotonic() - t)
            done = hi
            log(f"  {name}: {done:,}/{rows:,} rows ({rate:,.0f} rows/s, {time.monotonic() - started:.0f} s)")
        if not textbook:
            conn.execute(f"ALTER TABLE usage_events ENABLE TRIGGER {ROLLUP_TRIGGER}")
            _register_prefill(conn, name, log)
        if textbook:
            for index in TEXTBOOK_INDEXES:
                t = time.monotonic()
                conn.execute(index)
                log(f"  {name}: {index.split(' ON ')[0].split()[-1]} built in {time.monotonic() - t:.0f} s")
        t = time.monotonic()
        conn.execute("VACUUM (FREEZE, ANALYZE) usage_events")
        conn.execute("CHECKPOINT")
        log(f"  {name}: VACUUM (FREEZE, ANALYZE) + CHECKPOINT in {time.monotonic() - t:.0f} s")
        max_id = conn.execute("SELECT max(id) FROM usage_events").fetchone()[0] if textbook else None
        seconds = seconds_before + time.monotonic() - started
        conn.execute(
            "UPDATE bench_meta SET done = true, seconds = %s, max_id = %s WHERE name = %s", (seconds, max_id, name)
        )
        count = conn.execute("SELECT count(*) FROM usage_events").fetchone()[0]
        log(f"  {name}: prefill of {count:,} rows took {seconds:.0f} s")
        return {"reused": False, "rows": count, "seconds": seconds, "t_end": t_end, "max_id": max_id}


def _register_prefill(conn: psycopg.Connection, name: str, log) -> None:
    """Fill the key registry (migration 0018) from the prefilled rows, as the migration does for an existing
    ledger: unindexed, then the primary key in one sort. The ledger's history is registered like its rows."""
    if conn.execute("SELECT to_regclass('usage_event_keys')").fetchone()[0] is None:
        return
    rows = conn.execute("SELECT count(*) FROM usage_events").fetchone()[0]
    if conn.execute("SELECT count(*) FROM usage_event_keys").fetchone()[0] == rows:
        return
    t = time.monotonic()
    conn.execute(f"ALTER TABLE usage_event_keys DISABLE TRIGGER {REGISTRY_TRIGGER}")
    conn.execute("TRUNCATE usage_event_keys")
    conn.execute(f"ALTER TABLE usage_event_keys ENABLE TRIGGER {REGISTRY_TRIGGER}")
    conn.execute(f"ALTER TABLE usage_event_keys DROP CONSTRAINT IF EXISTS {REGISTRY_KEY}")
    conn.execute("INSERT INTO usage_event_keys SELECT idempotency_key, occurred_at FROM usage_events")
    conn.execute(f"ALTER TABLE usage_event_keys ADD CONSTRAINT {REGISTRY_KEY} PRIMARY KEY (idempotency_key)")
    conn.execute("VACUUM (FREEZE, ANALYZE) usage_event_keys")
    log(f"  {name}: key registry filled ({rows:,} keys) in {time.monotonic() - t:.0f} s")


def set_key_registry_index(conninfo: str, enabled: bool, t_end: datetime) -> None:
    """Bench ledgers only, for the diagnostic phases (2k)/(3k): drop the key registry's primary key (the random
    B-tree insert per row that is its cost; rows are still registered, unchecked), or put it back after removing
    the keys registered since the prefill (``t_end``), which the next trim removes from the ledger anyway."""
    with connect(conninfo, autocommit=True) as conn:
        if not enabled:
            conn.execute(f"ALTER TABLE usage_event_keys DROP CONSTRAINT IF EXISTS {REGISTRY_KEY}")
            return
        conn.execute("SET session_replication_role = replica")  # skips the append-only trigger
        conn.execute("DELETE FROM usage_event_keys WHERE occurred_at > %s", (t_end,))
        conn.execute("RESET session_replication_role")
        if conn.execute(
            "SELECT 1 FROM pg_constraint WHERE conname = %s", (REGISTRY_KEY,)
        ).fetchone() is None:  # fmt: skip
            conn.execute(f"ALTER TABLE usage_event_keys ADD CONSTRAINT {REGISTRY_KEY} PRIMARY KEY (idempotency_key)")


def trim(conninfo: str, name: str, textbook: bool, log) -> int:
    """Delete the rows earlier bench phases added; VACUUM ANALYZE; CHECKPOINT. Returns rows deleted."""
    with connect(conninfo, autocommit=True) as conn:
        meta = _meta(conn, name)
        if meta is None or not meta[4]:
            return 0
        t = time.monotonic()
        try:
            conn.execute("SET session_replication_role = replica")  # skips the append-only trigger
            if textbook:
                cur = conn.execute("DELETE FROM usage_events WHERE id > %s", (meta[3],))
            else:
                cur = conn.execute("DELETE FROM usage_events WHERE occurred_at > %s", (meta[2],))
                conn.execute("DELETE FROM usage_event_keys WHERE occurred_at > %s", (meta[2],))
            deleted = cur.rowcount
            conn.execute("RESET session_replication_role")
        except psycopg.errors.InsufficientPrivilege:
            log(f"  {name}: cannot trim bench rows (not a superuser); the table keeps growing")
            return 0
        if deleted:
            conn.execute("VACUUM (ANALYZE) usage_events")
            if not textbook:
                conn.execute("VACUUM (ANALYZE) usage_event_keys")
        conn.execute("CHECKPOINT")
        if deleted:
            log(
                f"  {name}: trimmed {deleted:,} rows added by earlier phases, VACUUM + CHECKPOINT in "
                f"{time.monotonic() - t:.0f} s"
            )
        return deleted


def set_rollup_upkeep(conninfo: str, enabled: bool) -> None:
    """Enable or disable the rollup-delta trigger in a bench ledger: (2) measures the bare table (its
    indexes, no rollup upkeep: the storage ceiling), (2r), (3) and (4) the product with its upkeep."""
    with connect(conninfo, autocommit=True) as conn:
        conn.execute(f"ALTER TABLE usage_events {'ENABLE' if enabled else 'DISABLE'} TRIGGER {ROLLUP_TRIGGER}")


def discard_rollup_deltas(conninfo: str) -> int:
    """Bench ledgers only: drop pending deltas (trimmed rows leave theirs behind; rollups are not measured)."""
    with connect(conninfo, autocommit=True) as conn:
        return conn.execute("DELETE FROM usage_rollup_deltas").rowcount


def checkpoint(conninfo: str) -> None:
    with connect(conninfo, autocommit=True) as conn:
        conn.execute("CHECKPOINT")


def table_stats(conninfo: str) -> dict:
    with connect(conninfo, autocommit=True) as conn:
        rows = conn.execute("SELECT reltuples::bigint FROM pg_class WHERE relname = 'usage_events'").fetchone()[0]
        size = conn.execute("SELECT pg_total_relation_size('usage_events')").fetchone()[0]
        idx = conn.execute(
            "SELECT indexrelid::regclass::text, pg_relation_size(indexrelid) FROM pg_index "
            "WHERE indrelid = 'usage_events'::regclass ORDER BY 1"
        ).fetchall()
    return {"rows_estimate": rows, "total_bytes": size, "indexes": dict(idx)}


# -- rows ---------------------------------------------------------------------------------------------
TASKS = (  # Celery task names shared with the load generator
    "tasks.render_report",
    "tasks.extract_text",
    "tasks.sync_invoices",
    "tasks.resize_images",
    "tasks.send_digest",
    "tasks.index_documents",
    "tasks.train_step",
    "tasks.export_csv",
)
_METADATA = [
    json.dumps({"span.name": f"run/{t}", "service.name": f"svc-{s:02d}", "celery.task_name": t}, separators=(",", ":"))
    for t in TASKS
    for s in range(23)
]
_PLANS = ("starter", "growth", "scale", "platform")


class RowSource:
    """Rows exactly as spanmeter's exporter hands them to LedgerWriter (UsageEventTuple), worker_seconds,
    occurred_at = now (µs) when the batch is made, random 128-bit keys (the product's are BLAKE2b-128)."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def batch(self, n: int) -> list[tuple]:
        rng = self.rng
        bits = rng.getrandbits
        now_us = time.time_ns() // 1000
        rows = []
        for _ in range(n):
            acct = bits(11) % 2000
            rows.append(
                (
                    now_us - bits(12),
                    f"{bits(128):032x}",
                    f"acct_{acct:05d}",
                    f"job-{bits(48):012x}",
                    _PLANS[acct % 4],
                    "worker_seconds",
                    1,
                    f"{bits(9) / 10:.1f}",
                    "s",
                    f"{bits(128):032x}",
                    f"{bits(64):016x}",
                    _METADATA[bits(16) % len(_METADATA)],
                )
            )
        return rows


def _ts(us: int) -> datetime:
    return datetime.fromtimestamp(us // 1_000_000, UTC).replace(microsecond=us % 1_000_000)


# -- write methods: each takes UsageEventTuple tuples and writes them in the caller's transaction ---------
_COLS = (
    "occurred_at, idempotency_key, account_id, job_id, plan_code, meter_code, meter_version, quantity, "
    "unit, trace_id, span_id, metadata"
)


class LedgerWriterMethod:
    """spanmeter's own ``LedgerWriter.write_usage`` as it is in the working tree (COPY text into a temp staging
    table, then INSERT … SELECT … ON CONFLICT DO NOTHING; see billing/ledger/writer.py)."""

    label = "LedgerWriter (product, working tree): COPY text -> staging, INSERT..ON CONFLICT"

    def __init__(self, conn: psycopg.Connection) -> None:
        from spanmeter.billing.ledger.writer import LedgerWriter

        self.writer = LedgerWriter(conn)

    def write(self, rows: list[tuple]) -> int:
        result = self.writer.write_usage(rows)
        # the return type changed over time: a set of new keys, or a UsageWrite with .inserted
        return result.inserted if hasattr(result, "inserted") else len(result)


def insert_without_registry(cur: psycopg.Cursor, staged: int) -> tuple[int, frozenset[str] | None]:
    """LedgerWriter's insert as before the key registry (migration 0018): the writer's own fast-path statement,
    every covered staged row straight into usage_events, no key registered. Bench ledgers only."""
    from spanmeter.billing.ledger import writer

    cur.execute(writer._INSERT)
    return cur.rowcount, None


class NoRegistryLedgerWriterMethod(LedgerWriterMethod):
    """Diagnostic (2n): LedgerWriter with its statement from before the key registry (no key registered), so
    the registry's whole cost shows side by side. Its rows have no registry entry: bench ledgers only."""

    label = "LedgerWriter without the key registry (the statement before 0018)"

    def __init__(self, conn: psycopg.Connection) -> None:
        super().__init__(conn)

        self.writer._insert = insert_without_registry  # type: ignore[method-assign]


class CopyBinaryMethod:
    """Typed staging (timestamptz, uuid, numeric, jsonb) filled by binary COPY, then INSERT … SELECT …
    ON CONFLICT DO NOTHING RETURNING idempotency_key: no casts or text parsing on the server."""

    label = "COPY binary -> typed staging, INSERT..ON CONFLICT RETURNING"
    _STAGING = """
    CREATE TEMP TABLE IF NOT EXISTS bench_staging (
        occurred_at timestamptz NOT NULL, idempotency_key uuid NOT NULL, account_id text NOT NULL,
        job_id text, plan_code text, meter_code text NOT NULL, meter_version smallint NOT NULL,
        quantity numeric NOT NULL, unit text NOT NULL, trace_id text NOT NULL, span_id text NOT NULL,
        metadata jsonb NOT NULL
    ) ON COMMIT DELETE ROWS"""
    _TYPES = ("timestamptz", "uuid", "text", "text", "text", "text", "int2", "numeric", "text", "text", "text", "jsonb")

    def __init__(self, conn: psycopg.Connection) -> None:
        self.conn = conn
        conn.execute(self._STAGING)
        conn.commit()
        self._copy = f"COPY bench_staging ({_COLS}) FROM STDIN (FORMAT BINARY)"
        # with the key registry (migration 0018), as the product writes: only rows whose key it registered
        self._insert = (
            "WITH registered AS (INSERT INTO usage_event_keys (idempotency_key, occurred_at) "
            "SELECT idempotency_key, occurred_at FROM bench_staging ON CONFLICT DO NOTHING "
            "RETURNING idempotency_key, occurred_at) "
            f"INSERT INTO usage_events ({_COLS}) SELECT {', '.join('s.' + c.strip() for c in _COLS.split(','))} "
            "FROM bench_staging s JOIN registered r USING (idempotency_key, occurred_at) "
            "ON CONFLICT DO NOTHING RETURNING idempotency_key"
        )

    def write(self, rows: list[tuple]) -> int:
        UUID, Dec = uuid.UUID, Decimal
        with self.conn.cursor() as cur:
            with cur.copy(self._copy) as copy:
                copy.set_types(list(self._TYPES))
                for r in rows:
                    copy.write_row(
                        (
                            _ts(r[0]),
                            UUID(r[1]),
                            r[2],
                            r[3],
                            r[4],
                            r[5],
                            r[6],
                            Dec(r[7]),
                            r[8],
                            r[9],
                            r[10],
                            _RawJson(r[11]),
                        )
                    )
            cur.execute(self._insert)
            return len(cur.fetchall())


class _RawJson(str):
    """A JSON document already serialized: dumped as jsonb without re-encoding."""


def _register_raw_json(conn: psycopg.Connection) -> None:
    from psycopg.adapt import Dumper
    from psycopg.pq import Format

    class RawJsonbBinaryDumper(Dumper):
        format = Format.BINARY
        oid = psycopg.adapters.types["jsonb"].oid

        def dump(self, obj):
            return b"\x01" + obj.encode()

    conn.adapters.register_dumper(_RawJson, RawJsonbBinaryDumper)


class UnnestMethod:
    """INSERT … SELECT * FROM unnest(typed arrays, binary parameters) ON CONFLICT DO NOTHING RETURNING."""

    label = "unnest(binary arrays), INSERT..ON CONFLICT RETURNING"

    def __init__(self, conn: psycopg.Connection) -> None:
        self.conn = conn
        # with the key registry (migration 0018), as the product writes: only rows whose key it registered
        self._sql = (
            "WITH x AS (SELECT * FROM unnest("
            "%b::timestamptz[], %b::uuid[], %b::text[], %b::text[], %b::text[], %b::text[], %b::int2[], "
            "%b::numeric[], %b::text[], %b::text[], %b::text[], %b::text[]) AS x(o, k, a, j, p, mc, mv, q, u, t, s, md)), "
            "registered AS (INSERT INTO usage_event_keys (idempotency_key, occurred_at) SELECT k, o FROM x "
            "ON CONFLICT DO NOTHING RETURNING idempotency_key, occurred_at) "
            f"INSERT INTO usage_events ({_COLS}) "
            "SELECT o, k, a, j, p, mc, mv, q, u, t, s, md::jsonb FROM x "
            "JOIN registered r ON r.idempotency_key = x.k AND r.occurred_at = x.o "
            "ON CONFLICT DO NOTHING RETURNING idempotency_key"
        )

    def write(self, rows: list[tuple]) -> int:
        cols = list(zip(*rows, strict=True))
        params = [
            [_ts(us) for us in cols[0]],
            [uuid.UUID(k) for k in cols[1]],
            list(cols[2]),
            list(cols[3]),
            list(cols[4]),
            list(cols[5]),
            list(cols[6]),
            [Decimal(q) for q in cols[7]],
            list(cols[8]),
            list(cols[9]),
            list(cols[10]),
            list(cols[11]),
        ]
        with self.conn.cursor() as cur:
            cur.execute(self._sql, params)
            return len(cur.fetchall())


class ExecutemanyMethod:
    """Pipelined executemany of one-row INSERT … ON CONFLICT DO NOTHING (binary parameters)."""

    label = "executemany (pipelined) one-row INSERT..ON CONFLICT"

    def __init__(self, conn: psycopg.Connection) -> None:
        self.conn = conn
        # with the key registry (migration 0018): the row goes in only if its key was registered
        self._sql = (
            "WITH registered AS (INSERT INTO usage_event_keys (idempotency_key, occurred_at) VALUES (%b, %b) "
            "ON CONFLICT DO NOTHING RETURNING 1) "
            f"INSERT INTO usage_events ({_COLS}) SELECT "
            "%b, %b, %b, %b, %b, %b, %b, %b, %b, %b, %b, %b::jsonb FROM registered ON CONFLICT DO NOTHING"
        )

    def write(self, rows: list[tuple]) -> int:
        UUID, Dec = uuid.UUID, Decimal
        with self.conn.cursor() as cur:
            cur.executemany(
                self._sql,
                [(UUID(r[1]), _ts(r[0]), *(_ts(r[0]), UUID(r[1]), *r[2:7], Dec(r[7]), *r[8:12])) for r in rows],
            )
            return cur.rowcount


class TextbookExecutemanyMethod:
    """The textbook write: one INSERT … ON CONFLICT (idempotency_key) DO NOTHING per row, executemany."""

    label = "textbook: executemany one-row INSERT..ON CONFLICT (text key)"

    def __init__(self, conn: psycopg.Connection) -> None:
        self.conn = conn
        self._sql = (
            "INSERT INTO usage_events (occurred_at, idempotency_key, account_id, job_id, plan_code, meter_code, "
            "meter_version, quantity, unit, trace_id, span_id, metadata) VALUES "
            "(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s::jsonb) ON CONFLICT (idempotency_key) DO NOTHING"
        )

    def write(self, rows: list[tuple]) -> int:
        with self.conn.cursor() as cur:
            cur.executemany(
                self._sql,
                [
                    (_ts(r[0]), r[1], r[2], r[3], r[4], r[5], r[6], Decimal(r[7]), r[8], r[9], r[10], r[11])
                    for r in rows
                ],
            )
            return cur.rowcount


class TextbookCopyMethod:
    """The textbook schema written the spanmeter way (COPY text -> staging, INSERT … ON CONFLICT): separates
    the schema's cost from the method's."""

    label = "textbook schema, COPY text -> staging, INSERT..ON CONFLICT"
    _STAGING = """
    CREATE TEMP TABLE IF NOT EXISTS bench_staging_tb (
        occurred_at_us bigint NOT NULL, idempotency_key text NOT NULL, account_id text NOT NULL, job_id text,
        plan_code text, meter_code text NOT NULL, meter_version smallint NOT NULL, quantity numeric NOT NULL,
        unit text NOT NULL, trace_id text NOT NULL, span_id text NOT NULL, metadata text NOT NULL
    ) ON COMMIT DELETE ROWS"""

    def __init__(self, conn: psycopg.Connection) -> None:
        self.conn = conn
        conn.execute(self._STAGING)
        conn.commit()
        self._copy = (
            "COPY bench_staging_tb (occurred_at_us, idempotency_key, account_id, job_id, plan_code, "
            "meter_code, meter_version, quantity, unit, trace_id, span_id, metadata) FROM STDIN"
        )
        self._insert = (
            "INSERT INTO usage_events (occurred_at, idempotency_key, account_id, job_id, plan_code, meter_code, "
            "meter_version, quantity, unit, trace_id, span_id, metadata) "
            "SELECT timestamptz 'epoch' + occurred_at_us * interval '1 microsecond', idempotency_key, account_id, "
            "job_id, plan_code, meter_code, meter_version, quantity, unit, trace_id, span_id, metadata::jsonb "
            "FROM bench_staging_tb ON CONFLICT (idempotency_key) DO NOTHING"
        )

    def write(self, rows: list[tuple]) -> int:
        with self.conn.cursor() as cur:
            with cur.copy(self._copy) as copy:
                for r in rows:
                    copy.write_row(r)
            cur.execute(self._insert)
            return cur.rowcount


METHODS = {
    "ledgerwriter": LedgerWriterMethod,
    "ledgerwriter_no_registry": NoRegistryLedgerWriterMethod,
    "copy_binary": CopyBinaryMethod,
    "unnest": UnnestMethod,
    "executemany": ExecutemanyMethod,
    "textbook_executemany": TextbookExecutemanyMethod,
    "textbook_copy": TextbookCopyMethod,
}


def writer_main(conf: dict, pipe) -> None:
    """Process entry for figures (2)/(5): write batches on one connection, one transaction per batch."""
    try:
        conn = connect(conf["conninfo"], application_name=f"bench-{conf['method']}-{conf['writer']}")
        _register_raw_json(conn)
        method = METHODS[conf["method"]](conn)
        source = RowSource(seed=conf["seed"])
        source.batch(10)
        pipe.send(("ready", os.getpid()))
        t_start, t0, t1 = pipe.recv()
    except Exception as exc:
        pipe.send(("error", repr(exc)))
        return
    rows_ok = batches = inserted_total = 0
    latencies: list[float] = []
    error = None
    while time.time() < t_start:
        time.sleep(0.005)
    try:
        while True:
            now = time.time()
            if now >= t1:
                break
            rows = source.batch(conf["batch"])
            started = time.time()
            inserted = method.write(rows)
            conn.commit()
            finished = time.time()
            if t0 <= finished < t1:
                rows_ok += len(rows)
                inserted_total += inserted if inserted is not None and inserted >= 0 else len(rows)
                batches += 1
                latencies.append(finished - started)
    except Exception as exc:
        error = repr(exc)
    conn.close()
    pipe.send(
        (
            "result",
            {
                "writer": conf["writer"],
                "rows": rows_ok,
                "inserted": inserted_total,
                "batches": batches,
                "latencies": latencies,
                "error": error,
            },
        )
    )
