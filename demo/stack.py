"""Processes of the demo stack: the collector, the Django web server and a Celery worker.

:class:`DemoStack` starts real processes (``spanmeter serve``, Django's ``runserver``, ``celery worker``
with the prefork pool) wired together by environment variables only, exactly as a deployment would be,
and stops every one of them. ``spanmeter demo`` (:mod:`.runner`) and the end-to-end tests use it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from psycopg.conninfo import conninfo_to_dict

from .workload import Submission

__all__ = ["DemoStack", "Process", "StackError", "sqla_broker_url"]


class StackError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sqla_broker_url(conninfo: str) -> str:
    """The docpipe-sqla broker URL for a PostgreSQL conninfo (the embedded one uses a socket directory)."""
    params = conninfo_to_dict(conninfo)
    user = params.get("user") or ""
    password = f":{params['password']}" if params.get("password") else ""
    host = params.get("host") or "localhost"
    dbname = params.get("dbname") or "postgres"
    if host.startswith("/"):
        return f"docpipe-sqla+postgresql+psycopg://{user}{password}@/{dbname}?host={host}"
    port = params.get("port") or "5432"
    return f"docpipe-sqla+postgresql+psycopg://{user}{password}@{host}:{port}/{dbname}"


@dataclass
class Process:
    """A child process whose combined output goes to a log file and is watched for a ready line."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    ready_marker: str | None = None
    proc: subprocess.Popen | None = None
    lines: list[str] = field(default_factory=list)
    _ready: threading.Event = field(default_factory=threading.Event)

    def start(self) -> Process:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("a", encoding="utf-8")
        self.proc = subprocess.Popen(
            self.argv,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            start_new_session=True,  # a Ctrl-C in the terminal reaches the demo, which stops us in order
        )

        def drain() -> None:
            assert self.proc is not None and self.proc.stdout is not None
            for line in self.proc.stdout:
                log.write(line)
                log.flush()
                self.lines.append(line.rstrip("\n"))
                if self.ready_marker and self.ready_marker in line:
                    self._ready.set()
            log.close()

        threading.Thread(target=drain, name=f"{self.name}-output", daemon=True).start()
        return self

    def wait_ready(self, timeout: float, check: Callable[[], bool] | None = None) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise StackError(f"{self.name} exited while starting; its log ({self.log_path}) ends:\n{self.tail()}")
            if (self.ready_marker is None or self._ready.is_set()) and (check is None or check()):
                return
            time.sleep(0.1)
        raise StackError(
            f"{self.name} was not ready within {timeout:.0f} s; its log ({self.log_path}) ends:\n{self.tail()}"
        )

    def tail(self, n: int = 30) -> str:
        return "\n".join(f"    {line}" for line in self.lines[-n:])

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 30) -> int | None:
        """SIGTERM, wait, then SIGKILL: the process gets its chance to flush spans."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        return self.proc.returncode


@dataclass
class DemoStack:
    """Collector + web + worker, for one ledger database and one broker."""

    database_conninfo: str
    broker_url: str
    workdir: Path
    worker_concurrency: int = 2
    extra_env: dict[str, str] = field(default_factory=dict)  # for web and worker (e.g. OTEL_TRACES_SAMPLER)
    queue: str = field(default_factory=lambda: f"docpipe-{uuid.uuid4().hex[:8]}")
    collector: Process | None = None
    web: Process | None = None
    worker: Process | None = None
    otlp_endpoint: str = ""
    metrics_address: str = ""
    web_address: str = ""

    def _app_env(self, service: str) -> dict[str, str]:
        env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "DJANGO_SETTINGS_MODULE": "spanmeter.demo.settings",
            "DOCPIPE_BROKER_URL": self.broker_url,
            "DOCPIPE_QUEUE": self.queue,
            "OTEL_SERVICE_NAME": service,
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://{self.otlp_endpoint}",
            "OTEL_EXPORTER_OTLP_INSECURE": "true",
            "OTEL_BSP_SCHEDULE_DELAY": "200",
            "SPANMETER_ENVIRONMENT": "demo",
            "SPANMETER_TRUSTED_HEADERS": "true",  # the load driver plays the authenticating gateway
        }
        env.update(self.extra_env)
        return env

    def start(self, timeout: float = 90, on_step: Callable[[str], None] = lambda _: None) -> DemoStack:
        try:
            self._start_collector(timeout, on_step)
            self._prepare_broker()
            self._start_web(timeout, on_step)
            self._start_worker(timeout, on_step)
        except BaseException:
            self.stop()
            raise
        return self

    def _serve_credentials(self) -> list[str]:
        """Migrate as the owner (this conninfo), then serve as ``spanmeter_writer``, as in production (README:
        least privilege); where the writer cannot log in (a password-protected server), the owner with
        ``--allow-owner``."""
        import psycopg

        from spanmeter.billing.ledger import migrate
        from spanmeter.billing.ledger.database import resolve_database
        from spanmeter.billing.ledger.roles import WRITER_ROLE

        owner = resolve_database(self.database_conninfo, Path("."))
        migrate.upgrade(owner)
        writer = owner.as_user(WRITER_ROLE)
        try:
            psycopg.connect(writer.conninfo, connect_timeout=5).close()
        except psycopg.OperationalError:
            return ["--database-url", self.database_conninfo, "--allow-owner"]
        return ["--database-url", writer.conninfo]

    def _start_collector(self, timeout: float, on_step: Callable[[str], None]) -> None:
        on_step("collector")
        self.collector = Process(
            "collector",
            [
                sys.executable,
                "-m",
                "spanmeter",
                "serve",
                *self._serve_credentials(),
                "--otlp-endpoint",
                "127.0.0.1:0",
                "--metrics-port",
                "0",
            ],
            {**os.environ, "PYTHONUNBUFFERED": "1"},
            self.workdir / "collector.log",
            ready_marker="listening ",
        ).start()
        self.collector.wait_ready(timeout)
        line = next(line for line in self.collector.lines if line.startswith("listening "))
        fields = dict(part.split("=", 1) for part in line.split()[1:])
        self.otlp_endpoint, self.metrics_address = fields["otlp"], fields["metrics"]

    def _prepare_broker(self) -> None:
        """Create the broker's tables once, before two processes race to create them."""
        if not self.broker_url.startswith("docpipe-sqla+"):
            return
        from kombu import Connection

        from . import broker  # noqa: F401  (registers the scheme)

        with Connection(self.broker_url) as connection:
            connection.default_channel.session.close()

    def _start_web(self, timeout: float, on_step: Callable[[str], None]) -> None:
        on_step("web")
        port = free_port()
        self.web_address = f"127.0.0.1:{port}"
        self.web = Process(
            "web",
            [sys.executable, "-m", "django", "runserver", "--noreload", "--skip-checks", self.web_address],
            self._app_env("docpipe-web"),
            self.workdir / "web.log",
        ).start()
        self.web.wait_ready(timeout, check=lambda: self._get("/healthz") == 200)

    def _start_worker(self, timeout: float, on_step: Callable[[str], None]) -> None:
        on_step("worker")
        self.worker = Process(
            "worker",
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "spanmeter.demo.celery_app",
                "worker",
                "--pool",
                "prefork",
                "--concurrency",
                str(self.worker_concurrency),
                "--queues",
                self.queue,
                "--hostname",
                f"{self.queue}@%h",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "--loglevel",
                "INFO",
            ],
            self._app_env("docpipe-worker"),
            self.workdir / "worker.log",
            ready_marker=" ready.",
        ).start()
        self.worker.wait_ready(timeout)

    def _get(self, path: str) -> int:
        try:
            with urllib.request.urlopen(f"http://{self.web_address}{path}", timeout=5) as response:
                return response.status
        except (urllib.error.URLError, OSError):
            return 0

    def submit(self, submission: Submission, extra_headers: dict[str, str] | None = None) -> str:
        """POST one document as the gateway would; return the job id the web tier assigned."""
        request = urllib.request.Request(
            f"http://{self.web_address}/documents",
            data=json.dumps(submission.document.body()).encode(),
            headers={"Content-Type": "application/json", **submission.headers(), **(extra_headers or {})},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())["job_id"]

    def processes(self) -> dict[str, Process]:
        return {name: p for name, p in (("collector", self.collector), ("web", self.web), ("worker", self.worker)) if p}

    def collector_metrics(self) -> str:
        with urllib.request.urlopen(f"http://{self.metrics_address}/metrics", timeout=10) as response:
            return response.read().decode()

    def stop(self) -> None:
        """Web and worker first (they flush their spans on SIGTERM), then the collector (it commits)."""
        for process in (self.web, self.worker, self.collector):
            if process is not None:
                process.stop()
