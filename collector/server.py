"""The collector process: database, migrations, ledger exporter, gRPC receiver, metrics and health.

``CollectorServer(config).start()`` resolves the database (embedded by default), applies migrations under
the advisory lock, starts the ledger writers, the receiver with its two doors (OTLP/gRPC, and OTLP/HTTP
unless ``SPANMETER_OTLP_HTTP_ENDPOINT=none``, see :mod:`.http_receiver`), the rollup compactor (:mod:`.compactor`),
the billing metrics refresh, the webhook dispatcher (:mod:`.webhooks`) and the HTTP server on the metrics port (``serve --processes N`` runs N of these
as receivers only, under :mod:`.supervisor`):

- ``/metrics``: every ``spanmeter_*`` metric (see :mod:`.metrics`), exposed by prometheus_client itself
  (text or OpenMetrics by ``Accept``, gzip by ``Accept-Encoding``; see :mod:`.health`);
- ``/healthz``: 200 while the process runs;
- ``/readyz``: 200 when the database answers and its schema is at the head migration, else 503.

``shutdown()`` (safe without ``start()``) stops accepting Export calls, lets in-flight ones finish (they
wait for their commit), drains the ledger writers, then stops the HTTP server.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from concurrent import futures
from dataclasses import dataclass

import grpc
from prometheus_client import CollectorRegistry

from spanmeter.billing.ledger import migrate, partitions
from spanmeter.billing.ledger.database import Database, resolve_database

from .auth import Authenticator
from .billing_metrics import BillingMetrics
from .compactor import RollupCompactor
from .config import CollectorConfig
from .exporters.ledger import LedgerExporter
from .health import health_server
from .http_receiver import HttpReceiver
from .http_server import ThreadedServer
from .metrics import CollectorMetrics, RollupMetrics
from .receiver import TraceReceiver
from .replica_lag import ReplicaLagMonitor, start_lag_monitor
from .schema import LedgerAccess, LedgerSchema, PrivilegedCredential, ledger_access
from .webhooks import WebhookConfig, WebhookDispatcher

__all__ = ["CollectorServer", "ListenAddresses"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ListenAddresses:
    otlp: str
    metrics: str | None
    database: str
    security: str
    otlp_http: str | None = None  # None: the HTTP door is off


def _describe_security(config: CollectorConfig) -> str:
    transport = "mTLS" if config.tls_client_ca_file else "TLS" if config.tls_cert_file else "plaintext"
    who = f"producers from {config.auth_file}" if config.auth_file else "no producer authentication"
    return f"{transport}, {who}"


class CollectorServer:
    """``role="all"``: the whole collector in one process. ``role="receiver"``: one of ``serve --processes N``'s
    receiver processes (see :mod:`.supervisor`): gRPC receiver and ledger writers only, on a port shared
    with its siblings (SO_REUSEPORT), metrics in prometheus_client's multiprocess mode; the supervisor
    migrates, folds rollups, refreshes billing metrics and serves HTTP."""

    def __init__(self, config: CollectorConfig, database: Database | None = None, role: str = "all") -> None:
        if role not in ("all", "receiver"):
            raise ValueError(f"role must be 'all' or 'receiver', not {role!r}")
        self.config = config
        self._role = role
        self._gauges_stop = threading.Event()
        self._database = database
        self._grpc: grpc.Server | None = None
        self._otlp_http: HttpReceiver | None = None
        self._http: ThreadedServer | None = None
        self._exporter: LedgerExporter | None = None
        self._authenticator: Authenticator | None = None
        self._readiness: Readiness | None = None
        self._billing_metrics: BillingMetrics | None = None
        self._compactor: RollupCompactor | None = None
        self._webhooks: WebhookDispatcher | None = None
        self._replica_lag: ReplicaLagMonitor | None = None
        self._schema: LedgerSchema | None = None
        self.registry = CollectorRegistry(auto_describe=True)

    def start(self) -> ListenAddresses:
        config = self.config
        receiver_only = self._role == "receiver"
        webhook_config = None if receiver_only else WebhookConfig.from_environ(os.environ)  # fail before starting
        if receiver_only:  # the supervisor resolved the credentials and migrates: wait for the head schema
            assert self._database is not None
            # each receiver checks the credential itself too: the supervisor's first check may not have run
            # (database down at start), and a receiver must never open writes with an owner credential
            access = LedgerAccess(writer=self._database, migrator=None, refuse_privileged=not config.allow_owner)
        else:
            access = ledger_access(resolve_database(config.database_url, config.data_dir), config.allow_owner)
        database = self._database = access.writer
        # migrate now (if this process does); if the database is down, serve anyway, answering UNAVAILABLE,
        # and keep trying in the background; refuse a credential that could change rows (see .schema)
        self._schema = LedgerSchema(access)
        if not self._schema.start() and self._schema.refused:
            raise PrivilegedCredential(self._schema.refused)
        exporter: LedgerExporter | None = None  # the gauges below read it once it exists
        metrics = CollectorMetrics(
            self.registry,
            config.plan_codes,
            config.gpu_models,
            sli_max_series=config.sli_max_series,
            oldest_pending_age_seconds=lambda: exporter.oldest_pending_age_seconds() if exporter else 0.0,
            pending_requests=lambda: exporter.pending_requests() if exporter else 0,
            multiprocess=receiver_only,
        )
        exporter = LedgerExporter(
            database,
            metrics,
            batch_max_rows=config.ledger_batch_max_rows,
            writers=config.ledger_writers,
            ready=self._schema.ready,
        )
        exporter.start()
        self._exporter = exporter

        if config.auth_file is not None:
            self._authenticator = Authenticator(
                config.auth_file, on_reload=lambda ok: metrics.auth_reloads.labels("ok" if ok else "failed").inc()
            )
            self._authenticator.start()
        receiver = TraceReceiver(config, exporter, metrics, authenticator=self._authenticator)
        limit = config.max_receive_message_bytes
        server = grpc.server(
            # A few threads beyond the in-flight bound, so calls over it are refused quickly (UNAVAILABLE +
            # RetryInfo). No `maximum_concurrent_rpcs`: gRPC answers calls over it RESOURCE_EXHAUSTED, which
            # OTLP exporters treat as "drop". No `grpc.max_concurrent_streams` either: a client that opens
            # streams before it has read the server's SETTINGS gets them reset (REFUSED_STREAM, UNAVAILABLE
            # without RetryInfo). Calls beyond the threads wait for one holding only their stream state (a
            # unary body is read by the thread that handles it; HTTP/2 flow control bounds what a connection
            # can buffer meanwhile).
            futures.ThreadPoolExecutor(max_workers=config.max_inflight_requests + 4, thread_name_prefix="otlp"),
            handlers=[receiver.handler()],
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", 4 * 1024 * 1024),
                # off unless the supervisor shares the port between its receiver processes: a second,
                # unrelated `spanmeter serve` on the same port must fail, not split the traffic
                ("grpc.so_reuseport", 1 if receiver_only else 0),
            ],
        )
        host, port = config.otlp_host, config.otlp_port
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        try:
            if config.tls_cert_file is not None and config.tls_key_file is not None:
                credentials = grpc.ssl_server_credentials(
                    [(config.tls_key_file.read_bytes(), config.tls_cert_file.read_bytes())],
                    root_certificates=config.tls_client_ca_file.read_bytes() if config.tls_client_ca_file else None,
                    require_client_auth=config.tls_client_ca_file is not None,
                )
                bound = server.add_secure_port(address, credentials)
            else:
                bound = server.add_insecure_port(address)
        except RuntimeError as exc:
            raise OSError(
                f"cannot listen for OTLP/gRPC on {config.otlp_endpoint} (SPANMETER_OTLP_ENDPOINT, --otlp-endpoint): "
                f"{exc}"
            ) from None
        if not bound:
            raise OSError(
                f"cannot listen for OTLP/gRPC on {config.otlp_endpoint} (SPANMETER_OTLP_ENDPOINT, --otlp-endpoint): "
                "the address is in use or not this host's; pick a free port"
            )
        server.start()
        self._grpc = server
        otlp_http = None
        if config.otlp_http_endpoint is not None:
            self._otlp_http = HttpReceiver(receiver, config)
            http_host, http_port = config.otlp_http_host, config.otlp_http_port
            assert http_host is not None and http_port is not None
            # shared with the sibling receivers of --processes N, like the gRPC port
            bound_http = self._otlp_http.start(http_host, http_port, reuse_port=receiver_only)
            otlp_http = f"[{http_host}]:{bound_http}" if ":" in http_host else f"{http_host}:{bound_http}"
        if receiver_only:
            threading.Thread(target=self._sample_gauges, args=(metrics,), name="gauges", daemon=True).start()
            return ListenAddresses(
                otlp=f"{host}:{bound}",
                metrics=None,
                database=database.description,
                security=_describe_security(config),
                otlp_http=otlp_http,
            )

        self._billing_metrics = BillingMetrics(database, self.registry, config.billing_metrics_interval_seconds)
        self._billing_metrics.start()
        self._compactor = RollupCompactor(
            database,
            RollupMetrics(self.registry),
            config.rollup_fold_interval_seconds,
            partition_months_ahead=partitions.months_ahead_for(config.max_clock_skew_seconds),
        )
        self._compactor.start()
        assert webhook_config is not None
        self._webhooks = WebhookDispatcher.from_config(database, self.registry, webhook_config)
        self._webhooks.start()
        # only the lag of the read replica: serve itself reads the primary (duplicate checks, readiness, folds)
        self._replica_lag = start_lag_monitor(config, database, self.registry)

        metrics_address = None
        if config.metrics_port or config.metrics_port == 0:
            self._readiness = Readiness(database, self._schema)
            self._http = health_server(
                config.metrics_bind_host, config.metrics_port, self.registry, self._readiness.check
            )
            metrics_address = f"{config.metrics_bind_host}:{self._http.port}"
        return ListenAddresses(
            otlp=f"{host}:{bound}",
            metrics=metrics_address,
            database=database.description,
            security=_describe_security(config),
            otlp_http=otlp_http,
        )

    def _sample_gauges(self, metrics: CollectorMetrics) -> None:
        while not self._gauges_stop.wait(1.0):
            try:
                metrics.sample_gauges()
            except Exception:  # a metrics hiccup never takes the receiver down
                log.debug("sampling gauges failed", exc_info=True)

    def reload_auth(self) -> bool | None:
        """Re-read the producers file now (SIGHUP); None when authentication is not configured."""
        return self._authenticator.reload() if self._authenticator is not None else None

    def shutdown(self, grace_seconds: float | None = None) -> None:
        grace = grace_seconds if grace_seconds is not None else self.config.ledger_write_timeout_seconds + 1
        self._gauges_stop.set()
        stopping = [threading.Thread(target=self._otlp_http.shutdown, args=(grace,))] if self._otlp_http else []
        for thread in stopping:  # both doors stop taking requests at once; in-flight ones finish
            thread.start()
        if self._grpc is not None:
            self._grpc.stop(grace).wait()
            self._grpc = None
        for thread in stopping:
            thread.join()
        self._otlp_http = None
        if self._exporter is not None:
            self._exporter.shutdown()
            self._exporter = None
        if self._authenticator is not None:
            self._authenticator.shutdown()
            self._authenticator = None
        if self._billing_metrics is not None:
            self._billing_metrics.shutdown()
            self._billing_metrics = None
        if self._compactor is not None:
            self._compactor.shutdown()
            self._compactor = None
        if self._webhooks is not None:
            self._webhooks.shutdown()
            self._webhooks = None
        if self._replica_lag is not None:
            self._replica_lag.shutdown()
            self._replica_lag = None
        if self._http is not None:
            self._http.shutdown(1.0)
            self._http = None
        if self._readiness is not None:
            self._readiness.close()
            self._readiness = None
        if self._schema is not None:
            self._schema.shutdown()
            self._schema = None


class Readiness:
    """``/readyz``: database reachable and schema at the head migration. One pooled connection, and the
    answer is reused for a second, so a flood of probes cannot exhaust the database's connections."""

    def __init__(self, database: Database, schema: LedgerSchema | None = None, cache_seconds: float = 1.0) -> None:
        self._schema = schema
        self._engine = database.engine(pool_size=1, max_overflow=0, pool_timeout=5, pool_pre_ping=True)
        self._cache_seconds = cache_seconds
        self._lock = threading.Lock()
        self._answer: tuple[bool, str] = (False, "not checked yet")
        self._checked_at = float("-inf")

    def check(self) -> tuple[bool, str]:
        with self._lock:
            now = time.monotonic()
            if now - self._checked_at >= self._cache_seconds:
                self._answer = self._probe()
                self._checked_at = time.monotonic()
            return self._answer

    def _probe(self) -> tuple[bool, str]:
        try:
            with self._engine.connect() as connection:
                current = migrate.current_revision(connection)
        except Exception as exc:
            lines = str(exc).strip().splitlines()
            return False, f"database unreachable: {lines[0] if lines else type(exc).__name__}"
        head = migrate.head_revision()
        if current != head:
            return False, f"schema at {current}, expected {head}: run `spanmeter db upgrade`"
        if self._schema is not None and not self._schema.ready.is_set():
            return False, f"ledger writes not open yet: {self._schema.problem or 'starting'}"
        return True, f"ready (schema {head})"

    def close(self) -> None:
        self._engine.dispose()
