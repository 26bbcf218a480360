"""The roles a ledger is used by, and whether a connection's role is too powerful to serve with.

``spanmeter serve`` writes as ``spanmeter_writer`` (migration 0006): INSERT on the append-only tables,
derived tables only through SECURITY DEFINER functions, nothing that could change or remove a row. A
superuser, the tables' owner, or a member of the owner's role could disable the append-only triggers (or set
``session_replication_role``) and then change rows, so ``serve`` refuses such a credential unless told
``--allow-owner``. ``spanmeter db upgrade`` and ``rollups rebuild`` run as the owner.
"""

from __future__ import annotations

import psycopg

__all__ = ["OWNED_TABLE", "READER_ROLE", "WRITER_ROLE", "privileged"]

WRITER_ROLE = "spanmeter_writer"
READER_ROLE = "spanmeter_grafana"
OWNED_TABLE = "usage_events"


# The tables an append-only trigger guards (found, not listed: a later migration's table or partition is covered
# too), and usage_events itself (guarded since the first migration).
_POWERS = """
WITH me AS (SELECT rolname, rolsuper, rolcreaterole FROM pg_roles WHERE rolname = current_user),
ledger AS (
    SELECT DISTINCT c.oid, c.relname::text AS name, c.relowner, n.nspowner, n.nspname::text AS schema
      FROM pg_class c
      JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE c.oid = to_regclass(%(table)s)
        OR c.oid IN (SELECT t.tgrelid FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid
                      WHERE p.proname IN ('spanmeter_refuse_ledger_change', 'spanmeter_refuse_change'))
)
SELECT me.rolname::text, me.rolsuper, me.rolcreaterole,
       (SELECT string_agg(format('%%s (owned by %%s)', name, relowner::regrole), ', ' ORDER BY name)
          FROM ledger WHERE pg_has_role(current_user, relowner, 'MEMBER')),
       (SELECT string_agg(DISTINCT format('%%s (owned by %%s)', schema, nspowner::regrole), ', ')
          FROM ledger WHERE pg_has_role(current_user, nspowner, 'MEMBER')),
       (SELECT string_agg(name, ', ' ORDER BY name)
          FROM ledger WHERE has_table_privilege(current_user, oid, 'UPDATE, DELETE, TRUNCATE'))
  FROM me
"""


def privileged(conn: psycopg.Connection) -> str | None:
    """Why this connection's role could change or remove ledger rows, or None.

    Refused: a superuser; a role that owns, or is a member of the owner of, an append-only table or its schema
    (an owner can disable the append-only triggers; a schema's owner can drop its tables); a role granted
    UPDATE, DELETE or TRUNCATE on one; a role with CREATEROLE (it can grant itself the owner's role). Before the
    first migration only the first and the last apply."""
    row = conn.execute(_POWERS, {"table": OWNED_TABLE}).fetchone()
    conn.rollback()
    user, superuser, createrole, owned_tables, owned_schema, changeable = row
    if superuser:
        return f"role {user} is a superuser"
    if owned_tables:
        return f"role {user} owns the ledger's tables: {owned_tables}"
    if owned_schema:
        return f"role {user} owns the ledger's schema {owned_schema}, so it could drop the ledger's tables"
    if changeable:
        return f"role {user} may UPDATE, DELETE or TRUNCATE {changeable}"
    if createrole:
        return f"role {user} has CREATEROLE, so it could grant itself the ledger owner's role"
    return None
