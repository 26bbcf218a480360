"""Plan limits in the ledger: the queries behind :mod:`spanmeter.billing.entitlements` (migration 0015).

``plan_limits`` is append-only and effective-dated: the row in force for (plan, metric) at a moment is the one
with the latest ``effective_from`` not after it (the latest recorded on a tie). Each function takes the
caller's connection and never commits.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

import psycopg

__all__ = ["LimitRow", "history", "in_force", "insert_limit"]

# (plan_code, metric, hard_limit, max_concurrency, fail_policy, effective_from, recorded_at, recorded_by)
LimitRow = tuple[str, str, Decimal | None, int | None, str, datetime, datetime, str]

_COLUMNS = "plan_code, metric, hard_limit, max_concurrency, fail_policy, effective_from, recorded_at, recorded_by"


def insert_limit(
    conn: psycopg.Connection,
    *,
    plan_code: str,
    metric: str,
    hard_limit: Decimal | None,
    max_concurrency: int | None,
    fail_policy: str,
    effective_from: datetime,
    recorded_by: str,
) -> None:
    conn.execute(
        "INSERT INTO plan_limits (plan_code, metric, hard_limit, max_concurrency, fail_policy, effective_from,"
        " recorded_by) VALUES (%s, %s, %s, %s, %s, %s, %s)",
        (plan_code, metric, hard_limit, max_concurrency, fail_policy, effective_from, recorded_by),
    )


def in_force(conn: psycopg.Connection, plan_code: str, at: datetime) -> list[LimitRow]:
    """The plan's limits in force at ``at``, one row per metric."""
    return [
        tuple(r)
        for r in conn.execute(
            f"SELECT DISTINCT ON (metric) {_COLUMNS} FROM plan_limits WHERE plan_code = %s AND effective_from <= %s"
            " ORDER BY metric, effective_from DESC, limit_id DESC",
            (plan_code, at),
        ).fetchall()
    ]


def history(conn: psycopg.Connection, plan_code: str | None = None) -> list[LimitRow]:
    """Every recorded limit (or a plan's), in the order recorded."""
    where, params = (" WHERE plan_code = %s", (plan_code,)) if plan_code else ("", ())
    rows = conn.execute(f"SELECT {_COLUMNS} FROM plan_limits{where} ORDER BY limit_id", params).fetchall()
    return [tuple(r) for r in rows]
