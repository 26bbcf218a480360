"""The raw rows behind an invoice's lines: the query behind ``spanmeter invoice explain``.

One statement reads the account's rows of the period once (bounded by ``account_id`` and ``occurred_at``: the
``usage_events_account_time_idx`` index and partition pruning), keeps those of the invoice's meters, and
groups them two ways at once (``GROUPING SETS``):

- per (meter, model or GPU model, provider, price window): what a line priced from a book is made of; the
  price windows are the effective dates passed in (``width_bucket``);
- per meter (totals) and per billable metric (top jobs): what a flat-rate line is made of.

The largest rows (with their trace ids) are ranked per (meter, model, provider, window); the largest of a
metric are among them. ``dimension`` is the row's ``gen_ai.model`` or ``gpu.model``, ``provider`` its
``gen_ai.provider.name`` (``''`` for none).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from decimal import Decimal

import psycopg

__all__ = ["SummaryRow", "summary"]


def _query(metric_of: Mapping[str, str]) -> str:
    case = " ".join(f"WHEN '{meter}' THEN '{metric}'" for meter, metric in sorted(metric_of.items()))
    return f"""
WITH r AS MATERIALIZED (
    SELECT meter_code, CASE meter_code {case} ELSE meter_code END AS metric,
           coalesce(metadata->>'gen_ai.model', metadata->>'gpu.model', '') AS dimension,
           coalesce(metadata->>'gen_ai.provider.name', '') AS provider,
           width_bucket(occurred_at, %(cuts)s::timestamptz[]) AS w,
           quantity, occurred_at, coalesce(job_id, '(no job)') AS job, trace_id, span_id
      FROM usage_events
     WHERE account_id = %(account)s AND occurred_at >= %(start)s AND occurred_at < %(end)s
       AND meter_code = ANY(%(meters)s)
)
SELECT 'total', meter_code, NULL::text, dimension, provider, w, NULL::text, NULL::text, count(*), sum(quantity),
       min(occurred_at), max(occurred_at)
  FROM r GROUP BY GROUPING SETS ((meter_code, dimension, provider, w), (meter_code))
UNION ALL
SELECT 'job', meter_code, metric, dimension, provider, w, job, NULL, n, q, a, b FROM (
    SELECT meter_code, metric, dimension, provider, w, job, count(*) AS n, sum(quantity) AS q,
           min(occurred_at) AS a, max(occurred_at) AS b,
           row_number() OVER (PARTITION BY meter_code, metric, dimension, provider, w, GROUPING(metric)
                              ORDER BY sum(quantity) DESC, job) AS rn
      FROM r GROUP BY GROUPING SETS ((meter_code, dimension, provider, w, job), (metric, job))
) AS jobs WHERE rn <= %(top)s
UNION ALL
SELECT 'row', meter_code, metric, dimension, provider, w, trace_id, span_id, 1, quantity, occurred_at, occurred_at
  FROM (
    SELECT *, row_number() OVER (PARTITION BY meter_code, dimension, provider, w
                                 ORDER BY quantity DESC, occurred_at, trace_id) AS rn
      FROM r
) AS largest WHERE rn <= %(top)s
"""


# (what, meter, metric, dimension, provider, window, job or trace id, span id, rows, quantity, first, last)
SummaryRow = tuple[
    str,
    str | None,
    str | None,
    str | None,
    str | None,
    int | None,
    str | None,
    str | None,
    int,
    Decimal,
    datetime,
    datetime,
]


def summary(
    conn: psycopg.Connection,
    account_id: str,
    metric_of: Mapping[str, str],
    start: datetime,
    end: datetime,
    cuts: Sequence[datetime],
    top: int = 5,
) -> list[SummaryRow]:
    """The account's rows of the meters in ``metric_of`` (meter -> billable metric) in [start, end), grouped as
    the module says; window ``w`` is 0 before the first of ``cuts``, 1 from it to the second, and so on."""
    params = {"account": account_id, "start": start, "end": end, "meters": sorted(metric_of), "cuts": list(cuts),
              "top": top}  # fmt: skip
    return conn.execute(_query(metric_of), params).fetchall()
