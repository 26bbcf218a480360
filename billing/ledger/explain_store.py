"""The raw rows behind an invoice line: the queries behind ``spanmeter invoice explain``.

Every query is bounded by ``account_id`` and ``occurred_at`` (the ``usage_events_account_time_idx`` index and
partition pruning: only the months of the window are read), filtered to the line's meters and, for a line
priced per model, to its model or GPU model (the row's ``gen_ai.model`` or ``gpu.model``; ``""`` for none).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal

import psycopg

__all__ = ["RowSummary", "summary"]

_WHERE = """
  FROM usage_events
 WHERE account_id = %(account)s AND occurred_at >= %(start)s AND occurred_at < %(end)s
   AND meter_code = ANY(%(meters)s)
   AND (%(dimension)s::text IS NULL OR coalesce(metadata->>'gen_ai.model', metadata->>'gpu.model', '') = %(dimension)s)
"""
# One scan of the window's rows: totals, the top jobs and the largest rows (with their trace ids) together.
_SUMMARY = f"""
WITH rows AS MATERIALIZED (
    SELECT meter_code, quantity, occurred_at, job_id, trace_id, span_id, producer,
           coalesce(metadata->>'gen_ai.model', metadata->>'gpu.model', '') AS dimension {_WHERE}
)
SELECT 'total', meter_code, NULL, count(*), sum(quantity), min(occurred_at), max(occurred_at), NULL
  FROM rows GROUP BY meter_code
UNION ALL
(SELECT 'job', NULL, coalesce(job_id, '(no job)'), count(*), sum(quantity), min(occurred_at), max(occurred_at), NULL
   FROM rows GROUP BY job_id ORDER BY sum(quantity) DESC, 3 LIMIT %(top)s)
UNION ALL
(SELECT 'row', meter_code, trace_id, 1, quantity, occurred_at, occurred_at, span_id
   FROM rows ORDER BY quantity DESC, occurred_at, trace_id LIMIT %(top)s)
"""

# (what, meter, job or trace id, rows, quantity, first, last, span id)
RowSummary = tuple[str, str | None, str | None, int, Decimal, datetime, datetime, str | None]


def summary(
    conn: psycopg.Connection,
    account_id: str,
    meters: Sequence[str],
    start: datetime,
    end: datetime,
    dimension: str | None,
    top: int = 5,
) -> list[RowSummary]:
    """('total', meter, …) per meter, ('job', None, job, …) for the top jobs by quantity, ('row', meter, trace,
    1, quantity, at, at, span) for the largest rows, over the rows of ``meters`` in [start, end)."""
    params = {"account": account_id, "start": start, "end": end, "meters": list(meters), "dimension": dimension,
              "top": top}  # fmt: skip
    return conn.execute(_SUMMARY, params).fetchall()
