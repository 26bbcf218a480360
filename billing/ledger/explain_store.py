"""The raw rows behind an invoice's lines: the query behind ``spanmeter invoice explain``.

One statement reads the account's rows of the period once (bounded by ``account_id`` and ``occurred_at``: the
``usage_events_account_time_idx`` index and partition pruning), keeps those of the invoice's meters, and
groups them per job, two ways:

- per (meter, model or GPU model, provider, price window, job): what a line priced from a book is made of,
  its totals the sums over its jobs; the price windows are the effective dates passed in (``width_bucket``);
- per (billable metric, job): the top jobs of a flat-rate line (a job can bill several meters of a metric).

Every job comes with one of its trace ids. The top jobs of each part are a bounded top-N (``LIMIT``), never a
sort of every job; the cost is the one read and the per-job aggregation of the account's month (the rating
bench measures it on the largest account).
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
WITH jobs AS MATERIALIZED (
    SELECT meter_code, metric, dimension, provider, w, job, count(*) AS n, sum(quantity) AS q,
           min(occurred_at) AS a, max(occurred_at) AS b, min(trace_id) AS trace
      FROM (
        SELECT meter_code, CASE meter_code {case} ELSE meter_code END AS metric,
               coalesce(metadata->>'gen_ai.model', metadata->>'gpu.model', '') AS dimension,
               coalesce(metadata->>'gen_ai.provider.name', '') AS provider,
               width_bucket(occurred_at, %(cuts)s::timestamptz[]) AS w,
               quantity, occurred_at, coalesce(job_id, '(no job)') AS job, trace_id
          FROM usage_events
         WHERE account_id = %(account)s AND occurred_at >= %(start)s AND occurred_at < %(end)s
           AND meter_code = ANY(%(meters)s)
      ) AS r
     GROUP BY meter_code, metric, dimension, provider, w, job
),
parts AS (SELECT DISTINCT meter_code, dimension, provider, w FROM jobs),
metric_jobs AS MATERIALIZED (
    SELECT metric, job, sum(n) AS n, sum(q) AS q, min(a) AS a, max(b) AS b, min(trace) AS trace
      FROM jobs GROUP BY metric, job
),
metrics AS (SELECT DISTINCT metric FROM metric_jobs)
SELECT 'total', meter_code, NULL::text, dimension, provider, w, NULL::text, NULL::text, sum(n), sum(q), min(a), max(b)
  FROM jobs GROUP BY meter_code, dimension, provider, w
UNION ALL  -- the top jobs of each part: a bounded top-N per part, no sort of all the job groups
SELECT 'job', p.meter_code, NULL, p.dimension, p.provider, p.w, t.job, t.trace, t.n, t.q, t.a, t.b
  FROM parts AS p, LATERAL (
    SELECT * FROM jobs AS j
     WHERE j.meter_code = p.meter_code AND j.dimension = p.dimension AND j.provider = p.provider AND j.w = p.w
     ORDER BY j.q DESC, j.job LIMIT %(top)s) AS t
UNION ALL
SELECT 'job', NULL, m.metric, NULL, NULL, NULL, t.job, t.trace, t.n, t.q, t.a, t.b
  FROM metrics AS m, LATERAL (
    SELECT * FROM metric_jobs AS j WHERE j.metric = m.metric ORDER BY j.q DESC, j.job LIMIT %(top)s) AS t
"""


# (what, meter, metric, dimension, provider, window, job, its trace id, rows, quantity, first, last)
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
