"""Test helpers: spans built with the real OpenTelemetry SDK, raw OTLP requests, ledger queries."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import grpc
import psycopg
import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode

SECOND = 1_000_000_000
EXPORT_METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
SPANMETER = str(Path(sys.executable).with_name("spanmeter"))


class SpanFactory:
    """Finished SDK spans (ReadableSpan) with exact times, as the official exporter would send them."""

    def __init__(self, resource: dict | None = None) -> None:
        self.memory = InMemorySpanExporter()
        self.provider = TracerProvider(resource=Resource.create(resource or {"service.name": "test-svc"}))
        self.provider.add_span_processor(SimpleSpanProcessor(self.memory))
        self.tracer = self.provider.get_tracer("spanmeter.tests")

    def span(
        self,
        name: str,
        attributes: dict,
        duration_ns: int,
        kind: SpanKind = SpanKind.INTERNAL,
        end_ns: int | None = None,
        error: bool = False,
    ) -> ReadableSpan:
        end = end_ns if end_ns is not None else time.time_ns() - SECOND
        span = self.tracer.start_span(name, kind=kind, attributes=attributes, start_time=end - duration_ns)
        if error:
            span.set_status(Status(StatusCode.ERROR, "boom"))
        span.end(end_time=end)
        finished = self.memory.get_finished_spans()
        self.memory.clear()
        return finished[-1]


def assert_append_only(conn: psycopg.Connection, statements) -> None:
    """Each statement is refused by the append-only trigger (which binds the owner too); the connection is
    rolled back after each, so it stays usable."""
    for statement in statements:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
            conn.execute(statement)
        conn.rollback()


def start_from_a_fresh_process(server) -> None:
    """Start a stopped ``EmbeddedPostgres`` from a Python process that runs no gRPC. pgserver starts
    PostgreSQL as its own user (``subprocess`` with ``user=``, which rules out vfork), so starting it here
    forks a test process whose gRPC threads run, and gRPC's fork handler can abort the child (seen once in
    CI: "Check failed: next_worker->state == KICKED", pg_ctl died with SIGBUS)."""
    code = "import sys; from spanmeter.billing.ledger.embedded import EmbeddedPostgres as E; E(sys.argv[1]).start()"
    subprocess.run([sys.executable, "-c", code, str(server.data_dir)], check=True, timeout=120)


def wait_until(condition, timeout: float, interval: float = 0.1, what: str = "the condition") -> None:
    """Poll ``condition`` until it is true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def request_bytes(spans: list[ReadableSpan]) -> bytes:
    return encode_spans(spans).SerializeToString()


def exporter(endpoint: str, **kwargs) -> OTLPSpanExporter:
    kwargs.setdefault("timeout", 30)
    return OTLPSpanExporter(endpoint=f"http://{endpoint}", insecure=True, **kwargs)


@dataclass
class RawResult:
    code: grpc.StatusCode
    response: ExportTraceServiceResponse | None
    details: str
    trailers: dict


def raw_export(
    endpoint: str, body: bytes, compression: grpc.Compression | None = None, timeout: float = 30, metadata=None
) -> RawResult:
    """Send raw bytes to Export and return the status, response and trailing metadata."""
    options = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
    with grpc.insecure_channel(endpoint, options=options, compression=compression) as channel:
        call = channel.unary_unary(
            EXPORT_METHOD, request_serializer=None, response_deserializer=ExportTraceServiceResponse.FromString
        )
        try:
            response, state = call.with_call(body, timeout=timeout, metadata=metadata)
            return RawResult(grpc.StatusCode.OK, response, "", dict(state.trailing_metadata() or ()))
        except grpc.RpcError as err:
            return RawResult(err.code(), None, err.details() or "", dict(err.trailing_metadata() or ()))


def insert_as_an_old_writer(conninfo: str, rows) -> None:
    """Usage rows (the writer's tuples) inserted one statement each, as a ledger before migrations 0008 (no
    producer column) and 0010 (not partitioned: no coverage view) took them."""
    with psycopg.connect(conninfo) as conn:
        conn.cursor().executemany(
            "INSERT INTO usage_events (occurred_at, idempotency_key, account_id, job_id, plan_code, meter_code,"
            " meter_version, quantity, unit, trace_id, span_id, metadata) VALUES (timestamptz 'epoch' + %s *"
            " interval '1 microsecond', %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s::jsonb)",
            rows,
        )
        conn.commit()


def ledger(conninfo: str, sql: str, params: tuple = ()) -> list[tuple]:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        return conn.execute(sql, params).fetchall()


def totals(conninfo: str, account_id: str) -> dict[str, Decimal]:
    rows = ledger(
        conninfo,
        "SELECT meter_code, sum(quantity) FROM usage_events WHERE account_id = %s GROUP BY meter_code",
        (account_id,),
    )
    return {code: total for code, total in rows}


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$")


def parse_metrics(text: str) -> dict[str, float]:
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        if match:
            samples[match.group(1) + (match.group(2) or "")] = float(match.group(3))
    return samples


@dataclass
class Collector:
    """A `spanmeter serve` subprocess.

    ``as_writer`` (the default, as in production): the ledger is migrated first as the owner (the test's
    URL), then serve connects as ``spanmeter_writer``, so every test proves the writer role suffices.
    ``as_writer=False``: serve gets the owner's URL with ``--allow-owner`` and migrates itself (for a
    database that is down at start)."""

    database_url: str
    env: dict = field(default_factory=dict)
    otlp_endpoint: str = "127.0.0.1:0"
    as_writer: bool = True
    proc: subprocess.Popen | None = None
    output: list[str] = field(default_factory=list)
    metrics_address: str = ""

    def start(self, timeout: float = 60) -> Collector:
        env = {**os.environ, **self.env}
        if self.as_writer:
            from spanmeter.billing.ledger import migrate
            from spanmeter.billing.ledger.database import resolve_database
            from spanmeter.billing.ledger.roles import WRITER_ROLE

            owner = resolve_database(self.database_url, Path("."))
            migrate.upgrade(owner)
            url = owner.as_user(WRITER_ROLE).conninfo
        else:
            env["SPANMETER_ALLOW_OWNER"] = "true"
            url = self.database_url
        self.proc = subprocess.Popen(
            [
                SPANMETER,
                "serve",
                "--database-url",
                url,
                "--otlp-endpoint",
                self.otlp_endpoint,
                "--metrics-port",
                "0",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        ready = threading.Event()

        def drain() -> None:
            assert self.proc is not None and self.proc.stdout is not None
            for line in self.proc.stdout:
                self.output.append(line.rstrip("\n"))
                if line.startswith("listening "):
                    fields = dict(part.split("=", 1) for part in line.split()[1:])
                    self.otlp_endpoint = fields["otlp"]
                    self.metrics_address = fields["metrics"]
                    ready.set()

        threading.Thread(target=drain, daemon=True).start()
        deadline = time.monotonic() + timeout
        while not ready.wait(0.1):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("spanmeter serve did not start:\n" + "\n".join(self.output))
        return self

    @property
    def endpoint(self) -> str:
        return self.otlp_endpoint

    def metrics(self) -> dict[str, float]:
        with urllib.request.urlopen(f"http://{self.metrics_address}/metrics", timeout=10) as response:
            return parse_metrics(response.read().decode())

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://{self.metrics_address}{path}", timeout=10) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode()

    def stop(self, timeout: float = 30) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def require_tool(name: str) -> str:
    """The path of a command-line tool the test needs; fails (never skips) with how to install it."""
    import shutil

    import pytest

    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"`{name}` is not installed. It comes with Debian's prometheus package: "
            "sudo apt-get update && sudo apt-get install -y prometheus "
            "(./scripts/test.sh installs it when run as root)",
            pytrace=False,
        )
    return path


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_api(database: str, port: int) -> subprocess.Popen:
    """``spanmeter api`` on 127.0.0.1:``port`` over ``database``, once it answers ``/openapi.json``."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "spanmeter", "api", "--listen", f"127.0.0.1:{port}", "--database-url", database],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def up() -> bool:
        assert proc.poll() is None, "spanmeter api exited"
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/openapi.json", timeout=2).close()
            return True
        except OSError:
            return False

    wait_until(up, 30, what="spanmeter api to listen")
    return proc
