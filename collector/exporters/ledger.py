"""The ledger exporter: group commit of usage rows, acknowledged only after COMMIT.

Export handlers call :meth:`LedgerExporter.submit` with one request's rows and rejections, then
:meth:`LedgerExporter.wait` for the commit. Writer threads (``SPANMETER_LEDGER_WRITERS``, each with its own
connection) take everything queued, up to ``SPANMETER_LEDGER_BATCH_MAX_ROWS`` rows, and write it in one
transaction through :class:`spanmeter.billing.ledger.writer.LedgerWriter`: while one transaction commits,
the next one fills up, so concurrent requests share the cost of a commit (fsync) and of each statement.

Failure handling, from the client's point of view (errors classed by SQLSTATE, see
:mod:`spanmeter.billing.ledger.errors`):

- database unreachable, a deadlock, a serialization failure, a timeout (*retryable*): every request in
  that transaction is told so; the handler answers UNAVAILABLE with a RetryInfo, the client retries, and
  idempotency keys make the retry exact. A missing table or refused credentials are retryable too (usage
  is never dropped for a deployment mistake) and counted as ``kind="configuration"`` so an alert fires;
- a value the database can never accept (*permanent*: a data exception or a constraint violation): the
  transaction is replayed with savepoints, bisecting the rows until the offending ones are found; those
  are kept in ``rejected_spans`` (reason ``ledger_refused``, the database's message, the span's payload)
  and reported in ``partial_success``; every other row of every request in the batch commits;
- a request whose handler gave up waiting (write timeout) and that is still queued is dropped from the
  queue: the client retries it anyway, and the queue must not grow with abandoned work.

Writers take no lock on shared rows (the rollup upkeep only appends deltas, see
:mod:`spanmeter.billing.rollups`), so concurrent writers cannot deadlock each other.

Lifecycle: ``start()`` starts the writers; ``shutdown()`` (safe without ``start()``) writes what is queued,
then stops them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Iterable
from decimal import Decimal
from typing import Any

import psycopg

from spanmeter.billing.ledger.database import Database
from spanmeter.billing.ledger.errors import WriteErrorClass, classify
from spanmeter.billing.ledger.writer import KeyConflict, LedgerWriter, UsageEventTuple, UsageWrite, encode_copy

from ..consumer import CompactRow, PendingWrite, RetryableError
from ..metrics import CollectorMetrics, observe_many
from ..processors.meters import ALL_METERS, MeterDefinition
from ..processors.usage import Rejection, UsageEvent
from .kept import conflict_rejection, conflicting, kept_rejection, outside_rejection
from .rows import compact_row, rejected_span_row, usage_event_tuple


def _routes(
    metrics: CollectorMetrics, meters: Iterable[MeterDefinition]
) -> dict[tuple[str, int], tuple[Any, tuple[str, ...]]]:
    """(meter code, version) -> (the billable counter, its label recipe), from each definition's routing."""
    routes = {}
    for meter in meters:
        if meter.routing is not None:
            routes[(meter.code, meter.version)] = (metrics.billable[meter.routing.metric], meter.routing.labels)
    return routes


__all__ = ["LedgerExporter", "LedgerUnavailable", "PendingWrite"]

log = logging.getLogger(__name__)


def _payload(pending: PendingWrite, row: UsageEvent) -> bytes:
    """The row's span as its request carried it (empty when the request kept no payloads)."""
    return pending.span_payload(row) if pending.span_payload is not None else b""


def _kept_row(pending: PendingWrite, row: UsageEvent, reason: str, message: str, salt: bytes = b"") -> Rejection:
    """A usage row kept as a rejected span of its request (its span's payload, for a later decision)."""
    return kept_rejection(row, reason, message, _payload(pending, row), salt)


def _refusal(pending: PendingWrite, row: UsageEvent, message: str) -> Rejection:
    """A usage row the ledger refused permanently, kept like a span rejected at validation."""
    return _kept_row(pending, row, "ledger_refused", f"the ledger refused {row.meter.code}: {message}")


def _refuse_conflicts(batch: list[PendingWrite], conflicts: tuple[KeyConflict, ...]) -> set[str]:
    """Turn the rows of ``batch`` that conflict with the ledger into ``key_conflict`` rejections of their
    requests; returns their keys."""
    held = {c.idempotency_key: c for c in conflicts}
    found: set[str] = set()
    for pending in batch:
        if pending.encoded is not None:
            keys = {compact[2] for compact in pending.encoded.compact}
        else:
            keys = {row.idempotency_key for row in pending.rows}
        if keys.isdisjoint(held):
            continue
        for row, c in conflicting(pending.usage_rows(), held, pending.producer):
            pending.refused.append(conflict_rejection(row, c, _payload(pending, row), pending.producer))
            found.add(row.idempotency_key)
    if found:
        log.warning(
            "%d usage rows arrived with a key the ledger holds with other content; kept as key_conflict", len(found)
        )
    return found


def _refuse_outside(batch: list[PendingWrite], outside: tuple[tuple[str, str], ...]) -> set[str]:
    """Turn the rows of ``batch`` whose month has no partition into rejections of their requests
    (``no_partition``, ``archived_period``); returns their keys."""
    reasons = dict(outside)
    found: set[str] = set()
    for pending in batch:
        for row in pending.usage_rows():
            reason = reasons.get(row.idempotency_key)
            if reason is None:
                continue
            pending.refused.append(outside_rejection(row, reason, _payload(pending, row)))
            found.add(row.idempotency_key)
    if found:
        log.warning(
            "%d usage rows ended in a month without a ledger partition; kept as %s",
            len(found),
            " and ".join(sorted(set(reasons.values()))),
        )
    return found


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _always_ready() -> threading.Event:
    event = threading.Event()
    event.set()
    return event


class LedgerUnavailable(RetryableError):
    """The ledger did not commit this request; the client must retry."""


class LedgerExporter:
    def __init__(
        self,
        database: Database,
        metrics: CollectorMetrics,
        batch_max_rows: int = 20_000,
        writers: int = 2,
        ready: threading.Event | None = None,
    ) -> None:
        self._database = database
        # set once the ledger is usable (see collector.schema); until then every write is answered retryable
        self._ready = ready if ready is not None else _always_ready()
        self._metrics = metrics
        self._routes = _routes(metrics, ALL_METERS.values())
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
        if not self._ready.is_set():  # database down at start, or schema not migrated yet
            self._metrics.ledger_write_errors.labels("database").inc()
            pending.error = "ledger database not available yet"
            pending.done.set()
            return pending
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
            while self._queue and (not batch or rows + self._queue[0].row_count <= self._batch_max_rows):
                pending = self._queue.popleft()
                batch.append(pending)
                rows += pending.row_count
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
            except Exception as exc:
                conn, writer = self._handle_failure(conn, writer, batch, exc)
            # drop the batch before waiting for the next: it holds its requests' bodies and COPY text, tens
            # of MiB after a large request, which would otherwise stay alive until the next batch arrives
            batch = None
        if conn is not None:
            conn.close()

    def _handle_failure(
        self, conn: psycopg.Connection | None, writer: LedgerWriter | None, batch: list[PendingWrite], exc: Exception
    ) -> tuple[psycopg.Connection | None, LedgerWriter | None]:
        """Answer a failed group commit by its error class; returns the connection to go on with."""
        kind = classify(exc)
        self._safe_rollback(conn)
        usable = conn is not None and not conn.closed and writer is not None
        if kind is WriteErrorClass.PERMANENT and usable:
            assert conn is not None and writer is not None
            log.warning("the ledger refused a value (%s); isolating the offending rows", _first_line(exc))
            try:
                self._write(conn, writer, batch, isolate=True)
                return conn, writer
            except Exception as again:
                self._safe_rollback(conn)
                exc, kind = again, classify(again)
                usable = not conn.closed
                if kind is WriteErrorClass.PERMANENT:  # not a row's fault after all: never refuse a whole batch
                    kind = WriteErrorClass.RETRYABLE
        if kind is WriteErrorClass.MISCONFIGURED:
            log.error("ledger misconfigured (retrying; fix the deployment): %s", _first_line(exc))
            self._fail(batch, f"ledger misconfigured: {_first_line(exc)}", kind="configuration")
        elif isinstance(exc, psycopg.Error):
            log.warning("ledger unavailable: %s", _first_line(exc))
            self._fail(batch, "ledger database unavailable")
        else:
            log.exception("ledger write failed (retrying)", exc_info=exc)
            self._fail(batch, "ledger write failed")
        if usable and isinstance(exc, psycopg.Error) and exc.sqlstate and not exc.sqlstate.startswith("08"):
            return conn, writer  # the server answered: the session is fine
        return self._reset(conn), None

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

    def _fail(self, batch: list[PendingWrite], message: str, kind: str = "database") -> None:
        self._metrics.ledger_write_errors.labels(kind).inc()
        with self._cond:
            for pending in batch:
                pending.error = message
                self._in_flight.discard(pending)
                pending.done.set()

    def _write(
        self, conn: psycopg.Connection, writer: LedgerWriter, batch: list[PendingWrite], isolate: bool = False
    ) -> None:
        with self._cond:  # a handler that gave up has answered UNAVAILABLE: its client retries
            for pending in batch:
                if pending.abandoned:
                    self._in_flight.discard(pending)
                    pending.done.set()
            batch = [p for p in batch if not p.abandoned]
        if not batch:
            return
        started = time.perf_counter()
        if isolate:
            rows, written = self._write_isolating(conn, writer, batch)
        else:  # the native core's COPY text as it is; rows metered in Python are encoded here
            chunks: dict[str | None, list[bytes]] = {}  # by producer: one COPY each
            rows = []
            for pending in batch:
                if pending.encoded is not None:
                    chunks.setdefault(pending.producer, []).append(pending.encoded.copy_text)
                    rows.extend(pending.encoded.compact)
                elif pending.rows:
                    chunks.setdefault(pending.producer, []).append(encode_copy(map(usage_event_tuple, pending.rows)))
                    rows.extend(map(compact_row, pending.rows))
            written = writer.write_copies([(who, b"".join(parts)) for who, parts in chunks.items()], len(rows))
            for pending in batch:
                pending.refused.clear()
        conflicted = _refuse_conflicts(batch, written.conflicts) if written.conflicts else set()
        if written.outside:
            conflicted |= _refuse_outside(batch, written.outside)
        writer.write_rejected_spans(
            rejected_span_row(r, pending.producer) for pending in batch for r in (*pending.rejections, *pending.refused)
        )
        for pending in batch:
            if pending.rejected_request is not None:
                writer.write_rejected_request(pending.rejected_request)
        conn.commit()
        committed_at = time.time()
        try:  # the rows are durable now: nothing below may turn that into an error for the client
            self._metrics.ledger_write_duration.observe(time.perf_counter() - started)
            self._metrics.last_commit.set(committed_at)
            self._record(rows, written, committed_at, conflicted)
        except Exception:
            log.exception("updating metrics after a commit failed")
        with self._cond:
            for pending in batch:
                self._in_flight.discard(pending)
                pending.done.set()

    def _write_isolating(
        self, conn: psycopg.Connection, writer: LedgerWriter, batch: list[PendingWrite]
    ) -> tuple[list[CompactRow], UsageWrite]:
        """Write the batch's rows under savepoints, bisecting around rows the database refuses permanently;
        those become ``ledger_refused`` rejections of their request. Returns the rows written and which
        were new."""
        written_rows: list[CompactRow] = []
        new_keys: set[str] = set()
        conflicts: list[KeyConflict] = []
        outside: list[tuple[str, str]] = []

        def attempt(pending: PendingWrite, rows: list[UsageEvent]) -> None:
            events: list[UsageEventTuple] = [usage_event_tuple(row) for row in rows]
            try:
                with conn.transaction():  # a savepoint: a refusal undoes only this part
                    writer.discard_staged()
                    result = writer.write_usage(events, pending.producer)
            except psycopg.Error as exc:
                if classify(exc) is not WriteErrorClass.PERMANENT:
                    raise
                if len(rows) > 1:
                    middle = len(rows) // 2
                    attempt(pending, rows[:middle])
                    attempt(pending, rows[middle:])
                else:
                    pending.refused.append(_refusal(pending, rows[0], _first_line(exc)))
                return
            written_rows.extend(map(compact_row, rows))
            new_keys.update(e[1] for e in events if result.is_new(e[1]))
            conflicts.extend(result.conflicts)
            outside.extend(result.outside)

        for pending in batch:
            pending.refused.clear()
            rows = pending.usage_rows()
            if rows:
                attempt(pending, list(rows))
        refused = sum(len(p.refused) for p in batch)
        if refused:
            log.warning("%d usage rows refused by the ledger, kept in rejected_spans (ledger_refused)", refused)
        return written_rows, UsageWrite(
            len(written_rows), len(new_keys), frozenset(new_keys), tuple(conflicts), tuple(outside)
        )

    def _target(
        self, code: str, version: int, plan_code: str | None, label: str | None
    ) -> tuple[Any, tuple[str, ...]] | None:
        """(billable counter, label values) for a row of this meter version, plan and label; None: unrouted."""
        route = self._routes.get((code, version))
        if route is None:
            return None
        m = self._metrics
        counter, recipe = route
        values = tuple(
            m.plan_cap(plan_code) if part == "plan" else m.gpu_cap(label) if part == "gpu_model" else part[1:]
            for part in recipe
        )
        return counter, values

    def _record(
        self, rows: list[CompactRow], written: UsageWrite, committed_at: float, conflicted: set[str] = frozenset()
    ) -> None:
        m = self._metrics
        duplicate: Counter[str] = Counter()
        if written.inserted_keys is None:  # the usual case: every row was new
            new_rows = rows
        else:  # the same span twice in one batch is inserted once: count each new key once
            unclaimed = set(written.inserted_keys)
            new_rows = []
            for row in rows:
                key = row[2]
                if key in unclaimed:
                    unclaimed.discard(key)
                    new_rows.append(row)
                elif key not in conflicted:  # a conflict (or no partition) is a rejection, not a duplicate
                    duplicate[row[0]] += 1
        for code, count in duplicate.items():  # counted first: nothing below can keep them uncounted
            m.duplicates.labels(code).inc(count)
        # one pass per metric, not one metric call per row (see metrics.observe_many)
        lags = [committed_at - row[6] / 1e9 for row in new_rows]  # row[6]: the span's end, ns
        observe_many(m.pipeline_lag, [lag if lag > 0.0 else 0.0 for lag in lags])
        quantities: dict[tuple[str, int, str | None, str | None], list[str]] = {}
        for code, version, _key, plan_code, label, quantity, _end in new_rows:
            group = (code, version, plan_code, label)
            amounts = quantities.get(group)
            if amounts is None:
                amounts = quantities[group] = []
            amounts.append(quantity)
        billed: Counter[str] = Counter()
        for (code, _version, _plan_code, _label), amounts in quantities.items():
            billed[code] += len(amounts)
        for code, count in billed.items():
            m.spans_billed.labels(code).inc(count)
        summed: dict[tuple[Any, tuple[str, ...]], Decimal] = {}
        for (code, version, plan_code, label), amounts in quantities.items():
            target = self._target(code, version, plan_code, label)
            if target is None:  # a meter without routing: counted in spans_billed only
                continue
            summed[target] = summed.get(target, Decimal(0)) + sum(map(Decimal, amounts))
        for (counter, labels), amount in summed.items():  # summed exactly, then handed over as a float
            counter.labels(*labels).inc(float(amount))
