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


def privileged(conn: psycopg.Connection) -> str | None:
    """Why this connection's role could change ledger rows (superuser, or owner of the ledger's tables by
    ownership or membership), or None. Before the first migration only a superuser is privileged."""
    row = conn.execute(
        """
        SELECT r.rolsuper, current_user::text, c.relowner::regrole::text,
               c.relowner IS NOT NULL AND pg_has_role(current_user, c.relowner, 'MEMBER')
          FROM pg_roles r
          LEFT JOIN pg_class c ON c.oid = to_regclass(%s)
         WHERE r.rolname = current_user
        """,
        (OWNED_TABLE,),
    ).fetchone()
    conn.rollback()
    superuser, user, owner, member = row
    if superuser:
        return f"role {user} is a superuser"
    if member:
        return f"role {user} owns the ledger's tables" + ("" if owner == user else f" (as a member of {owner})")
    return None
