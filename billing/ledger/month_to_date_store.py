"""Month to date in the ledger: the ``account_month_to_date`` table the Grafana billing dashboard reads.

Written only through the SECURITY DEFINER function ``spanmeter_put_month_to_date`` (migration 0006): the role
``spanmeter serve`` writes as cannot change the table directly. Read by the SELECT-only ``spanmeter_grafana``
role. The caller's connection; never commits.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

import psycopg

__all__ = ["put", "unpriced_items"]


def put(
    conn: psycopg.Connection,
    *,
    account_id: str,
    period_start: datetime,
    plan_code: str,
    pricing_version: str,
    currency: str,
    invoice_so_far: Decimal,
    projected_total: Decimal,
    as_of: datetime,
    cost_so_far: Decimal | None,
    unpriced_items: int,
) -> None:
    """Upsert the account's row for the period starting ``period_start``."""
    conn.execute(
        "SELECT spanmeter_put_month_to_date(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
        (account_id, period_start, plan_code, pricing_version, currency, invoice_so_far, projected_total, as_of,
         cost_so_far, unpriced_items),
    )  # fmt: skip


def unpriced_items(conn: psycopg.Connection, period_start: datetime) -> int:
    """(model, meter) pairs of the period's usage that no price book version prices, over every account."""
    row = conn.execute(
        "SELECT coalesce(sum(unpriced_items), 0) FROM account_month_to_date WHERE period_start = %s", (period_start,)
    ).fetchone()
    return int(row[0]) if row else 0
