"""Rollups keep the provider: ``provider`` in the rollup key, so price books can price per provider.

The same model name can be sold by two providers at two prices (``gpt-4o-mini`` from OpenAI and from Azure).
Rollups were keyed by (account, bucket, meter, meter version, plan code, dimension), the dimension being the
row's ``gen_ai.model`` or ``gpu.model``; this adds ``provider`` (the row's ``gen_ai.provider.name``, ``''``
when it has none) to ``usage_rollup_deltas``, ``usage_rollups_hourly`` and ``usage_rollups_daily`` and to
the primary keys, the delta trigger, the fold and the ``*_live`` views.

Existing rollups are recomputed with their provider, in this migration: it takes the fold lock, blocks ingest
(``SHARE`` lock on ``usage_events``), folds every pending delta with the old fold, then recomputes the hourly
and daily rows of the attached months from the raw ledger (the job sets have no provider and stay). Archived
months keep ``provider = ''`` (their raw rows are in the archive files). On a large ledger this takes a while
(about as long as ``spanmeter rollups rebuild``); ingest waits meanwhile and loses nothing.

Downgrade folds the deltas, sums the rows over providers and restores the previous functions and views.

Revision ID: 0014_rollup_provider
Revises: 0013_month_to_date_cost
"""

from __future__ import annotations

import importlib

from alembic import op

revision = "0014_rollup_provider"
down_revision = "0013_month_to_date_cost"
branch_labels = None
depends_on = None

_deltas = importlib.import_module("spanmeter.billing.ledger.migrations.versions.0005_rollup_deltas")
_least_privilege = importlib.import_module("spanmeter.billing.ledger.migrations.versions.0006_least_privilege")
_narrow = importlib.import_module("spanmeter.billing.ledger.migrations.versions.0009_narrow_job_sets")

FOLD_LOCK_ID = 0x726F6C6C75707366  # billing.ledger.rollup_store.FOLD_LOCK_ID
READER_ROLE = "spanmeter_grafana"
TABLES = ("usage_rollup_deltas", "usage_rollups_hourly", "usage_rollups_daily")
KEY = "account_id, bucket_start, meter_code, meter_version, plan_code, dimension"
PROVIDER = "coalesce(metadata->>'gen_ai.provider.name', '')"


def _with_provider(text: str, *pairs: tuple[str, str]) -> str:
    for old, new in pairs:
        if old not in text:
            raise RuntimeError(f"0014: {old!r} not found in the definition it extends")
        text = text.replace(old, new)
    return text


DELTA_FUNCTION = _with_provider(
    _deltas.DELTA_FUNCTION,
    ("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION"),
    ("plan_code, dimension,\n", "plan_code, dimension, provider,\n"),
    ("coalesce(metadata->>'gen_ai.model', metadata->>'gpu.model', ''),",
     f"coalesce(metadata->>'gen_ai.model', metadata->>'gpu.model', ''), {PROVIDER},"),
    ("GROUP BY 1, 2, 3, 4, 5, 6;", "GROUP BY 1, 2, 3, 4, 5, 6, 7;"),
)  # fmt: skip


def _fold_upsert(table: str, unit: str) -> str:
    return _with_provider(
        _least_privilege._fold_upsert(table, unit),
        ("plan_code, dimension, quantity", "plan_code, dimension, provider, quantity"),
        ("plan_code, dimension,\n", "plan_code, dimension, provider,\n"),
        ("GROUP BY 1, 2, 3, 4, 5, 6\n", "GROUP BY 1, 2, 3, 4, 5, 6, 7\n"),
        (f"ON CONFLICT ({KEY})", f"ON CONFLICT ({KEY}, provider)"),
    )


FOLD_FUNCTION = _with_provider(
    _narrow.FOLD_FUNCTION,
    *((_least_privilege._fold_upsert(t, u), _fold_upsert(t, u)) for t, u in (("usage_rollups_hourly", "hour"),
                                                                               ("usage_rollups_daily", "day"))),
)  # fmt: skip


def _live(view: str, table: str, unit: str, provider: bool) -> str:
    text = _deltas._LIVE.format(view=view, table=table, unit=unit)
    if not provider:
        return text
    return _with_provider(
        text,
        ("plan_code, dimension,\n       sum", "plan_code, dimension, provider,\n       sum"),
        ("plan_code, dimension, quantity, events,\n           max_quantity",
         "plan_code, dimension, provider, quantity, events,\n           max_quantity"),
        ("plan_code, dimension,\n           quantity", "plan_code, dimension, provider,\n           quantity"),
        (f"GROUP BY {KEY}\n", f"GROUP BY {KEY}, provider\n"),
    )  # fmt: skip


VIEWS = (("usage_rollups_hourly_live", "usage_rollups_hourly", "hour"), ("usage_rollups_daily_live", "usage_rollups_daily", "day"))  # fmt: skip


def _recompute(table: str, unit: str) -> str:
    return f"""
    INSERT INTO {table} ({KEY}, provider, quantity, events, max_quantity, latest_at, latest_quantity)
    SELECT account_id, date_trunc('{unit}', occurred_at, 'UTC'), meter_code, meter_version, coalesce(plan_code, ''),
           coalesce(metadata->>'gen_ai.model', metadata->>'gpu.model', ''), {PROVIDER},
           sum(quantity), count(*), max(quantity), max(occurred_at),
           (array_agg(quantity ORDER BY occurred_at DESC, quantity DESC))[1]
      FROM usage_events WHERE occurred_at >= %(since)s
     GROUP BY 1, 2, 3, 4, 5, 6, 7
    """


def _pin(function: str) -> None:
    # CREATE OR REPLACE resets what the statement does not say: SECURITY DEFINER and the search path again
    op.execute(f"""
        DO $$
        BEGIN
            EXECUTE format('ALTER FUNCTION {function} SECURITY DEFINER SET search_path = %I, pg_temp', current_schema());
        END
        $$
    """)


def _views(provider: bool) -> None:
    for view, table, unit in VIEWS:
        op.execute(f"DROP VIEW {view}")
        op.execute(_live(view, table, unit, provider))
    views = ", ".join(view for view, _, _ in VIEWS)
    op.execute(f"""
        DO $$
        BEGIN
            IF EXISTS (SELECT FROM pg_roles WHERE rolname = '{READER_ROLE}') THEN
                GRANT SELECT ON {views} TO {READER_ROLE};
            END IF;
        END
        $$
    """)


def _fold_everything() -> None:
    op.execute(f"SELECT pg_advisory_xact_lock({FOLD_LOCK_ID})")  # the folder and a rebuild wait for us
    op.execute("LOCK TABLE usage_events IN SHARE MODE")  # ingest waits: no delta appears meanwhile
    op.execute("SELECT * FROM spanmeter_fold_rollups(2147483647)")  # the lock is ours: re-entrant


def upgrade() -> None:
    _fold_everything()
    for table in TABLES:
        op.execute(f"ALTER TABLE {table} ADD COLUMN provider text NOT NULL DEFAULT ''")
    for table in TABLES[1:]:
        op.execute(
            f"ALTER TABLE {table} DROP CONSTRAINT {table}_pkey, ADD CONSTRAINT {table}_pkey PRIMARY KEY ({KEY}, provider)"
        )
    _views(provider=True)
    op.execute(DELTA_FUNCTION)
    _pin("spanmeter_rollup_deltas()")
    op.execute(FOLD_FUNCTION)
    _pin("spanmeter_fold_rollups(integer)")
    since = "(SELECT coalesce(CASE WHEN isfinite(from_at) THEN from_at END, '-infinity') FROM usage_event_coverage)"
    for table, unit in (("usage_rollups_hourly", "hour"), ("usage_rollups_daily", "day")):
        op.execute(f"DELETE FROM {table} WHERE bucket_start >= {since}")
        op.execute(_recompute(table, unit).replace("%(since)s", since))


def downgrade() -> None:
    _fold_everything()
    for view, _, _ in VIEWS:
        op.execute(f"DROP VIEW {view}")
    for table in TABLES[1:]:
        op.execute(f"""
            CREATE TEMP TABLE merged ON COMMIT DROP AS
            SELECT {KEY}, sum(quantity) AS quantity, sum(events) AS events, max(max_quantity) AS max_quantity,
                   max(latest_at) AS latest_at,
                   (max(ARRAY[extract(epoch FROM latest_at), latest_quantity]))[2] AS latest_quantity
              FROM {table} GROUP BY {KEY}
        """)
        op.execute(f"ALTER TABLE {table} DROP CONSTRAINT {table}_pkey")
        op.execute(f"DELETE FROM {table}")
        op.execute(f"ALTER TABLE {table} DROP COLUMN provider")
        op.execute(f"INSERT INTO {table} ({KEY}, quantity, events, max_quantity, latest_at, latest_quantity) "
                   f"SELECT {KEY}, quantity, events, max_quantity, latest_at, latest_quantity FROM merged")  # fmt: skip
        op.execute(f"ALTER TABLE {table} ADD CONSTRAINT {table}_pkey PRIMARY KEY ({KEY})")
        op.execute("DROP TABLE merged")
    op.execute("ALTER TABLE usage_rollup_deltas DROP COLUMN provider")
    for view, table, unit in VIEWS:
        op.execute(_live(view, table, unit, provider=False))
    op.execute(f"""
        DO $$
        BEGIN
            IF EXISTS (SELECT FROM pg_roles WHERE rolname = '{READER_ROLE}') THEN
                GRANT SELECT ON {", ".join(v for v, _, _ in VIEWS)} TO {READER_ROLE};
            END IF;
        END
        $$
    """)
    op.execute(_deltas.DELTA_FUNCTION.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1))
    _pin("spanmeter_rollup_deltas()")
    op.execute(_narrow.FOLD_FUNCTION)
    _pin("spanmeter_fold_rollups(integer)")
