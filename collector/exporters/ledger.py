"""The ledger exporter: group commit of usage rows, acknowledged only after COMMIT.

Export handlers call :meth:`LedgerExporter.submit` with one request's rows and rejections, then
:meth:`LedgerExporter.wait` for the commit. Writer threads (``SPANMETER_LEDGER_WRITERS``, each with its own
connection) take everything queued, up to ``SPANMETER_LEDGER_BATCH_MAX_ROWS`` rows, and write it in one
transaction through :class:`spanmeter.billing.ledger.writer.LedgerWriter`: while one transaction commits,
the next one fills up, so concurrent requests share the cost of a commit (fsync) and of each statement.

Failure handling, from the client's point of view:

- database unreachable or a write fails: every request in that transaction is told so; the handler
  answers UNAVAILABLE with a RetryInfo, the client retries, and idempotency keys make the retry exact;
- a transaction that fails for a reason other than the connection (a bug, bad data that slipped through)
  is split: each request is retried alone, so one poisoned request cannot hold the others hostage;
- a request whose handler gave up waiting (write timeout) and that is still queued is dropped from the
  queue: the client retries it anyway, and the queue must not grow with abandoned work.

Lifecycle: ``start()`` starts the writers; ``shutdown()`` (safe without ``start()``) writes what is queued,
then stops them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field

import psycopg

from spanmeter.billing.ledger.database import Database
from spanmeter.billing.ledger.writer import LedgerWriter, RejectedRequestRow, UsageWrite

from ..metrics import CollectorMetrics
from ..processors.meters import API_REQUESTS, GPU_SECONDS, INPUT_TOKENS, OUTPUT_TOKENS, WORKER_SECONDS
from ..processors.usage import Rejection, UsageRow
from .rows import rejected_span_row, usage_event_row

__all__ = ["LedgerExporter", "LedgerUnavailable", "PendingWrite"]

log = logging.getLogger(__name__)


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


class LedgerUnavailable(Exception):
    """The ledger did not commit this request; the client must retry."""


@dataclass(eq=False)
class PendingWrite:
    rows: list[UsageRow]
    rejections: list[Rejection]
    rejected_request: RejectedRequestRow | None = None
    received_monotonic: float = field(default_factory=time.monotonic)
    done: threading.Event = field(default_factory=threading.Event)
    error: str | None = None
    abandoned: bool = False


class LedgerExporter:
    def __init__(
        self,
        database: Database,
        metrics: CollectorMetrics,
        batch_max_rows: int = 20_000,
        writers: int = 2,
    ) -> None:
        self._database = database
        self._metrics = metrics
        self._batch_max_rows = batch_max_rows
        self._writer_count = writers
        self._queue: deque[PendingWrite] = deque()
        self._in_flight: set[PendingWrite] = set()
        self._cond = threading.Condition()
        self._stopping = False
        self._threads: list[threading.Thread] = []

    # -- lifecycle -------------------------------------------------------------------------------------
    def start(self) -> None:
        for number in range(self._writer_count):
            thread = threading.Thread(target=self._run, name=f"ledger-writer-{number}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def shutdown(self, timeout_seconds: float = 30.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        deadline = time.monotonic() + timeout_seconds
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._threads.clear()
        with self._cond:  # anything left (no writer ran, or they timed out) is not durable: say so
            while self._queue:
                pending = self._queue.popleft()
                pending.error = "collector shutting down"
                self._in_flight.discard(pending)
                pending.done.set()

    # -- handler side ----------------------------------------------------------------------------------
    def submit(self, pending: PendingWrite) -> PendingWrite:
        with self._cond:
            if self._stopping and not self._threads:
                pending.error = "collector shutting down"
                pending.done.set()
                return pending
            self._queue.append(pending)
            self._in_flight.add(pending)
            self._cond.notify()
        return pending

    def wait(self, pending: PendingWrite, timeout_seconds: float) -> None:
        """Block until ``pending`` is committed; raise LedgerUnavailable if it was not."""
        if not pending.done.wait(timeout_seconds):
            with self._cond:
                if not pending.done.is_set():
                    pending.abandoned = True
                    if pending in self._in_flight and pending in self._queue:
                        self._queue.remove(pending)
                        self._in_flight.discard(pending)
            if not pending.done.is_set():
                self._metrics.ledger_write_errors.labels("timeout").inc()
                raise LedgerUnavailable(f"ledger write not committed within {timeout_seconds:g} s")
        if pending.error is not None:
            raise LedgerUnavailable(pending.error)

    def oldest_pending_age_seconds(self) -> float:
        with self._cond:
            if not self._in_flight:
                return 0.0
            oldest = min(p.received_monotonic for p in self._in_flight)
        return max(0.0, time.monotonic() - oldest)

    def pending_requests(self) -> int:
        with self._cond:
            return len(self._in_flight)

    # -- writer side -----------------------------------------------------------------------------------
    def _take_batch(self) -> list[PendingWrite] | None:
        with self._cond:
            while not self._queue and not self._stopping:
                self._cond.wait()
            if not self._queue:
                return None
            batch: list[PendingWrite] = []
            rows = 0
            while self._queue and (not batch or rows + len(self._queue[0].rows) <= self._batch_max_rows):
                pending = self._queue.popleft()
                batch.append(pending)
                rows += len(pending.rows)
            return batch

    def _run(self) -> None:
        conn: psycopg.Connection | None = None
        writer: LedgerWriter | None = None
        while True:
            batch = self._take_batch()
            if batch is None:
                break
            try:
                if conn is None or conn.closed or writer is None:
                    conn = writer = self._reset(conn)
                    conn = self._database.connect(connect_timeout=3)
                    # a session setting, so that options given in the database URL stay in force
                    conn.execute("SET statement_timeout = 60000")
                    writer = LedgerWriter(conn)
                self._write(conn, writer, batch)
            except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                log.warning("ledger unavailable: %s", _first_line(exc))
                self._fail(batch, "ledger database unavailable")
                conn = writer = self._reset(conn)
            except Exception:
                log.exception("ledger write failed; retrying each request alone")
                self._safe_rollback(conn)
                if writer is None or conn is None or conn.closed:  # could not even set up: start afresh
                    self._fail(batch, "ledger write failed")
                    conn = writer = self._reset(conn)
                elif len(batch) == 1:
                    self._fail(batch, "ledger write failed")
                else:
                    for pending in batch:
                        try:
                            assert conn is not None and writer is not None
                            self._write(conn, writer, [pending])
                        except Exception:
                            log.exception("ledger write of one request failed")
                            self._safe_rollback(conn)
                            self._fail([pending], "ledger write failed")
        if conn is not None:
            conn.close()

    @staticmethod
    def _reset(conn: psycopg.Connection | None) -> None:
        """Drop a connection that cannot be trusted; pause so a database that is down is not hammered."""
        if conn is not None:
            conn.close()
        time.sleep(0.05)

    @staticmethod
    def _safe_rollback(conn: psycopg.Connection | None) -> None:
        if conn is not None and not conn.closed:
            try:
                conn.rollback()
            except psycopg.Error:
                conn.close()

    def _fail(self, batch: list[PendingWrite], message: str) -> None:
        self._metrics.ledger_write_errors.labels("database").inc()
        with self._cond:
            for pending in batch:
                pending.error = message
                self._in_flight.discard(pending)
                pending.done.set()

    def _write(self, conn: psycopg.Connection, writer: LedgerWriter, batch: list[PendingWrite]) -> None:
        with self._cond:  # a handler that gave up has answered UNAVAILABLE: its client retries
            for pending in batch:
                if pending.abandoned:
                    self._in_flight.discard(pending)
                    pending.done.set()
            batch = [p for p in batch if not p.abandoned]
        if not batch:
            return
        started = time.perf_counter()
        rows = [row for pending in batch for row in pending.rows]
        written = writer.write_usage([usage_event_row(row) for row in rows])
        writer.write_rejected_spans(rejected_span_row(r) for pending in batch for r in pending.rejections)
        for pending in batch:
            if pending.rejected_request is not None:
                writer.write_rejected_request(pending.rejected_request)
        conn.commit()
        committed_at = time.time()
        try:  # the rows are durable now: nothing below may turn that into an error for the client
            self._metrics.ledger_write_duration.observe(time.perf_counter() - started)
            self._metrics.last_commit.set(committed_at)
            self._record(rows, written, committed_at)
        except Exception:
            log.exception("updating metrics after a commit failed")
        with self._cond:
            for pending in batch:
                self._in_flight.discard(pending)
                pending.done.set()

    def _record(self, rows: list[UsageRow], written: UsageWrite, committed_at: float) -> None:
        m = self._metrics
        billed: Counter[str] = Counter()
        duplicate: Counter[str] = Counter()
        amounts: Counter[tuple] = Counter()  # (labelled counter, label values) -> quantity
        observe_lag = m.pipeline_lag.observe
        # the same span twice in one batch is inserted once: count each new key once
        unclaimed = set(written.inserted_keys) if written.inserted_keys is not None else None
        for row in rows:
            code = row.meter.code
            if unclaimed is not None:
                if row.idempotency_key not in unclaimed:
                    duplicate[code] += 1
                    continue
                unclaimed.discard(row.idempotency_key)
            billed[code] += 1
            observe_lag(max(0.0, committed_at - row.end_time_unix_nano / 1e9))
            plan = m.plan_cap(row.plan_code)
            if row.meter is WORKER_SECONDS:
                amounts[(m.billable_worker_seconds, (plan,))] += row.quantity
            elif row.meter is GPU_SECONDS:
                amounts[(m.billable_gpu_seconds, (plan, m.gpu_cap(row.metadata.get("gpu.model"))))] += row.quantity
            elif row.meter is INPUT_TOKENS:
                amounts[(m.billable_tokens, (plan, "input"))] += row.quantity
            elif row.meter is OUTPUT_TOKENS:
                amounts[(m.billable_tokens, (plan, "output"))] += row.quantity
            elif row.meter is API_REQUESTS:
                amounts[(m.billable_api_requests, (plan,))] += row.quantity
        for code, count in billed.items():
            m.spans_billed.labels(code).inc(count)
        for code, count in duplicate.items():
            m.duplicates.labels(code).inc(count)
        for (counter, labels), amount in amounts.items():
            counter.labels(*labels).inc(float(amount))
