"""Usage per driver (job, service, task or model) and usage series: the queries behind
:mod:`spanmeter.billing.drivers` and the API's usage endpoint. Each takes the caller's connection and never
commits.

- ``by model``: from the rollups (their dimension and provider), cheap at any size;
- ``by job | service | task``: from the account's raw rows of the period (bounded by ``account_id`` and
  ``occurred_at``: the ``usage_events_account_time_idx`` index and partition pruning), so its cost grows with
  the account's month (the rating bench measures the largest account);
- series: hourly or daily rollups (folded + pending deltas: the ``*_live`` views).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal

import psycopg

__all__ = ["DRIVER_KEYS", "raw_driver_rows", "series_rows"]

# what a driver is, as SQL over usage_events (a fixed table: never text from a caller)
DRIVER_KEYS = {
    "job": "coalesce(job_id, '')",
    "service": "coalesce(metadata->>'service.name', '')",
    "task": "coalesce(metadata->>'celery.task_name', '')",
}

_RAW = """
SELECT {key} AS driver, meter_code, coalesce(metadata->>'gen_ai.model', metadata->>'gpu.model', '') AS dimension,
       coalesce(metadata->>'gen_ai.provider.name', '') AS provider, sum(quantity)
  FROM usage_events
 WHERE account_id = %(account)s AND occurred_at >= %(start)s AND occurred_at < %(end)s
   AND meter_code = ANY(%(meters)s)
   AND (%(received_before)s::timestamptz IS NULL OR received_at <= %(received_before)s)
 GROUP BY 1, 2, 3, 4
"""


def raw_driver_rows(
    conn: psycopg.Connection,
    by: str,
    account_id: str,
    meters: Sequence[str],
    start: datetime,
    end: datetime,
    received_before: datetime | None = None,
) -> list[tuple[str, str, str, str, Decimal]]:
    """(driver, meter, dimension, provider, quantity) of the account's rows in [start, end) (received by
    ``received_before`` when given: what a finalized invoice was computed from)."""
    params = {"account": account_id, "meters": list(meters), "start": start, "end": end,
              "received_before": received_before}  # fmt: skip
    return conn.execute(_RAW.format(key=DRIVER_KEYS[by]), params).fetchall()


_SERIES = {
    "hour": "usage_rollups_hourly_live",
    "day": "usage_rollups_daily_live",
}


def series_rows(
    conn: psycopg.Connection, account_id: str, start: datetime, end: datetime, granularity: str
) -> list[tuple[datetime, str, Decimal, int]]:
    """(bucket start, meter, quantity, events) of the account per hour or day bucket starting in [start, end)."""
    return conn.execute(
        f"SELECT bucket_start, meter_code, sum(quantity), sum(events)::bigint FROM {_SERIES[granularity]}"
        " WHERE account_id = %s AND bucket_start >= %s AND bucket_start < %s GROUP BY 1, 2 ORDER BY 1, 2",
        (account_id, start, end),
    ).fetchall()
