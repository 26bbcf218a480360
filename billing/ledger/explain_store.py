"""The raw rows behind an invoice's lines: the query behind ``spanmeter invoice explain``.

One statement reads the account's rows of the period once (bounded by ``account_id`` and ``occurred_at``: the
``usage_events_account_time_idx`` index and partition pruning), keeps those of the invoice's meters, and
groups them per job, two ways:

- per (meter, model or GPU model, provider, price window, job): what a line priced from a book is made of,
  its totals the sums over its jobs; the windows are cut at the book versions' effective dates and the
  subscription segments' bounds passed in (``width_bucket``).
  The model, provider and window are read (from ``metadata``) only for the meters of such lines;
- per (billable metric, subscription segment, job): the top jobs of a flat-rate line (a job can bill several
  meters of a metric; a metric of one meter takes that meter's job groups as they are).

Every top job comes with one trace id: the smallest of its rows at its first instant, looked up by the
instant (an index probe) for those few jobs alone (no trace id is carried through the hash of every
job). The top jobs of each part are a bounded top-N (``LIMIT``), never a sort of every job; the cost is the one
read and the per-job aggregation of the account's month, one hash in the leader while one parallel worker reads
(the statement runs with ``enable_sort`` off, ``work_mem`` 4MB and free tuple transfer from the worker, set for
it alone and put back after; the comment above ``_PLAN`` says why each). The rating bench measures it on the largest account.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from datetime import datetime
from decimal import Decimal

import psycopg

__all__ = ["SummaryRow", "summary"]


def _literals(values: Iterable[str]) -> str:
    return ", ".join("'" + v.replace("'", "''") + "'" for v in sorted(values))


def _query(metric_of: Mapping[str, str], book_meters: Collection[str], segmented: bool = False) -> str:
    metric = (
        "CASE meter_code "
        + " ".join(f"WHEN {_literals([m])} THEN {_literals([x])}" for m, x in sorted(metric_of.items()))
        + " END"
    )
    # a flat-rate line's window is its subscription segment: the segments' bounds cut its meters' rows
    flat_window = "width_bucket(occurred_at, %(flat_cuts)s::timestamptz[])" if segmented else "0"
    if book_meters:  # the model, provider and price window only where a line is priced from a book
        book = f"meter_code IN ({_literals(book_meters)})"
        dimension = f"CASE WHEN {book} THEN coalesce(metadata->>'gen_ai.model', metadata->>'gpu.model', '') ELSE '' END"
        provider = f"CASE WHEN {book} THEN coalesce(metadata->>'gen_ai.provider.name', '') ELSE '' END"
        window = f"CASE WHEN {book} THEN width_bucket(occurred_at, %(cuts)s::timestamptz[]) ELSE {flat_window} END"
    else:
        dimension, provider, window = "''", "''", flat_window
    # flat-rate lines rank jobs per billable metric: regrouped where a metric has several meters (a job can
    # bill both token meters), taken as they are where it has one
    flat = {m: x for m, x in metric_of.items() if m not in book_meters}
    whole = sorted(m for m, x in flat.items() if list(metric_of.values()).count(x) == 1)
    regroup = sorted(m for m in flat if m not in whole)
    regrouped = sorted({flat[m] for m in regroup})

    def rows(values: list[str]) -> str:
        return f"VALUES {', '.join(values)}" if values else "SELECT NULL::text, NULL::text, NULL::text[] WHERE false"

    whole_rows = rows([f"({_literals([m])}, {_literals([flat[m]])}, ARRAY[{_literals([m])}])" for m in whole])
    regroup_rows = rows(
        [f"(NULL, {_literals([x])}, ARRAY[{_literals(m for m in regroup if flat[m] == x)}])" for x in regrouped]
    )
    return f"""
WITH jobs AS MATERIALIZED (  -- the one read: every row of the account's window, hashed per job
    SELECT meter_code, {metric} AS metric, dimension, provider, w, coalesce(job_id, '(no job)') AS job,
           count(*) AS n, sum(quantity) AS q, min(occurred_at) AS a, max(occurred_at) AS b,
           xmlagg(NULL::xml) FILTER (WHERE false) AS unsplit  -- no combine function: one hash, never partial
      FROM (
        SELECT meter_code, {dimension} AS dimension, {provider} AS provider, {window} AS w, job_id, quantity,
               occurred_at
          FROM usage_events
         WHERE account_id = %(account)s AND occurred_at >= %(start)s AND occurred_at < %(end)s
           AND meter_code = ANY(%(meters)s)
      ) AS r
     GROUP BY meter_code, dimension, provider, w, job_id
),
parts AS (SELECT DISTINCT meter_code, dimension, provider, w FROM jobs
           WHERE meter_code IN ({_literals(book_meters) or "NULL"})),
metric_jobs AS MATERIALIZED (
    SELECT metric, w, job, sum(n) AS n, sum(q) AS q, min(a) AS a, max(b) AS b FROM jobs
     WHERE meter_code IN ({_literals(regroup) or "NULL"}) GROUP BY metric, w, job
),
top AS MATERIALIZED (  -- the top jobs of each part and metric: a bounded top-N each, no sort of all the jobs
    SELECT p.meter_code, NULL::text AS metric, p.dimension, p.provider, p.w, ARRAY[p.meter_code] AS meters,
           t.job, t.n, t.q, t.a, t.b
      FROM parts AS p, LATERAL (
        SELECT * FROM jobs AS j
         WHERE j.meter_code = p.meter_code AND j.dimension = p.dimension AND j.provider = p.provider AND j.w = p.w
         ORDER BY j.q DESC, j.job LIMIT %(top)s) AS t
    UNION ALL
    SELECT NULL, m.metric, NULL, NULL, s.w, m.meters, t.job, t.n, t.q, t.a, t.b
      FROM ({whole_rows}) AS m (meter, metric, meters)
      JOIN (SELECT DISTINCT meter_code, w FROM jobs) AS s ON s.meter_code = m.meter, LATERAL (
        SELECT * FROM jobs AS j WHERE j.meter_code = m.meter AND j.w = s.w ORDER BY j.q DESC, j.job LIMIT %(top)s) AS t
    UNION ALL
    SELECT NULL, m.metric, NULL, NULL, s.w, m.meters, t.job, t.n, t.q, t.a, t.b
      FROM ({regroup_rows}) AS m (meter, metric, meters)
      JOIN (SELECT DISTINCT metric, w FROM metric_jobs) AS s ON s.metric = m.metric, LATERAL (
        SELECT * FROM metric_jobs AS j WHERE j.metric = m.metric AND j.w = s.w
         ORDER BY j.q DESC, j.job LIMIT %(top)s) AS t
)
SELECT 'total', meter_code, NULL::text, dimension, provider, w, NULL::text, NULL::text, sum(n), sum(q), min(a), max(b)
  FROM jobs GROUP BY meter_code, dimension, provider, w
UNION ALL  -- each top job's trace: that of its first row, found by an index probe at its first instant
SELECT 'job', t.meter_code, t.metric, t.dimension, t.provider, t.w, t.job, f.trace, t.n, t.q, t.a, t.b
  FROM top AS t, LATERAL (
    SELECT min(trace_id) AS trace FROM usage_events
     WHERE account_id = %(account)s AND occurred_at = t.a AND coalesce(job_id, '(no job)') = t.job
       AND meter_code = ANY(t.meters)
       AND (t.dimension IS NULL OR ({dimension} = t.dimension AND {provider} = t.provider))) AS f
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


# The plan: one hash aggregation of the rows per job. The planner cannot know that an account's rows fall
# into a few hundred thousand jobs, not one each, so left alone it sorts them all by six keys (11 s for the
# rating bench's largest account, against 3 s hashed).
# The hashing is the leader's alone, while one worker reads the heap beside it: that is the pipeline. Split
# into partial aggregates (one per process, then a final one) it is dearer, as each process holds most of the
# jobs and the numeric sums are serialized between them, so the statement carries an aggregate without a
# combine function (``unsplit``, always NULL), which keeps the planner from splitting it: ``xmlagg``, whose
# state is a plain value (``jsonb_agg``'s is ``internal``, which the planner budgets at 8 kB a group).
# The hash runs in cache-sized batches: with work_mem 4MB (8 MB of hash memory at the default
# hash_mem_multiplier) the 210k job groups of the bench's largest account go through 129 batches and ~120 MB of
# temporary files, and that measured faster than one in-memory table (1.74 s against 1.95 s at 64MB, 1.90 s
# at 16MB; five interleaved rounds each). A server's temp_file_limit must leave room for that.
# Measured on a 2-core host, the largest account of the rating bench: per-model lines 1.69 s with one worker,
# 1.98 s with two, 2.27 s with none; v2 lines 1.39 s whole against 1.97 s split. A zero tuple cost is what makes
# the planner hand the read to a worker; the setup cost stays, so a small account's explain stays serial. A
# server with parallel query off (max_parallel_workers_per_gather = 0) keeps it off.
_PLAN = {"enable_sort": "off", "work_mem": "4MB", "parallel_tuple_cost": "0", "max_parallel_workers_per_gather": "1"}


def summary(
    conn: psycopg.Connection,
    account_id: str,
    metric_of: Mapping[str, str],
    start: datetime,
    end: datetime,
    cuts: Sequence[datetime],
    book_meters: Collection[str] = (),
    top: int = 5,
    flat_cuts: Sequence[datetime] = (),
) -> list[SummaryRow]:
    """The account's rows of the meters in ``metric_of`` (meter -> billable metric) in [start, end), grouped as
    the module says. Window ``w`` is 0 before the first cut, 1 from it to the second, and so on: ``cuts`` (price
    book versions and subscription segments) for ``book_meters``, ``flat_cuts`` (the segments alone) for the
    other meters. Model and provider are read only for ``book_meters`` (the meters of lines priced from a
    book); the other meters' rows have dimension '' and provider '', and their top jobs are per billable metric
    and window."""
    params = {"account": account_id, "start": start, "end": end, "meters": sorted(metric_of), "cuts": list(cuts),
              "flat_cuts": list(flat_cuts), "top": top}  # fmt: skip
    names = sorted(_PLAN)
    with conn.transaction():  # the settings are the transaction's (a savepoint's when one is open) ...
        current = ", ".join(f"current_setting('{n}')" for n in names)
        before = conn.execute(f"SELECT {current}").fetchone() or ()
        plan = {n: "0" if n == "max_parallel_workers_per_gather" and was == "0" else _PLAN[n]
                for n, was in zip(names, before, strict=True)}  # fmt: skip
        setting = ", ".join(f"set_config('{n}', %s, true)" for n in names)
        conn.execute(f"SELECT {setting}", [plan[n] for n in names])
        rows = conn.execute(_query(metric_of, book_meters, bool(flat_cuts)), params).fetchall()
        conn.execute(f"SELECT {setting}", list(before))  # ... and are put back for the caller's next statements
    return rows
