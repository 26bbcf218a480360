"""Least privilege: serve's credential cannot change or remove a ledger row by any route, serve refuses a
credential that could, and the embedded default writes as ``spanmeter_writer``."""

from __future__ import annotations

import subprocess
from decimal import Decimal

import grpc
import psycopg
import pytest
from psycopg import errors
from psycopg.conninfo import make_conninfo

from spanmeter.billing.ledger import migrate
from spanmeter.billing.ledger.database import resolve_database
from spanmeter.billing.ledger.roles import WRITER_ROLE
from support import SPANMETER, Collector, SpanFactory, ledger, raw_export, request_bytes, totals, wait_until

pytestmark = pytest.mark.integration  # the embedded ledger and its roles

MS = 1_000_000

# Every route a credential could take to change, remove or stop protecting a billed row.
ROUTES = [
    "UPDATE usage_events SET quantity = 0",
    "DELETE FROM usage_events",
    "TRUNCATE usage_events",
    "ALTER TABLE usage_events DISABLE TRIGGER ALL",
    "ALTER TABLE usage_events DISABLE TRIGGER usage_events_append_only",
    "SET session_replication_role = replica",
    "DROP TRIGGER usage_events_append_only ON usage_events",
    "DROP TABLE usage_events",
    "ALTER TABLE usage_events RENAME TO usage_events_old",
    "CREATE TRIGGER sneak BEFORE INSERT ON usage_events FOR EACH ROW EXECUTE FUNCTION spanmeter_refuse_change()",
    "DELETE FROM rejected_spans",
    # the key registry: a key removed or moved could be billed again at another end time
    "DELETE FROM usage_event_keys",
    "UPDATE usage_event_keys SET occurred_at = now()",
    "TRUNCATE usage_event_keys",
    "ALTER TABLE usage_event_keys DISABLE TRIGGER ALL",
    "UPDATE rejected_requests SET reason = 'x'",
    # derived tables change only through the SECURITY DEFINER functions
    "DELETE FROM usage_rollup_deltas",
    "INSERT INTO usage_rollups_hourly SELECT * FROM usage_rollups_hourly",
    "UPDATE usage_rollups_daily SET quantity = 0",
    "DELETE FROM usage_job_set_members",
    "INSERT INTO usage_job_sets (account_id, month_start, meter_code) VALUES ('x', now(), 'x')",
    "DELETE FROM account_month_to_date",
    "UPDATE subscriptions SET plan_code = 'x'",
    "INSERT INTO invoices SELECT * FROM invoices",
    "ALTER FUNCTION spanmeter_rollup_deltas() SECURITY INVOKER",
]


@pytest.fixture
def billed(fresh_db):
    """A migrated ledger with one billed row, written by serve as the writer."""
    collector = Collector(fresh_db).start()
    try:
        f = SpanFactory({"service.name": "roles"})
        body = request_bytes([f.span("run", {"account_id": "acct-r", "celery.action": "run"}, 300 * MS)])
        assert raw_export(collector.endpoint, body).code == grpc.StatusCode.OK
        wait_until(lambda: ledger(fresh_db, "SELECT count(*) FROM usage_rollup_deltas") == [(0,)], 10, what="a fold")
    finally:
        collector.kill()
    return fresh_db


@pytest.mark.parametrize("statement", ROUTES)
def test_the_writer_cannot_change_a_row_by_any_route(billed, statement):
    writer = make_conninfo(billed, user=WRITER_ROLE)
    with psycopg.connect(writer) as conn, pytest.raises(errors.InsufficientPrivilege):
        conn.execute(statement)
    assert totals(billed, "acct-r") == {"worker_seconds": Decimal("0.3")}
    assert ledger(billed, "SELECT quantity FROM usage_rollups_hourly WHERE account_id = 'acct-r'") == [
        (Decimal("0.3"),)
    ]


def test_the_writer_has_exactly_what_serve_needs(billed):
    writer = make_conninfo(billed, user=WRITER_ROLE)
    with psycopg.connect(writer) as conn:
        (superuser,) = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()
        assert not superuser
        privileges = dict(
            conn.execute(
                """
                SELECT t, string_agg(p, ',' ORDER BY p) FROM unnest(%s::text[]) AS t,
                       unnest(ARRAY['SELECT','INSERT','UPDATE','DELETE','TRUNCATE','TRIGGER','REFERENCES']) AS p
                 WHERE has_table_privilege(current_user, t, p) GROUP BY t
                """,
                (
                    [
                        "usage_events",
                        "usage_event_keys",
                        "rejected_spans",
                        "usage_rollup_deltas",
                        "usage_rollups_hourly",
                    ],
                ),
            ).fetchall()
        )
        assert privileges == {
            "usage_events": "INSERT,SELECT",
            "usage_event_keys": "INSERT,SELECT",
            "rejected_spans": "INSERT,SELECT",
            "usage_rollup_deltas": "SELECT",
            "usage_rollups_hourly": "SELECT",
        }
        # PUBLIC cannot run the definer functions; the writer can
        for function in ("spanmeter_fold_rollups(integer)",):
            assert conn.execute("SELECT has_function_privilege(current_user, %s, 'EXECUTE')", (function,)).fetchone()[0]
            assert not conn.execute("SELECT has_function_privilege('public', %s, 'EXECUTE')", (function,)).fetchone()[0]


def _serve(database_url: str, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            SPANMETER,
            "serve",
            "--database-url",
            database_url,
            "--otlp-endpoint",
            "127.0.0.1:0",
            "--metrics-port",
            "0",
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_serve_refuses_a_superuser_or_an_owner_unless_allowed(fresh_db, postgres_admin):
    refused = _serve(fresh_db)  # the test cluster's superuser
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "superuser" in refused.stderr and "--allow-owner" in refused.stderr and WRITER_ROLE in refused.stderr
    assert "Traceback" not in refused.stderr

    # a role that owns the ledger's tables without being a superuser is refused too
    migrate.upgrade(resolve_database(fresh_db, "."))
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        conn.execute("DROP ROLE IF EXISTS ledger_owner_t")
        conn.execute("CREATE ROLE ledger_owner_t LOGIN")
        conn.execute("ALTER TABLE usage_events OWNER TO ledger_owner_t")
    try:
        refused = _serve(make_conninfo(fresh_db, user="ledger_owner_t"))
        assert refused.returncode == 2 and "owns the ledger's tables" in refused.stderr, refused.stderr
    finally:
        with psycopg.connect(fresh_db, autocommit=True) as conn:
            conn.execute("ALTER TABLE usage_events OWNER TO CURRENT_USER")
            conn.execute("DROP ROLE ledger_owner_t")

    # so is any other power to change or remove rows: the schema's owner (it can drop the tables), a grant of
    # DELETE, CREATEROLE (it can grant itself the owner's role); each otherwise a valid writer
    routes = {
        "schema_owner_t": ("ALTER SCHEMA public OWNER TO schema_owner_t", "owns the ledger's schema public"),
        "deleter_t": (
            "GRANT DELETE ON usage_adjustments TO deleter_t",
            "may UPDATE, DELETE or TRUNCATE usage_adjustments",
        ),
        "rolemaker_t": ("ALTER ROLE rolemaker_t CREATEROLE", "has CREATEROLE"),
    }
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        schema_owner = conn.execute(
            "SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = 'public'"
        ).fetchone()[0]
    for role, (grant, expected) in routes.items():
        with psycopg.connect(fresh_db, autocommit=True) as conn:
            conn.execute(f"DROP ROLE IF EXISTS {role}")
            conn.execute(f"CREATE ROLE {role} LOGIN IN ROLE {WRITER_ROLE}")
            conn.execute(grant)
        try:
            refused = _serve(make_conninfo(fresh_db, user=role))
            assert refused.returncode == 2 and expected in refused.stderr, (role, refused.stderr)
            assert "Traceback" not in refused.stderr
        finally:
            with psycopg.connect(fresh_db, autocommit=True) as conn:
                conn.execute(f"ALTER SCHEMA public OWNER TO {schema_owner}")
                conn.execute(f"DROP OWNED BY {role}")
                conn.execute(f"DROP ROLE {role}")

    allowed = Collector(fresh_db, as_writer=False).start()  # --allow-owner (SPANMETER_ALLOW_OWNER=true)
    try:
        f = SpanFactory({"service.name": "roles"})
        body = request_bytes([f.span("run", {"account_id": "acct-owner", "celery.action": "run"}, 200 * MS)])
        assert raw_export(allowed.endpoint, body).code == grpc.StatusCode.OK
    finally:
        allowed.kill()


def test_the_embedded_default_writes_as_the_writer(tmp_path):
    proc = subprocess.Popen(
        [
            SPANMETER,
            "serve",
            "--data-dir",
            str(tmp_path / "data"),
            "--otlp-endpoint",
            "127.0.0.1:0",
            "--metrics-port",
            "0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("listening "):
                break
        banner = "".join(lines)
        assert f"as {WRITER_ROLE}" in banner, banner
        endpoint = dict(part.split("=", 1) for part in lines[-1].split()[1:])["otlp"]
        f = SpanFactory({"service.name": "embedded"})
        body = request_bytes([f.span("run", {"account_id": "acct-e", "celery.action": "run"}, 400 * MS)])
        assert raw_export(endpoint, body).code == grpc.StatusCode.OK
        from spanmeter.billing.ledger.embedded import EmbeddedPostgres

        owner = EmbeddedPostgres(tmp_path / "data").start()  # the running server: reused, not restarted
        assert totals(owner, "acct-e") == {"worker_seconds": Decimal("0.4")}
        users = ledger(owner, "SELECT DISTINCT usename FROM pg_stat_activity WHERE datname = current_database()")
        assert (WRITER_ROLE,) in users
    finally:
        proc.terminate()
        proc.wait(30)
        from spanmeter.billing.ledger.embedded import EmbeddedPostgres

        EmbeddedPostgres(tmp_path / "data").stop()  # serve leaves the embedded server up, as `db stop` documents
