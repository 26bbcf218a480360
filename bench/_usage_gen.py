"""Realistic usage for the read and footprint benches: one month of usage rows, as numpy arrays.

Used two ways, so both halves of a bench ledger come from the same distribution:

- :func:`ledger_rows` turns a month into ``UsageEventTuple`` tuples for ``LedgerWriter.write_usage`` (the real write
  path: COPY, ``INSERT … ON CONFLICT``, the rollup-delta trigger, then the fold);
- :func:`rollup_copies` aggregates a month into what the trigger and the fold would have made of it
  (``usage_rollups_hourly``, ``usage_rollups_daily``, the distinct-job sets) without writing a raw row: 8M
  events a month fit in memory, 90M raw rows do not fit on the disk.

The month: ``events`` rows at uniform times in ``[start, end)``, in time order (as traffic arrives); accounts
``acct_NNNNN`` of Zipf sizes (weight 1/rank^s; s = 1.0 over 2,000 accounts gives the largest 12.2 %); per row a
series (meter and dimension) from :data:`SERIES` with :data:`SERIES_SHARE`: worker_seconds 48 % (task runs, a job id
each), gpu_seconds 5 % (``gpu.model``, × ``gpu.count``), input_tokens and output_tokens 15.5 % each
(``gen_ai.model``), api_requests 16 %. Every row carries a job id (a UUID, one job per API request of its account:
~3 task runs per job); only worker_seconds jobs enter the job sets, as in the trigger. Quantities: task runs
lognormal around 3 s in tenths (the meters' 100 ms rounding), GPU sections around 15 s × 1–8 GPUs, input tokens
around 900, output around 220, requests 1; 2 % of rows are failed attempts (``"status": "error"``). Plan code: the
account's subscription plan. Keys are the product's: BLAKE2b-128 of trace id ‖ span id ‖ meter code.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np

PLANS = ("starter", "growth", "scale", "platform")  # plan of rank r: PLANS[(r + 1) % 4]; the largest is on scale
GPU_MODELS = ("h100", "a100", "l4")
GPU_SHARE = (0.5, 0.3, 0.2)
LLM_MODELS = ("gpt-4o-mini", "claude-sonnet-4", "gemini-2.0-flash", "docpipe-classifier-small")
LLM_SHARE = (0.4, 0.3, 0.1, 0.2)
LLM_PROVIDER = {"gpt-4o-mini": "openai", "claude-sonnet-4": "anthropic", "gemini-2.0-flash": "gcp.gemini"}
# (meter_code, dimension): with account, plan, meter version and bucket, the rollups' grouping key
SERIES: tuple[tuple[str, str], ...] = (
    ("worker_seconds", ""),
    *(("gpu_seconds", m) for m in GPU_MODELS),
    *(("input_tokens", m) for m in LLM_MODELS),
    *(("output_tokens", m) for m in LLM_MODELS),
    ("api_requests", ""),
)
SERIES_SHARE = np.array(
    [0.48, *(0.05 * s for s in GPU_SHARE), *(0.155 * s for s in LLM_SHARE), *(0.155 * s for s in LLM_SHARE), 0.16]
)
UNITS = {
    "worker_seconds": "s",
    "gpu_seconds": "s",
    "input_tokens": "{token}",
    "output_tokens": "{token}",
    "api_requests": "{request}",
}
TENTHS = {"worker_seconds", "gpu_seconds"}  # quantities kept in tenths (the meters round up to 100 ms)
JOBS_PER_EVENT = 0.16  # one job per API request: ~3 task runs per job
ERROR_SHARE = 0.02
TASKS = ("extract_text", "detect_tables", "classify", "render_report", "index_documents", "send_digest")
ROUTES = ("GET /v1/documents/{id}", "POST /v1/documents", "GET /v1/documents", "GET /v1/usage", "DELETE /v1/jobs/{id}")
SERVICES = ("docpipe-web", "docpipe-worker", "search-api", "ingest-worker", "reports", "billing-sync")
VARIANTS = 6  # metadata variants per series (task, route)
_SERIES_INDEX = {s: i for i, s in enumerate(SERIES)}
_S_IN_TENTHS = np.array([meter in TENTHS for meter, _ in SERIES])


def account_id(rank: int) -> str:
    return f"acct_{rank:05d}"


def plan_of(rank: int) -> str:
    return PLANS[(rank + 1) % 4]


def zipf(accounts: int, s: float = 1.0, min_top: float = 0.10) -> tuple[float, np.ndarray]:
    """Probabilities 1/rank^s, normalised; s is raised until the largest account has >= min_top (+0.5 %)."""
    while True:
        weights = 1.0 / np.arange(1, accounts + 1) ** s
        probs = weights / weights.sum()
        if probs[0] >= min_top + 0.005 or accounts == 1:
            return s, probs
        s = round(s + 0.01, 2)


def us(moment: datetime) -> int:
    """Microseconds since the epoch (exact)."""
    delta = moment.astimezone(UTC) - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


@dataclass
class Month:
    """One month of usage rows in time order: parallel arrays, one element per row."""

    start: datetime  # the month's first instant (the job sets' month_start)
    t_us: np.ndarray  # occurred_at, µs since the epoch, ascending
    rank: np.ndarray  # account rank, 1-based
    series: np.ndarray  # index into SERIES
    quantity: np.ndarray  # tenths for worker/gpu seconds, whole units otherwise
    job: np.ndarray  # job number within (month, account)
    variant: np.ndarray  # metadata variant (task, route, GPU count)
    error: np.ndarray  # failed attempt

    def __len__(self) -> int:
        return len(self.t_us)


def make_month(
    seed: int, events: int, start: datetime, end: datetime, probs: np.ndarray, month_start: datetime | None = None
) -> Month:
    """``events`` rows at uniform times in ``[start, end)``."""
    rng = np.random.default_rng(seed)
    t_us = np.sort(rng.integers(us(start), us(end), size=events, dtype=np.int64))
    rank = (rng.choice(len(probs), size=events, p=probs) + 1).astype(np.int32)
    series = rng.choice(len(SERIES), size=events, p=SERIES_SHARE / SERIES_SHARE.sum()).astype(np.int8)
    variant = rng.integers(0, VARIANTS, size=events, dtype=np.int8)
    meter = np.array([m for m, _ in SERIES])[series]
    quantity = np.ones(events, dtype=np.int64)
    worker = meter == "worker_seconds"
    quantity[worker] = 1 + np.minimum(rng.lognormal(np.log(30), 1.3, worker.sum()), 36_000).astype(np.int64)
    gpu = meter == "gpu_seconds"
    gpus = np.array([1, 1, 1, 2, 4, 8])[variant[gpu]]  # the variant is the GPU count for GPU sections
    quantity[gpu] = (1 + np.minimum(rng.lognormal(np.log(150), 1.0, gpu.sum()), 36_000).astype(np.int64)) * gpus
    for code, median, sigma, cap in (("input_tokens", 900, 1.0, 200_000), ("output_tokens", 220, 0.9, 32_000)):
        mask = meter == code
        quantity[mask] = 1 + np.minimum(rng.lognormal(np.log(median), sigma, mask.sum()), cap).astype(np.int64)
    # jobs of an account this month: one per expected API request, drawn uniformly
    jobs = np.maximum(1, np.round(probs * events * JOBS_PER_EVENT)).astype(np.int64)
    job = (rng.random(events) * jobs[rank - 1]).astype(np.int64)
    error = rng.random(events) < ERROR_SHARE
    return Month(month_start or start, t_us, rank, series, quantity, job, variant, error)


def job_uuid(month: datetime, rank: int, job: int) -> str:
    """The job id of job ``job`` of account ``rank`` in ``month``: a UUID, stable for the same inputs."""
    h = hashlib.blake2b(f"{month:%Y-%m}:{rank}:{job}".encode(), digest_size=16).hexdigest()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _metadata(series: int, variant: int, service: str, error: bool) -> str:
    meter, dimension = SERIES[series]
    task = TASKS[variant % len(TASKS)]
    doc: dict = {}
    if meter == "worker_seconds":
        doc = {"span.name": f"run/tasks.{task}", "service.name": service}
    elif meter == "gpu_seconds":
        doc = {"span.name": "run/tasks.detect_tables", "service.name": service}
    elif meter == "api_requests":
        doc = {"span.name": ROUTES[variant % len(ROUTES)], "service.name": service}
    else:
        doc = {"span.name": f"chat {dimension}", "service.name": service}
    if error:
        doc["status"] = "error"
    if meter == "worker_seconds":
        doc["celery.task_name"] = f"tasks.{task}"
    elif meter == "gpu_seconds":
        doc["gpu.count"] = (1, 1, 1, 2, 4, 8)[variant]
        doc["gpu.model"] = dimension
    elif meter == "api_requests":
        doc["http.request.method"] = ROUTES[variant % len(ROUTES)].split()[0]
    else:
        doc["gen_ai.model"] = dimension
        if dimension in LLM_PROVIDER:
            doc["gen_ai.provider.name"] = LLM_PROVIDER[dimension]
        doc["gen_ai.operation.name"] = "chat"
    return json.dumps(doc, separators=(",", ":"))


# metadata JSON per (series, variant, service, error), built once
_METADATA = {
    (s, v, svc, e): _metadata(s, v, SERVICES[svc], e)
    for s in range(len(SERIES))
    for v in range(VARIANTS)
    for svc in range(len(SERVICES))
    for e in (False, True)
}


def _decimal(quantity: int, tenths: bool) -> str:
    return f"{quantity // 10}.{quantity % 10}" if tenths else str(quantity)


def ledger_rows(month: Month, lo: int, hi: int, seed: int) -> list[tuple]:
    """Rows ``lo``..``hi`` of the month as ``UsageEventTuple`` tuples, as the exporter hands them to
    ``LedgerWriter.write_usage``: (occurred_at µs, key, account, job, plan, meter, version, quantity, unit, trace
    id, span id, metadata JSON)."""
    rng = np.random.default_rng(seed)
    ids = rng.bytes(24 * (hi - lo))
    blake = hashlib.blake2b
    rows = []
    for i, (t, rank, series, quantity, job, variant, error) in enumerate(
        zip(
            month.t_us[lo:hi].tolist(),
            month.rank[lo:hi].tolist(),
            month.series[lo:hi].tolist(),
            month.quantity[lo:hi].tolist(),
            month.job[lo:hi].tolist(),
            month.variant[lo:hi].tolist(),
            month.error[lo:hi].tolist(),
            strict=True,
        )
    ):
        meter = SERIES[series][0]
        trace, span = ids[24 * i : 24 * i + 16], ids[24 * i + 16 : 24 * i + 24]
        rows.append(
            (
                t,
                blake(trace + span + meter.encode(), digest_size=16).hexdigest(),
                account_id(rank),
                job_uuid(month.start, rank, job),
                plan_of(rank),
                meter,
                1,
                _decimal(quantity, meter in TENTHS),
                UNITS[meter],
                trace.hex(),
                span.hex(),
                _METADATA[(series, variant, rank % len(SERVICES), error)],
            )
        )
    return rows


def _iso(t_us: np.ndarray) -> list[str]:
    return [s + "Z" for s in np.datetime_as_string(t_us.astype("datetime64[us]"), unit="us").tolist()]


def _groups(month: Month, bucket_us: int) -> Iterator[str]:
    """COPY text lines of the rollup rows of buckets ``bucket_us`` long, grouped exactly as the delta trigger does
    (account, bucket, meter, version, plan, dimension), in the order of their latest event."""
    n_series = len(SERIES)
    bucket = (month.t_us // bucket_us).astype(np.int64)
    key = (bucket * (int(month.rank.max()) + 1) + month.rank) * n_series + month.series
    # inside a group by (occurred_at, quantity): the last row is the trigger's "latest" (max of the pair)
    order = np.lexsort((month.quantity, month.t_us, key))
    key_sorted = key[order]
    starts = np.flatnonzero(np.r_[True, key_sorted[1:] != key_sorted[:-1]])
    ends = np.r_[starts[1:], len(key_sorted)]
    q = month.quantity[order]
    t = month.t_us[order]
    first = order[starts]
    total = np.add.reduceat(q, starts)
    largest = np.maximum.reduceat(q, starts)
    events = ends - starts
    latest_at = t[ends - 1]
    latest_q = q[ends - 1]
    bucket_start = _iso(bucket[first] * bucket_us)
    latest_iso = _iso(latest_at)
    ranks, series_of = month.rank[first].tolist(), month.series[first].tolist()
    # in the order the fold leaves them: a rollup row is rewritten by every fold that adds to it, so its last
    # version lands in the table when its last event is folded (one account's rows end up on many pages)
    for i in np.argsort(latest_at, kind="stable").tolist():
        rank, series = ranks[i], series_of[i]
        meter, dimension = SERIES[series]
        tenths = meter in TENTHS
        yield (
            f"{account_id(rank)}\t{bucket_start[i]}\t{meter}\t1\t{plan_of(rank)}\t{dimension}\t"
            f"{_decimal(int(total[i]), tenths)}\t{int(events[i])}\t{_decimal(int(largest[i]), tenths)}\t"
            f"{latest_iso[i]}\t{_decimal(int(latest_q[i]), tenths)}\n"
        )


ROLLUP_COLUMNS = (
    "account_id, bucket_start, meter_code, meter_version, plan_code, dimension, quantity, events, max_quantity, "
    "latest_at, latest_quantity"
)


def rollup_copies(month: Month) -> tuple[list[str], list[str]]:
    """(hourly rows, daily rows) as COPY text lines in ``ROLLUP_COLUMNS`` order. UTC buckets: whole hours and
    days since the epoch."""
    return list(_groups(month, 3_600_000_000)), list(_groups(month, 86_400_000_000))


def job_sets(month: Month) -> dict[int, list[str]]:
    """The distinct worker_seconds jobs per account rank, each list in byte order (as the fold inserts them)."""
    worker = month.series == _SERIES_INDEX[("worker_seconds", "")]
    pairs = np.unique(month.rank[worker].astype(np.int64) * (1 << 32) + month.job[worker])
    out: dict[int, list[str]] = {}
    for pair in pairs.tolist():
        rank, job = pair >> 32, pair & 0xFFFFFFFF
        out.setdefault(rank, []).append(job_uuid(month.start, rank, job))
    for jobs in out.values():
        jobs.sort()
    return out
