"""A partitioned ledger: ``usage_events`` range-partitioned by UTC month on ``occurred_at``.

The existing table is **not rewritten**: it becomes one partition, ``usage_events_before_YYYY_MM``, holding
everything before the cutover (the first month after its latest row; the current month on an empty ledger).
Under an ACCESS EXCLUSIVE lock the migration renames it with its primary key and index, drops its own rollup
trigger (the parent's fires for every insert), proves the bound with a ``CHECK`` (one scan, so the attach
skips its own) and attaches it ``FROM (MINVALUE) TO (cutover)``. A new partitioned ``usage_events`` takes
the old name, columns, defaults, primary key ``(occurred_at, idempotency_key)`` (every unique key contains the
partition key), the account index, the append-only and rollup-delta triggers, and the old table's grants.

What keeps it safe:

- **Every partition is append-only**, not only the parent: statement triggers are not cloned to partitions,
  so each one (the legacy partition included) carries ``{partition}_append_only``. No role but the owner may
  write a partition: the writer inserts through the parent only (where the rollup-delta trigger sees every
  row); it may read new partitions (0006's default privileges), nothing more.
- **Partitions are created ahead** by ``spanmeter_create_usage_partitions(through, from)``, SECURITY DEFINER
  (owned by the owner, ``search_path`` and ``TimeZone`` pinned, at most 24 months ahead), executable by
  ``spanmeter_writer``: serve
  keeps the current month and the next two ready (``spanmeter db partitions`` shows and creates them). Each
  partition is created empty, given its trigger, then attached (SHARE UPDATE EXCLUSIVE on the parent: ingest
  does not wait). There is **no default partition** (it would block creating a month and a concurrent detach).
- **Coverage is bookkept** in ``usage_event_partitions`` (one row per attached partition: name, bounds), read
  by the writer through ``usage_event_coverage`` in the same INSERT, so a row of a month without a partition
  never fails the batch (everything that changes coverage, creating, archiving or restoring a month, holds the
  advisory lock ``PARTITION_LOCK_ID`` exclusively and every writer transaction holds it shared, so coverage
  cannot change between a writer's INSERT and its look at what it left out): it is kept as a rejected span, ``no_partition`` (replayable once the month exists),
  or ``archived_period`` when its month was archived (the ledger cannot see that month's keys any more, so
  billing it again could double-bill).
- **Archives are recorded** in ``usage_partition_archives`` (append-only): which partition, its bounds, its
  row count, the SHA-256 and name of the file ``spanmeter db archive`` wrote, archived or restored, by whom.
- **Detaching or dropping a partition outside ``spanmeter db archive`` is refused** by two event triggers
  (SECURITY DEFINER, so other roles' DDL is checked, not refused): at the start of an ``ALTER TABLE`` whose
  text detaches from ``usage_events`` (``DETACH … CONCURRENTLY`` commits a first step before any
  end-of-command check) unless ``spanmeter db archive`` marked its transaction (``spanmeter.archive``); and
  at the end of every ``ALTER TABLE``/``DROP TABLE``: a bookkept partition that is no longer attached, or a
  dropped ``usage_events``, aborts the statement. Creating an event trigger needs a superuser; without one the
  migration warns and the guarantee rests on privileges (the writer owns nothing, so it can never detach).

Downgrading copies the rows back into one plain table (a rewrite); it is refused while a month is archived
(the plain table could not tell that month's spans from new ones).
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0010_partitioned_ledger"
down_revision = "0009_narrow_job_sets"
branch_labels = None
depends_on = None

TS = postgresql.TIMESTAMP(timezone=True)
WRITER_ROLE = "spanmeter_writer"
READER_ROLE = "spanmeter_grafana"
PARTITION_LOCK_ID = 0x7061727469746E73  # billing.ledger.partitions.PARTITION_LOCK_ID ("partitns")
MONTHS_AHEAD = 2  # billing.ledger.partitions.MONTHS_AHEAD

CREATE_FUNCTION = f"""
CREATE FUNCTION spanmeter_create_usage_partitions(p_through timestamptz, p_from timestamptz DEFAULT NULL)
RETURNS SETOF text LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    lo timestamptz;
    hi timestamptz;
    archived_to timestamptz;
    m timestamptz;
    part text;
BEGIN
    PERFORM pg_advisory_xact_lock({PARTITION_LOCK_ID});
    SELECT c.from_at, c.to_at, c.archived_to INTO lo, hi, archived_to FROM usage_event_coverage c;
    IF hi IS NULL THEN
        RAISE EXCEPTION 'usage_events has no partition in usage_event_partitions: run spanmeter db upgrade'
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    IF p_through > date_trunc('month', now()) + interval '24 months' THEN
        RAISE EXCEPTION 'partitions are created at most 24 months ahead, not through %', p_through
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- ahead: every month from the newest partition's end through the month holding p_through
    m := hi;
    WHILE m <= p_through LOOP
        part := 'usage_events_' || to_char(m, 'YYYY_MM');
        PERFORM spanmeter_attach_usage_partition(part, m, m + interval '1 month');
        RETURN NEXT part;
        m := m + interval '1 month';
    END LOOP;
    -- behind (a backfill of older usage): every month from the oldest partition's start down to p_from's,
    -- never over an archived month (the ledger no longer holds its keys: restore it instead)
    IF p_from IS NOT NULL AND p_from < lo THEN
        IF archived_to IS NOT NULL AND date_trunc('month', p_from) < archived_to THEN
            RAISE EXCEPTION 'usage before % was archived: restore those months with spanmeter db restore',
                to_char(archived_to, 'YYYY-MM') USING ERRCODE = 'object_not_in_prerequisite_state';
        END IF;
        m := lo - interval '1 month';
        WHILE m >= date_trunc('month', p_from) LOOP
            part := 'usage_events_' || to_char(m, 'YYYY_MM');
            PERFORM spanmeter_attach_usage_partition(part, m, m + interval '1 month');
            RETURN NEXT part;
            m := m - interval '1 month';
        END LOOP;
    END IF;
END
$$
"""

# One month: created empty, given its append-only trigger, attached, bookkept. Internal (owner only).
ATTACH_FUNCTION = """
CREATE FUNCTION spanmeter_attach_usage_partition(p_name text, p_from timestamptz, p_to timestamptz)
RETURNS void LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN
    EXECUTE format('CREATE TABLE %I (LIKE usage_events INCLUDING DEFAULTS)', p_name);
    EXECUTE format('ALTER TABLE %I ADD CONSTRAINT %I CHECK (occurred_at >= %L AND occurred_at < %L)',
                   p_name, p_name || '_bounds', p_from, p_to);
    EXECUTE format('CREATE TRIGGER %I BEFORE UPDATE OR DELETE OR TRUNCATE ON %I FOR EACH STATEMENT '
                   'EXECUTE FUNCTION spanmeter_refuse_ledger_change()', p_name || '_append_only', p_name);
    EXECUTE format('ALTER TABLE usage_events ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)', p_name, p_from, p_to);
    INSERT INTO usage_event_partitions (partition_name, from_at, to_at) VALUES (p_name, p_from, p_to);
END
$$
"""

COVERAGE_VIEW = """
CREATE VIEW usage_event_coverage AS
SELECT (SELECT min(from_at) FROM usage_event_partitions) AS from_at,
       (SELECT max(to_at) FROM usage_event_partitions) AS to_at,
       (SELECT max(a.to_at) FROM usage_partition_archives a
         WHERE a.action = 'archived'
           AND NOT EXISTS (SELECT FROM usage_partition_archives b
                            WHERE b.partition_name = a.partition_name AND b.archive_id > a.archive_id)
       ) AS archived_to
"""

# At the start of an ALTER TABLE the command's text is all there is to go by (DETACH … CONCURRENTLY commits
# its first step before any end-of-command check could refuse it); spanmeter db archive sets spanmeter.archive.
DETACH_GUARD_FUNCTION = r"""
CREATE FUNCTION spanmeter_guard_usage_detach() RETURNS event_trigger LANGUAGE plpgsql AS $$
BEGIN
    IF current_query() ~* '\mdetach\s+partition\M' AND current_query() ~* '\musage_events'
       AND coalesce(current_setting('spanmeter.archive', true), '') <> 'on' THEN
        RAISE EXCEPTION 'a partition of usage_events may be detached only by spanmeter db archive, which exports it '
            'to a checksummed file first' USING ERRCODE = 'insufficient_privilege';
    END IF;
END
$$
"""

GUARD_FUNCTION = """
CREATE FUNCTION spanmeter_guard_usage_partitions() RETURNS event_trigger LANGUAGE plpgsql AS $$
DECLARE
    gone text;
BEGIN
    IF to_regclass('usage_event_partitions') IS NULL THEN
        RETURN;  -- not a ledger (or the migration's own downgrade)
    END IF;
    IF to_regclass('usage_events') IS NULL THEN
        RAISE EXCEPTION 'usage_events may not be dropped: it is the ledger' USING ERRCODE = 'insufficient_privilege';
    END IF;
    SELECT string_agg(p.partition_name, ', ' ORDER BY p.from_at) INTO gone
      FROM usage_event_partitions p
     WHERE NOT EXISTS (SELECT FROM pg_inherits i
                        WHERE i.inhparent = 'usage_events'::regclass
                          AND i.inhrelid = to_regclass(p.partition_name));
    IF gone IS NOT NULL THEN
        RAISE EXCEPTION 'ledger partition % of usage_events may be detached or dropped only by spanmeter db archive, '
            'which exports it to a checksummed file first', gone USING ERRCODE = 'insufficient_privilege';
    END IF;
END
$$
"""


def _copy_grants(source: str, target: str, *, revoke: bool) -> str:
    """A DO block granting on ``target`` what every role but the owner holds on ``source`` (and, with
    ``revoke``, taking it off ``source``)."""
    take_back = f"EXECUTE format('REVOKE %s ON {source} FROM %s', g.privilege_type, g.grantee);" if revoke else ""
    return f"""
        DO $$
        DECLARE
            g record;
        BEGIN
            FOR g IN SELECT a.grantee::regrole::text AS grantee, a.privilege_type
                       FROM pg_class c, aclexplode(c.relacl) a
                      WHERE c.oid = '{source}'::regclass AND a.grantee <> c.relowner AND a.grantee <> 0
            LOOP
                EXECUTE format('GRANT %s ON {target} TO %s', g.privilege_type, g.grantee);
                {take_back}
            END LOOP;
        END
        $$
    """


def _cutover(connection: sa.Connection) -> datetime:
    """The first month the legacy table holds nothing of: after its latest row, or this month when empty."""
    latest = connection.execute(sa.text("SELECT max(occurred_at) FROM usage_events")).scalar()
    now = datetime.now(UTC)
    if latest is None:
        return datetime(now.year, now.month, 1, tzinfo=UTC)
    latest = latest.astimezone(UTC)
    return datetime(latest.year + latest.month // 12, latest.month % 12 + 1, 1, tzinfo=UTC)


def upgrade() -> None:
    connection = op.get_bind()
    op.execute("LOCK TABLE usage_events IN ACCESS EXCLUSIVE MODE")  # no row may arrive past the cutover
    cutover = _cutover(connection)
    legacy = f"usage_events_before_{cutover:%Y_%m}"
    bound = f"'{cutover.isoformat()}'"

    op.create_table(
        "usage_event_partitions",
        sa.Column("partition_name", sa.Text, primary_key=True),
        sa.Column("from_at", TS, nullable=False),
        sa.Column("to_at", TS, nullable=False),
        sa.Column("created_at", TS, nullable=False, server_default=sa.func.now()),
        sa.Column("created_by", sa.Text, nullable=False, server_default=sa.text("session_user")),
        sa.CheckConstraint("from_at < to_at", name="usage_event_partitions_bounds"),
    )
    op.execute(
        "COMMENT ON TABLE usage_event_partitions IS 'The partitions of usage_events that are attached, with their "
        "bounds; changed only by spanmeter_create_usage_partitions and spanmeter db archive/restore'"
    )
    op.create_table(
        "usage_partition_archives",
        sa.Column("archive_id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("action", sa.Text, nullable=False),
        sa.Column("partition_name", sa.Text, nullable=False),
        sa.Column("from_at", TS, nullable=False),
        sa.Column("to_at", TS, nullable=False),
        sa.Column("row_count", sa.BigInteger, nullable=False),
        sa.Column("sha256", sa.Text, nullable=False),
        sa.Column("file_name", sa.Text, nullable=False),
        sa.Column("columns", postgresql.ARRAY(sa.Text), nullable=False),
        sa.Column("recorded_at", TS, nullable=False, server_default=sa.func.now()),
        sa.Column("recorded_by", sa.Text, nullable=False, server_default=sa.text("session_user")),
        sa.CheckConstraint("action IN ('archived', 'restored')", name="usage_partition_archives_action"),
    )
    op.execute(
        "CREATE TRIGGER usage_partition_archives_append_only BEFORE UPDATE OR DELETE OR TRUNCATE "
        "ON usage_partition_archives FOR EACH STATEMENT EXECUTE FUNCTION spanmeter_refuse_change()"
    )
    op.execute(COVERAGE_VIEW)

    # the legacy table becomes the first partition, unrewritten
    op.execute(f"ALTER TABLE usage_events RENAME TO {legacy}")
    op.execute(f"ALTER TABLE {legacy} RENAME CONSTRAINT usage_events_pkey TO {legacy}_pkey")
    op.execute(f"ALTER INDEX usage_events_account_time_idx RENAME TO {legacy}_account_time_idx")
    op.execute(f"ALTER TRIGGER usage_events_append_only ON {legacy} RENAME TO {legacy}_append_only")
    op.execute(f"DROP TRIGGER usage_events_rollup_deltas ON {legacy}")
    op.execute(
        f"CREATE TABLE usage_events (LIKE {legacy} INCLUDING DEFAULTS INCLUDING COMMENTS) "
        "PARTITION BY RANGE (occurred_at)"
    )
    op.execute("ALTER TABLE usage_events ADD CONSTRAINT usage_events_pkey PRIMARY KEY (occurred_at, idempotency_key)")
    op.execute("CREATE INDEX usage_events_account_time_idx ON usage_events (account_id, occurred_at)")
    op.execute(f"ALTER TABLE {legacy} ADD CONSTRAINT {legacy}_bounds CHECK (occurred_at < {bound}) NOT VALID")
    op.execute(f"ALTER TABLE {legacy} VALIDATE CONSTRAINT {legacy}_bounds")
    op.execute(f"ALTER TABLE usage_events ATTACH PARTITION {legacy} FOR VALUES FROM (MINVALUE) TO ({bound})")
    op.execute(
        "CREATE TRIGGER usage_events_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON usage_events "
        "FOR EACH STATEMENT EXECUTE FUNCTION spanmeter_refuse_ledger_change()"
    )
    op.execute(
        "CREATE TRIGGER usage_events_rollup_deltas AFTER INSERT ON usage_events REFERENCING NEW TABLE AS new_events "
        "FOR EACH STATEMENT EXECUTE FUNCTION spanmeter_rollup_deltas()"
    )
    op.execute(
        "COMMENT ON TABLE usage_events IS 'The ledger: append-only usage rows, range-partitioned by UTC month on "
        "occurred_at (see usage_event_partitions)'"
    )
    op.execute(
        f"INSERT INTO usage_event_partitions (partition_name, from_at, to_at) VALUES ('{legacy}', '-infinity', {bound})"
    )
    # the parent takes the old table's grants (whoever they were for); the partition keeps none but its owner's
    op.execute(_copy_grants(legacy, "usage_events", revoke=True))

    op.execute(ATTACH_FUNCTION)
    op.execute(CREATE_FUNCTION)
    for function in (
        "spanmeter_attach_usage_partition(text, timestamptz, timestamptz)",
        "spanmeter_create_usage_partitions(timestamptz, timestamptz)",
    ):
        op.execute(f"""
            DO $$
            BEGIN
                EXECUTE format('ALTER FUNCTION {function} SET search_path = %I, pg_temp', current_schema());
            END
            $$
        """)
        op.execute(f"ALTER FUNCTION {function} SET TimeZone = 'UTC'")
        op.execute(f"REVOKE ALL ON FUNCTION {function} FROM PUBLIC")
    op.execute(f"""
        DO $$
        BEGIN
            IF EXISTS (SELECT FROM pg_roles WHERE rolname = '{WRITER_ROLE}') THEN
                GRANT EXECUTE ON FUNCTION spanmeter_create_usage_partitions(timestamptz, timestamptz) TO {WRITER_ROLE};
                GRANT SELECT ON usage_event_partitions, usage_partition_archives, usage_event_coverage
                    TO {WRITER_ROLE};
            END IF;
            IF EXISTS (SELECT FROM pg_roles WHERE rolname = '{READER_ROLE}') THEN
                GRANT SELECT ON usage_event_partitions, usage_partition_archives, usage_event_coverage
                    TO {READER_ROLE};
            END IF;
        END
        $$
    """)
    # the current month and the next ones, from the cutover on (the month computed here, in UTC)
    now = datetime.now(UTC)
    index = now.year * 12 + now.month - 1 + MONTHS_AHEAD
    through = datetime(index // 12, index % 12 + 1, 1, tzinfo=UTC)
    op.execute(f"SELECT spanmeter_create_usage_partitions('{through.isoformat()}')")

    op.execute(GUARD_FUNCTION)
    op.execute(DETACH_GUARD_FUNCTION)
    op.execute("""
        DO $$
        BEGIN
            EXECUTE format('ALTER FUNCTION spanmeter_guard_usage_partitions() SECURITY DEFINER '
                           'SET search_path = %I, pg_temp', current_schema());
            EXECUTE format('ALTER FUNCTION spanmeter_guard_usage_detach() SECURITY DEFINER '
                           'SET search_path = %I, pg_temp', current_schema());
            IF (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
                EXECUTE format('CREATE EVENT TRIGGER %I ON ddl_command_end WHEN TAG IN (''ALTER TABLE'', '
                               '''DROP TABLE'') EXECUTE FUNCTION spanmeter_guard_usage_partitions()',
                               'spanmeter_partitions_' || current_schema());
                EXECUTE format('CREATE EVENT TRIGGER %I ON ddl_command_start WHEN TAG IN (''ALTER TABLE'') '
                               'EXECUTE FUNCTION spanmeter_guard_usage_detach()',
                               'spanmeter_detach_' || current_schema());
            ELSE
                RAISE WARNING 'not a superuser: the event trigger that refuses detaching a ledger partition outside '
                    'spanmeter db archive was not created (a superuser may run: CREATE EVENT TRIGGER '
                    'spanmeter_partitions_% ON ddl_command_end WHEN TAG IN (''ALTER TABLE'', ''DROP TABLE'') '
                    'EXECUTE FUNCTION %.spanmeter_guard_usage_partitions())', current_schema(), current_schema();
            END IF;
        END
        $$
    """)


def downgrade() -> None:
    op.execute("""
        DO $$
        BEGIN
            IF (SELECT archived_to FROM usage_event_coverage) IS NOT NULL THEN
                RAISE EXCEPTION 'months before % are archived: restore them (spanmeter db restore) before '
                    'downgrading, or the unpartitioned ledger would take their spans again',
                    (SELECT archived_to FROM usage_event_coverage);
            END IF;
            EXECUTE format('DROP EVENT TRIGGER IF EXISTS %I', 'spanmeter_partitions_' || current_schema());
            EXECUTE format('DROP EVENT TRIGGER IF EXISTS %I', 'spanmeter_detach_' || current_schema());
        END
        $$
    """)
    op.execute("DROP FUNCTION spanmeter_guard_usage_partitions()")
    op.execute("DROP FUNCTION spanmeter_guard_usage_detach()")
    op.execute("LOCK TABLE usage_events IN ACCESS EXCLUSIVE MODE")
    op.execute("CREATE TABLE usage_events_unpartitioned (LIKE usage_events INCLUDING DEFAULTS INCLUDING COMMENTS)")
    op.execute(
        "INSERT INTO usage_events_unpartitioned SELECT * FROM usage_events ORDER BY occurred_at, idempotency_key"
    )
    op.execute(_copy_grants("usage_events", "usage_events_unpartitioned", revoke=False))
    op.execute("DROP TABLE usage_events")  # the parent and every partition
    op.execute("ALTER TABLE usage_events_unpartitioned RENAME TO usage_events")
    op.execute("ALTER TABLE usage_events ADD CONSTRAINT usage_events_pkey PRIMARY KEY (occurred_at, idempotency_key)")
    op.execute("CREATE INDEX usage_events_account_time_idx ON usage_events (account_id, occurred_at)")
    op.execute(
        "CREATE TRIGGER usage_events_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON usage_events "
        "FOR EACH STATEMENT EXECUTE FUNCTION spanmeter_refuse_ledger_change()"
    )
    op.execute(
        "CREATE TRIGGER usage_events_rollup_deltas AFTER INSERT ON usage_events REFERENCING NEW TABLE AS new_events "
        "FOR EACH STATEMENT EXECUTE FUNCTION spanmeter_rollup_deltas()"
    )
    op.execute("DROP FUNCTION spanmeter_create_usage_partitions(timestamptz, timestamptz)")
    op.execute("DROP FUNCTION spanmeter_attach_usage_partition(text, timestamptz, timestamptz)")
    op.execute("DROP VIEW usage_event_coverage")
    op.execute("DROP TABLE usage_partition_archives")
    op.execute("DROP TABLE usage_event_partitions")
