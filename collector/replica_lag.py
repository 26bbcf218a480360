"""The read replica's lag as metrics: ``spanmeter serve`` measures it when ``SPANMETER_READ_DATABASE_URL`` is set.

Every ``interval_seconds`` (default 5 s), in its own thread, one short connection to each server:
the primary's ``pg_current_wal_lsn()``, then the standby's replay position, paused state and last replayed
commit (:func:`spanmeter.billing.ledger.replica.measure_lag`). The gauges of
:class:`~.metrics.ReadReplicaMetrics` hold the last measurement; a failed one (either server unreachable)
counts ``spanmeter_read_replica_measure_errors_total`` and leaves
``spanmeter_read_replica_last_measured_timestamp_seconds`` behind, which is what ``SpanmeterReadReplicaLagging``
sees when the replica is gone. The functions it calls are open to every role: the writer's credential on
the primary and the read URL's on the replica suffice.
"""

from __future__ import annotations

import logging
import threading
import time

from prometheus_client import CollectorRegistry

from spanmeter.billing.ledger.database import Database
from spanmeter.billing.ledger.replica import ReplicaLag, measure_lag, replica_database

from .config import CollectorConfig
from .metrics import ReadReplicaMetrics

__all__ = ["ReplicaLagMonitor", "start_lag_monitor"]

log = logging.getLogger(__name__)


class ReplicaLagMonitor:
    def __init__(
        self, primary: Database, replica: Database, metrics: ReadReplicaMetrics, interval_seconds: float = 5.0
    ) -> None:
        self._primary = primary
        self._replica = replica
        self._metrics = metrics
        self._interval = interval_seconds
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False

    def refresh(self) -> ReplicaLag:
        """Measure once and set the gauges (raises what the measurement raised)."""
        lag = measure_lag(self._primary, self._replica)
        self._metrics.lag_bytes.set(lag.lag_bytes)
        self._metrics.replay_delay.set(lag.replay_delay_seconds)
        self._metrics.replay_paused.set(1 if lag.replay_paused else 0)
        self._metrics.last_measured.set(time.time())
        return lag

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.refresh()
                if self._failing:
                    log.info("measuring the %s's lag works again", self._replica.description)
                self._failing = False
            except Exception as exc:  # a server away: count it, say it once, keep the previous values
                self._metrics.measure_errors.inc()
                if not self._failing:
                    lines = str(exc).strip().splitlines()
                    log.warning(
                        "measuring the %s's lag failed (%s); retrying every %g s",
                        self._replica.description,
                        lines[0] if lines else type(exc).__name__,
                        self._interval,
                    )
                self._failing = True
            self._stop.wait(self._interval)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="replica-lag", daemon=True)
        self._thread.start()

    def shutdown(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None


def start_lag_monitor(
    config: CollectorConfig, primary: Database, registry: CollectorRegistry
) -> ReplicaLagMonitor | None:
    """The started monitor when a read replica is configured, else None (and no ``spanmeter_read_replica_*``)."""
    if not config.read_database_url:
        return None
    monitor = ReplicaLagMonitor(primary, replica_database(config.read_database_url), ReadReplicaMetrics(registry))
    monitor.start()
    return monitor
