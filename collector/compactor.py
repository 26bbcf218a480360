"""The rollup compactor: folds pending rollup deltas into the rollups, in the background of ``spanmeter serve``.

Every ingest transaction appends pre-aggregated deltas (migration ``0005_rollup_deltas``); this component
calls :func:`spanmeter.billing.rollup_store.fold` every ``SPANMETER_ROLLUP_FOLD_INTERVAL_SECONDS`` (default 1 s)
on its own connection, and again at once while a fold comes back full, so a backlog drains at storage
speed. Correctness never depends on it: readers add pending deltas to the folded rows, so figures are exact
whether it runs or not. It only keeps the pending set small (readers fast, the table small).

Several ``serve`` processes on one ledger: the fold holds a transaction-level advisory lock, so one folds at
a time and the others find the lock taken and wait for the next tick. Every process still measures the
backlog and exports it:

- ``spanmeter_rollup_fold_lag_seconds``: age of the oldest pending delta (alert
  ``SpanmeterRollupFoldLagging``);
- ``spanmeter_rollup_pending_deltas``, ``spanmeter_rollup_deltas_folded_total``,
  ``spanmeter_rollup_fold_errors_total``, ``spanmeter_rollup_last_fold_timestamp_seconds``.

It also keeps the ledger's monthly partitions ahead (:func:`spanmeter.billing.ledger.partitions.ensure`, at start and
every ``partition_interval_seconds``, default an hour; every process may, the database function takes an
advisory lock; ``partition_months_ahead`` after the current month, from the clock skew the receiver accepts)
and exports ``spanmeter_ledger_partitions_end_timestamp_seconds``, read again even when creating fails, so
``SpanmeterLedgerPartitionsRunningOut`` fires as the end nears; a failure is counted in
``spanmeter_ledger_partition_errors_total`` and retried at the next tick.

A database error is counted and logged once per streak; the next tick reconnects. Lifecycle: ``start()``,
``shutdown()`` (safe without ``start()``; a fold in progress finishes or rolls back, never half-applies).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time

import psycopg

from spanmeter.billing.ledger import partitions, rollup_store
from spanmeter.billing.ledger.database import Database

from .metrics import RollupMetrics
from .own_connection import OwnConnection

__all__ = ["RollupCompactor"]

log = logging.getLogger(__name__)


class RollupCompactor:
    def __init__(
        self,
        database: Database,
        metrics: RollupMetrics,
        interval_seconds: float = 1.0,
        max_deltas_per_fold: int = 50_000,
        partition_interval_seconds: float = partitions.CHECK_INTERVAL_SECONDS,
        partition_months_ahead: int = partitions.MONTHS_AHEAD,
    ) -> None:
        self._database = database
        self._metrics = metrics
        self._interval = interval_seconds
        self._max_deltas = max_deltas_per_fold
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._db = OwnConnection(database, statement_timeout_ms=120_000)
        self._failing = False
        self._partition_interval = partition_interval_seconds
        self._months_ahead = partition_months_ahead
        self._partitions_due = 0.0  # monotonic time of the next partition check: at once
        self._partitions_failing = False

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="rollup-compactor", daemon=True)
        self._thread.start()

    def shutdown(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
            self._thread = None
        self._close()

    def keep_partitions(self) -> list[str]:
        """Create the months that should exist ahead and not yet do; update the end gauge. Returns the
        partitions created."""
        conn = self._connection()
        try:
            created = partitions.ensure(conn, months_ahead=self._months_ahead)
            conn.commit()
        except Exception:
            self._metrics.partition_errors.inc()
            with contextlib.suppress(Exception):  # what exists still tells how long spans are taken
                conn.rollback()
                self._export_end(conn)
            raise
        self._metrics.partitions_created.inc(len(created))
        self._export_end(conn)
        if created:
            log.info("created ledger partitions %s", ", ".join(created))
        return created

    def _export_end(self, conn: psycopg.Connection) -> None:
        end = partitions.coverage(conn).to_at
        conn.commit()
        self._metrics.partitions_end.set(end.timestamp() if end is not None else 0)

    def _keep_partitions_when_due(self) -> None:
        if time.monotonic() < self._partitions_due:
            return
        try:
            self.keep_partitions()
            self._partitions_due = time.monotonic() + self._partition_interval
            if self._partitions_failing:
                log.info("keeping ledger partitions works again")
            self._partitions_failing = False
        except Exception as exc:  # retried next tick; folding goes on
            if not self._partitions_failing:
                lines = str(exc).strip().splitlines()
                log.warning(
                    "checking the ledger's partitions failed (retrying): %s", lines[0] if lines else type(exc).__name__
                )
            self._partitions_failing = True
            self._close()

    def run_once(self) -> rollup_store.FoldResult:
        """Fold until the backlog is below one batch (or another process holds the lock); update the gauges.
        Returns what this call folded in all."""
        conn = self._connection()
        deltas = events = 0
        locked_out = False
        while not self._stop.is_set():
            result = rollup_store.fold(conn, self._max_deltas)
            if result.locked_out:
                locked_out = True
                break
            deltas, events = deltas + result.deltas, events + result.events
            self._metrics.deltas_folded.inc(result.deltas)
            self._metrics.last_fold.set(time.time())
            if result.deltas < self._max_deltas:
                break
        pending = rollup_store.pending_deltas(conn)
        conn.commit()
        self._metrics.pending_deltas.set(pending.deltas)
        self._metrics.fold_lag.set(pending.oldest_age_seconds)
        return rollup_store.FoldResult(deltas, events, locked_out=locked_out)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._keep_partitions_when_due()
            try:
                self.run_once()
                if self._failing:
                    log.info("rollup folding works again")
                self._failing = False
            except Exception as exc:  # never let the thread die: deltas stay pending, figures stay exact
                self._metrics.fold_errors.inc()
                if not self._failing:
                    lines = str(exc).strip().splitlines()
                    log.warning(
                        "folding rollup deltas failed (retrying): %s", lines[0] if lines else type(exc).__name__
                    )
                self._failing = True
                self._close()
            self._stop.wait(self._interval)

    def _connection(self) -> psycopg.Connection:
        return self._db.get()

    def _close(self) -> None:
        self._db.close()
