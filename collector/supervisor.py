"""``spanmeter serve --processes N``: N receiver processes on one OTLP port, so one host uses all its cores.

A Python receiver is one core of Python at most (the GIL). The supervisor (the process you start) runs N
receiver processes (:class:`~.server.CollectorServer` with ``role="receiver"``: the gRPC receiver and
its ledger writers) that all listen on the same OTLP port with ``SO_REUSEPORT``, so the kernel spreads
incoming *connections* over them. Each OTLP client keeps one connection (gRPC/HTTP2), so spreading needs
several clients or connections, as a fleet of SDKs or a Collector with several ``loadbalancing`` or
``sending_queue`` consumers provides. The supervisor itself:

- migrates the ledger once, before starting any receiver;
- holds the OTLP port: a socket bound with ``SO_REUSEPORT`` but not listening (no traffic goes to it)
  plus a lock file per endpoint in the temp directory, so a second, unrelated ``serve`` on the same port
  fails at start instead of silently taking half the traffic;
- folds rollup deltas (:mod:`.compactor`), refreshes the billing metrics and delivers webhooks
  (:mod:`.webhooks`), once for the host;
- serves ``/metrics``, ``/healthz`` and ``/readyz`` (ready when the database is and every receiver runs);
- restarts a receiver that dies (its unacknowledged requests are retried by their clients; nothing
  acknowledged can be lost: acknowledgement follows commit);
- on SIGTERM/SIGINT stops every receiver gracefully (in-flight requests finish and commit), then itself;
  SIGHUP is passed on (producers file reload).

Metrics across processes (prometheus_client's multiprocess mode, one directory per supervisor run):

| series | merged as |
|---|---|
| every counter and histogram of the receivers (``spanmeter_spans_*``, ``spanmeter_export_requests_total``, ``spanmeter_pipeline_lag_seconds``, the SLIs, …) | sum over all receivers, dead ones included (counters never go back) |
| ``spanmeter_ledger_last_commit_timestamp_seconds`` | max (the latest commit of any receiver) |
| ``spanmeter_oldest_pending_span_age_seconds`` | max over running receivers, sampled every second |
| ``spanmeter_ledger_pending_requests`` | sum over running receivers, sampled every second |
| ``spanmeter_rollup_*``, billing metrics, ``spanmeter_read_replica_*`` | the supervisor's own (it alone folds, refreshes and measures) |
| ``process_*`` | the supervisor process only (receivers' CPU and memory: cgroup or node metrics) |

The request-SLI label cap (``SPANMETER_SLI_MAX_SERIES``) applies per receiver process.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import multiprocessing as mp
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

from prometheus_client import CollectorRegistry, disable_created_metrics
from prometheus_client import multiprocess as prom_multiprocess
from prometheus_client.process_collector import ProcessCollector

from spanmeter.billing.ledger import partitions
from spanmeter.billing.ledger.database import Database, resolve_database

from .billing_metrics import BillingMetrics
from .compactor import RollupCompactor
from .config import CollectorConfig
from .health import health_server
from .http_server import ThreadedServer, bind
from .metrics import RollupMetrics
from .replica_lag import ReplicaLagMonitor, start_lag_monitor
from .schema import LedgerSchema, PrivilegedCredential, ledger_access
from .server import ListenAddresses, Readiness, _describe_security
from .webhooks import WebhookConfig, WebhookDispatcher

__all__ = ["Supervisor"]

log = logging.getLogger(__name__)
_READY_TIMEOUT_SECONDS = 90.0


def _receiver_main(config: CollectorConfig, database: Database, ready) -> None:  # a receiver process
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides when to stop
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    server = None
    try:
        from spanmeter.logs import configure_logging

        from .server import CollectorServer

        configure_logging(config.log_level, config.log_format)
        server = CollectorServer(config, database, role="receiver")
        signal.signal(signal.SIGHUP, lambda *_: _safely(server.reload_auth))
        addresses = server.start()
    except Exception as exc:  # reported to the supervisor, which says it once
        ready.send(("error", f"{type(exc).__name__}: {exc}"))
        if server is not None:
            server.shutdown(0)
        return
    ready.send(("ready", addresses.otlp))
    supervisor = os.getppid()
    while not stop.wait(1.0):
        if os.getppid() != supervisor:  # the supervisor died (SIGKILL): never outlive it, holding its port
            log.error("the supervisor process is gone; stopping")
            break
    server.shutdown()


def _safely(call) -> None:
    try:
        call()
    except Exception:
        log.exception("reloading the producers file failed")


class _Readiness:
    def __init__(self, database: Database, supervisor: Supervisor) -> None:
        self._database = Readiness(database, supervisor._schema)
        self._supervisor = supervisor

    def check(self) -> tuple[bool, str]:
        running, wanted = self._supervisor.running_receivers(), self._supervisor.config.processes
        if running < wanted:
            return False, f"{running} of {wanted} receiver processes running (restarting)"
        ready, detail = self._database.check()
        return ready, f"{detail}; {running} receiver processes" if ready else detail

    def close(self) -> None:
        self._database.close()


class Supervisor:
    """Same face as :class:`~.server.CollectorServer`: ``start()``, ``reload_auth()``, ``shutdown()``."""

    def __init__(self, config: CollectorConfig) -> None:
        self.config = config
        self._ctx = mp.get_context("spawn")  # fresh interpreters: no inherited threads, locks or gRPC state
        self._procs: list[mp.process.BaseProcess | None] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._guards: list[tuple[socket.socket, object]] = []  # (bound, not listening socket; its lock file)
        self._metrics_dir: Path | None = None
        self._receiver_config: CollectorConfig | None = None
        self._database: Database | None = None
        self._http: ThreadedServer | None = None
        self._readiness: _Readiness | None = None
        self._compactor: RollupCompactor | None = None
        self._billing_metrics: BillingMetrics | None = None
        self._webhooks: WebhookDispatcher | None = None
        self._replica_lag: ReplicaLagMonitor | None = None
        self._monitor: threading.Thread | None = None
        self._schema: LedgerSchema | None = None

    # -- lifecycle -------------------------------------------------------------------------------------
    def start(self) -> ListenAddresses:
        config = self.config
        webhook_config = WebhookConfig.from_environ(os.environ)  # a bad setting fails before anything starts
        access = ledger_access(resolve_database(config.database_url, config.data_dir), config.allow_owner)
        database = access.writer
        # migrate before the receivers start; with the database down, they start anyway and answer
        # UNAVAILABLE until the schema is at head (each receiver waits for it, see .schema)
        self._schema = LedgerSchema(access)
        if not self._schema.start() and self._schema.refused:
            raise PrivilegedCredential(self._schema.refused)
        host, port = self._hold_port(config.otlp_host, config.otlp_port, "OTLP/gRPC", "otlp")
        http_endpoint = None
        if config.otlp_http_host is not None and config.otlp_http_port is not None:
            http_host, http_port = self._hold_port(
                config.otlp_http_host, config.otlp_http_port, "OTLP/HTTP", "otlp-http"
            )
            http_endpoint = f"[{http_host}]:{http_port}" if ":" in http_host else f"{http_host}:{http_port}"
        self._metrics_dir = Path(tempfile.mkdtemp(prefix="spanmeter-metrics-"))
        self._database = database
        endpoint = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self._receiver_config = replace(
            config, otlp_endpoint=endpoint, otlp_http_endpoint=http_endpoint, metrics_port=None, processes=1
        )
        errors = []
        for number in range(config.processes):
            self._procs.append(None)
            error = self._spawn(number)
            if error:
                errors.append(error)
        if errors:
            raise OSError(f"a receiver process could not start: {errors[0]}")
        self._monitor = threading.Thread(target=self._watch, name="supervisor", daemon=True)
        self._monitor.start()

        disable_created_metrics()
        registry = CollectorRegistry(auto_describe=True)
        prom_multiprocess.MultiProcessCollector(registry, path=str(self._metrics_dir))
        ProcessCollector(registry=registry)
        self._compactor = RollupCompactor(
            database,
            RollupMetrics(registry),
            config.rollup_fold_interval_seconds,
            partition_months_ahead=partitions.months_ahead_for(config.max_clock_skew_seconds),
        )
        self._compactor.start()
        self._billing_metrics = BillingMetrics(database, registry, config.billing_metrics_interval_seconds)
        self._billing_metrics.start()
        self._webhooks = WebhookDispatcher.from_config(database, registry, webhook_config)
        self._webhooks.start()
        self._replica_lag = start_lag_monitor(config, database, registry)
        metrics_address = None
        if config.metrics_port or config.metrics_port == 0:
            self._readiness = _Readiness(database, self)
            self._http = health_server(config.metrics_bind_host, config.metrics_port, registry, self._readiness.check)
            metrics_address = f"{config.metrics_bind_host}:{self._http.port}"
        return ListenAddresses(
            otlp=f"{host}:{port}",
            metrics=metrics_address,
            database=database.description,
            security=f"{_describe_security(config)}; {config.processes} receiver processes (SO_REUSEPORT)",
            otlp_http=http_endpoint,
        )

    def reload_auth(self) -> bool | None:
        if self.config.auth_file is None:
            return None
        for proc in self._live():
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGHUP)
        return True

    def running_receivers(self) -> int:
        return len(self._live())

    def shutdown(self, grace_seconds: float | None = None) -> None:
        """Stop every receiver (each finishes and commits what it accepted), then the supervisor's parts."""
        self._stopping.set()
        grace = grace_seconds if grace_seconds is not None else self.config.ledger_write_timeout_seconds + 1
        procs = self._live()
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace + 30
        for proc in procs:
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                log.warning("receiver process %d did not stop in time; killing it", proc.pid)
                proc.kill()
                proc.join(5)
        if self._monitor is not None:
            self._monitor.join(5)
        for part in (self._compactor, self._billing_metrics, self._webhooks, self._replica_lag):
            if part is not None:
                part.shutdown()
        self._compactor = self._billing_metrics = self._webhooks = self._replica_lag = None
        if self._http is not None:
            self._http.shutdown(1.0)
            self._http = None
        if self._readiness is not None:
            self._readiness.close()
            self._readiness = None
        if self._schema is not None:
            self._schema.shutdown()
            self._schema = None
        for guard, lock_file in self._guards:
            guard.close()
            lock_file.close()  # type: ignore[attr-defined]
        self._guards = []
        if self._metrics_dir is not None:
            shutil.rmtree(self._metrics_dir, ignore_errors=True)
            self._metrics_dir = None

    # -- internals -------------------------------------------------------------------------------------
    def _hold_port(self, host: str, port: int, door: str, name: str) -> tuple[str, int]:
        setting = f"SPANMETER_{name.upper().replace('-', '_')}_ENDPOINT"
        guard = bind(host, port, door, setting, reuse_port=True, reuse_addr=False)
        port = guard.getsockname()[1]
        lock_path = Path(tempfile.gettempdir()) / f"spanmeter-{name}-{host.replace(':', '_')}-{port}.lock"
        lock_file = open(lock_path, "w")  # noqa: SIM115 (held until shutdown)
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock_file.close()
            guard.close()
            raise OSError(
                f"cannot listen for {door} on {host}:{port} ({setting}): another `spanmeter serve --processes` holds it ({lock_path}); stop it or pick another port"
            ) from None
        self._guards.append((guard, lock_file))
        return host, port

    def _spawn(self, number: int) -> str | None:
        """Start receiver ``number``; wait until it listens. Returns an error message, or None."""
        assert self._receiver_config is not None and self._metrics_dir is not None
        parent, child = self._ctx.Pipe(duplex=False)
        with self._lock:
            saved = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(self._metrics_dir)  # read once, at the child's import
            try:
                proc = self._ctx.Process(
                    target=_receiver_main,
                    args=(self._receiver_config, self._database, child),
                    name=f"spanmeter-receiver-{number}",
                    daemon=False,
                )
                proc.start()
            finally:
                if saved is None:
                    os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
                else:
                    os.environ["PROMETHEUS_MULTIPROC_DIR"] = saved
            self._procs[number] = proc
        child.close()
        if not parent.poll(_READY_TIMEOUT_SECONDS):
            return f"receiver {number} did not start within {_READY_TIMEOUT_SECONDS:g} s"
        try:
            kind, detail = parent.recv()
        except EOFError:
            return f"receiver {number} exited with {proc.exitcode} before listening"
        finally:
            parent.close()
        return None if kind == "ready" else detail

    def _live(self) -> list[mp.process.BaseProcess]:
        with self._lock:
            return [p for p in self._procs if p is not None and p.is_alive()]

    def _watch(self) -> None:
        """Restart receivers that die, until shutdown."""
        while not self._stopping.wait(0.5):
            for number, proc in enumerate(list(self._procs)):
                if proc is None or proc.is_alive() or self._stopping.is_set():
                    continue
                log.error("receiver process %d exited with %s; restarting it", proc.pid, proc.exitcode)
                prom_multiprocess.mark_process_dead(proc.pid, str(self._metrics_dir))
                error = self._spawn(number)
                if error:
                    log.error("restarting receiver %d failed: %s", number, error)
                    time.sleep(1.0)
