"""OTLP/HTTP: ``POST /v1/traces`` on the same receiver core as gRPC, driven by the official Python
``opentelemetry-exporter-otlp-proto-http`` exporter and by raw protobuf and JSON bodies."""

from __future__ import annotations

import gzip
import json
import socket
import time
import urllib.error
import urllib.request
from decimal import Decimal

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from opentelemetry.sdk.trace.export import SpanExportResult

from support import (
    SECOND,
    Collector,
    SpanFactory,
    ledger,
    raw_export,
    request_bytes,
    start_from_a_fresh_process,
    totals,
)

MS = 1_000_000
PROTOBUF = "application/x-protobuf"


def _http(collector: Collector) -> str:
    line = next(line for line in collector.output if line.startswith("listening "))
    return dict(part.split("=", 1) for part in line.split()[1:])["otlp_http"]


def _post(
    address: str,
    body: bytes,
    content_type: str = PROTOBUF,
    headers: dict | None = None,
    method: str = "POST",
    path: str = "/v1/traces",
) -> tuple[int, dict, bytes]:
    request = urllib.request.Request(
        f"http://{address}{path}", data=body if method == "POST" else None, method=method,
        headers={"Content-Type": content_type, **(headers or {})},
    )  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()
    except urllib.error.HTTPError as err:
        return err.code, {k.lower(): v for k, v in err.headers.items()}, err.read()


def _run(account: str, *durations_ms: int) -> list:
    f = SpanFactory({"service.name": "http-svc"})
    attributes = {"account_id": account, "celery.action": "run", "celery.task_name": "t"}
    return [f.span("run", attributes, ms * MS) for ms in durations_ms]


@pytest.fixture(scope="module")
def http_collector(module_db):
    collector = Collector(module_db, env={"SPANMETER_MAX_RECEIVE_MESSAGE_BYTES": "200000"}).start()
    yield collector
    collector.kill()


def test_the_official_http_exporter_bills_exactly_once_with_and_without_gzip(http_collector, module_db):
    address = _http(http_collector)
    assert address != "-" and not address.endswith(":4318")  # the tests' ephemeral port
    spans = _run("acct-http", 200, 300)
    for compression in (Compression.NoCompression, Compression.Gzip):
        exporter = HttpSpanExporter(endpoint=f"http://{address}/v1/traces", compression=compression, timeout=30)
        assert exporter.export(spans) == SpanExportResult.SUCCESS  # the second is a retry of the same spans
        exporter.shutdown()
    assert totals(module_db, "acct-http") == {"worker_seconds": Decimal("0.5")}
    # and the same spans through the gRPC door: still once (one receiver core, one idempotency key)
    assert raw_export(http_collector.endpoint, request_bytes(spans)).code == grpc.StatusCode.OK
    assert totals(module_db, "acct-http") == {"worker_seconds": Decimal("0.5")}
    metrics = http_collector.metrics()
    assert metrics['spanmeter_export_requests_total{grpc_code="OK"}'] >= 3


def test_otlp_json_with_hex_ids_and_the_answer_in_json(http_collector, module_db):
    end = time.time_ns() - SECOND
    span = {
        "traceId": "5b8efff798038103d269b633813fc60c",
        "spanId": "eee19b7ec3c1b174",
        "name": "run",
        "kind": 5,  # an integer enum (SPAN_KIND_CONSUMER), as OTLP JSON writes it
        "startTimeUnixNano": str(end - 400 * MS),
        "endTimeUnixNano": str(end),
        "attributes": [
            {"key": "account_id", "value": {"stringValue": "acct-json"}},
            {"key": "celery.action", "value": {"stringValue": "run"}},
        ],
    }
    stale = {**span, "spanId": "eee19b7ec3c1b175", "endTimeUnixNano": "1000", "startTimeUnixNano": "500"}
    body = {
        "resourceSpans": [
            {
                "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "json-svc"}}]},
                "scopeSpans": [{"scope": {"name": "t"}, "spans": [span, stale]}],
            }
        ]
    }
    status, headers, answer = _post(_http(http_collector), json.dumps(body).encode(), "application/json")
    assert status == 200 and headers["content-type"] == "application/json"
    partial = json.loads(answer)["partialSuccess"]  # lowerCamelCase, int64 as a string
    assert partial["rejectedSpans"] == "1" and "stale_timestamp" in partial["errorMessage"]
    assert totals(module_db, "acct-json") == {"worker_seconds": Decimal("0.4")}
    ids = ledger(module_db, "SELECT trace_id, span_id FROM usage_events WHERE account_id = 'acct-json'")
    assert ids == [("5b8efff798038103d269b633813fc60c", "eee19b7ec3c1b174")]


def test_bad_data_is_400_and_kept_like_grpc_invalid_argument(http_collector, module_db):
    address = _http(http_collector)
    for body, content_type in ((b"\xff\xff\xff not protobuf", PROTOBUF), (b'{"resourceSpans": [', "application/json")):
        status, headers, answer = _post(address, body, content_type)
        assert status == 400, (status, answer)
        if content_type == PROTOBUF:
            refusal = status_pb2.Status.FromString(answer)
            assert refusal.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        else:
            assert "not JSON" in json.loads(answer)["message"]
        assert "retry-after" not in headers  # not retryable
        kept = ledger(
            module_db, "SELECT body FROM rejected_requests WHERE reason = 'unparseable' AND body = %s", (body,)
        )
        assert kept == [(body,)]
    # JSON that is not an OTLP object, in every shape: 400 (kept), never a retryable 5xx or a silent 200
    deep = b'{"a":' * 5000 + b"1" + b"}" * 5000
    for body in (
        b"[]",
        b"null",
        b"1",
        b'"x"',
        b'{"resourceSpans": 5}',
        b'{"resourceSpans": [{"scopeSpans": [1]}]}',
        b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"startTimeUnixNano": ' + b"9" * 5000 + b"}]}]}]}",
        deep,
    ):
        status, _, answer = _post(address, body, "application/json")
        assert status == 400, (body[:40], status, answer)
    # gzip that is not gzip: 400 too, kept
    status, _, _ = _post(address, b"not gzip at all", headers={"Content-Encoding": "gzip"})
    assert status == 400


def test_limits_content_types_paths_and_methods(http_collector):
    address = _http(http_collector)
    body = request_bytes(_run("acct-limits", 100))
    assert _post(address, body, "text/plain")[0] == 415
    assert _post(address, body, headers={"Content-Encoding": "br"})[0] == 415
    assert _post(address, body, path="/v1/metrics")[0] == 404
    assert _post(address, b"", method="GET")[0] == 405
    # over the size limit (200,000 bytes here), as sent and after decompression: a small gzip bomb is 413
    status, headers, answer = _post(address, b"\x0a" * 200_001)
    assert status == 413 and "retry-after" not in headers
    assert status_pb2.Status.FromString(answer).code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    bomb = gzip.compress(b"\x00" * 5_000_000)
    assert len(bomb) < 200_000
    assert _post(address, bomb, headers={"Content-Encoding": "gzip"})[0] == 413
    assert http_collector.metrics()['spanmeter_export_requests_total{grpc_code="RESOURCE_EXHAUSTED"}'] >= 2


def test_producers_need_a_bearer_token_on_this_door_too(tmp_path, fresh_db):
    producers = tmp_path / "producers.toml"
    producers.write_text(
        f'[[producer]]\nname = "svc"\ntoken_sha256 = ["{_sha256("s3cret")}"]\nservices = ["http-svc"]\n'
        'meters = ["*"]\naccounts = ["*"]\n'
    )
    collector = Collector(fresh_db, env={"SPANMETER_AUTH_FILE": str(producers)}).start()
    try:
        address = _http(collector)
        body = request_bytes(_run("acct-auth", 100))
        assert _post(address, body)[0] == 401
        assert _post(address, body, headers={"Authorization": "Bearer wrong"})[0] == 401
        # who first, as on gRPC: an unknown sender's bad body is neither decoded nor kept
        assert _post(address, b"not json", "application/json")[0] == 401
        assert _post(address, b"not gzip", headers={"Content-Encoding": "gzip"})[0] == 401
        assert ledger(fresh_db, "SELECT count(*) FROM rejected_requests") == [(0,)]
        status, _, answer = _post(address, body, headers={"Authorization": "Bearer s3cret"})
        assert status == 200 and ExportTraceServiceResponse.FromString(answer) == ExportTraceServiceResponse()
        assert totals(fresh_db, "acct-auth") == {"worker_seconds": Decimal("0.1")}
    finally:
        collector.kill()


@pytest.mark.integration  # a subprocess or a real server
def test_ledger_unavailable_is_503_with_retry_after_then_committed(tmp_path):
    from spanmeter.billing.ledger.embedded import EmbeddedPostgres

    server = EmbeddedPostgres(tmp_path / "pg")
    url = server.start()
    server.stop()
    collector = Collector(url, env={"SPANMETER_LEDGER_WRITE_TIMEOUT_SECONDS": "2"}, as_writer=False).start()
    try:
        body = request_bytes(_run("acct-down", 300))
        status, headers, answer = _post(_http(collector), body)
        assert status == 503 and headers["retry-after"] == "1"
        refusal = status_pb2.Status.FromString(answer)
        assert refusal.code == grpc.StatusCode.UNAVAILABLE.value[0]
        assert any(d.Is(error_details_pb2.RetryInfo.DESCRIPTOR) for d in refusal.details)
        start_from_a_fresh_process(server)  # not from this process: see the helper
        deadline = time.monotonic() + 60
        while _post(_http(collector), body)[0] != 200:
            assert time.monotonic() < deadline, "never committed after the database came back"
            time.sleep(0.5)
        assert totals(url, "acct-down") == {"worker_seconds": Decimal("0.3")}
    finally:
        collector.kill()
        server.stop()


def test_cors_is_off_unless_origins_are_configured(fresh_db, http_collector):
    origin = {"Origin": "https://app.example.com"}
    body = request_bytes(_run("acct-cors", 100))
    status, headers, _ = _post(_http(http_collector), body, headers=origin)
    assert status == 200 and "access-control-allow-origin" not in headers
    collector = Collector(fresh_db, env={"SPANMETER_OTLP_HTTP_CORS_ORIGINS": "https://app.example.com"}).start()
    try:
        address = _http(collector)
        preflight = {**origin, "Access-Control-Request-Method": "POST"}
        status, headers, _ = _post(address, b"", method="OPTIONS", headers=preflight)
        assert status == 204 and headers["access-control-allow-origin"] == "https://app.example.com"
        assert "POST" in headers["access-control-allow-methods"]
        status, headers, _ = _post(address, body, headers=origin)
        assert status == 200 and headers["access-control-allow-origin"] == "https://app.example.com"
        status, headers, _ = _post(address, body, headers={"Origin": "https://evil.example"})
        assert status == 200 and "access-control-allow-origin" not in headers
        status, headers, _ = _post(address, body, headers={"Origin": "https://APP.example.com"})
        assert headers["access-control-allow-origin"] == "https://APP.example.com"  # origins compare without case
        assert headers["access-control-expose-headers"] == "retry-after"  # a browser may read Retry-After
    finally:
        collector.kill()


def test_a_busy_port_and_a_non_loopback_address_are_refused_with_the_setting_named(fresh_db):
    import socket
    import subprocess

    from support import SPANMETER

    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    try:
        common = [SPANMETER, "serve", "--database-url", fresh_db, "--allow-owner", "--otlp-endpoint", "127.0.0.1:0",
                  "--metrics-port", "0"]  # fmt: skip
        taken = subprocess.run(
            [*common, "--otlp-http-endpoint", f"127.0.0.1:{port}"], capture_output=True, text=True, timeout=60
        )
        assert taken.returncode != 0 and "SPANMETER_OTLP_HTTP_ENDPOINT" in taken.stderr, taken.stderr
        assert "Traceback" not in taken.stderr
        exposed = subprocess.run(
            [*common, "--otlp-http-endpoint", "0.0.0.0:0"], capture_output=True, text=True, timeout=60
        )
        assert exposed.returncode == 2 and "0.0.0.0:0" in exposed.stderr and "--insecure-listen" in exposed.stderr
    finally:
        busy.close()


def _sha256(token: str) -> str:
    import hashlib

    return hashlib.sha256(token.encode()).hexdigest()


def test_processes_share_the_http_port_too(fresh_db):
    collector = Collector(fresh_db, env={"SPANMETER_PROCESSES": "2"}).start()
    try:
        address = _http(collector)
        for account in ("acct-p1", "acct-p2", "acct-p3", "acct-p4"):  # new connections: either process answers
            assert _post(address, request_bytes(_run(account, 100)))[0] == 200
        assert sum(n for (n,) in ledger(fresh_db, "SELECT count(*) FROM usage_events")) == 4
    finally:
        collector.kill()


def test_metrics_port_is_prometheus_clients_own_exposition(http_collector):
    """/metrics is prometheus_client's ASGI app: OpenMetrics when asked, gzip when accepted; /healthz and
    /readyz beside it."""
    address = http_collector.metrics_address
    status, headers, body = _post(
        address, b"", method="GET", path="/metrics", headers={"Accept": "application/openmetrics-text"}
    )
    assert status == 200 and headers["content-type"].startswith("application/openmetrics-text")
    assert body.rstrip().endswith(b"# EOF") and b"spanmeter_export_requests_total" in body
    status, headers, body = _post(address, b"", method="GET", path="/metrics", headers={"Accept-Encoding": "gzip"})
    assert status == 200 and headers.get("content-encoding") == "gzip"
    assert b"spanmeter_spans_received_total" in gzip.decompress(body)
    assert _post(address, b"", method="GET", path="/healthz")[0] == 200
    status, _, body = _post(address, b"", method="GET", path="/readyz")
    assert status == 200 and body.startswith(b"ready")
    assert _post(address, b"", method="GET", path="/nope")[0] == 404


def test_gzip_members_are_all_read_and_a_vanished_upload_is_not_processed(http_collector, module_db):
    address = _http(http_collector)
    first, second = request_bytes(_run("acct-member-1", 100)), request_bytes(_run("acct-member-2", 200))
    # two gzip members (RFC 1952): the body is both requests (protobuf messages concatenate as a merge)
    status, _, _ = _post(address, gzip.compress(first) + gzip.compress(second), headers={"Content-Encoding": "gzip"})
    assert status == 200
    assert totals(module_db, "acct-member-1") == {"worker_seconds": Decimal("0.1")}
    assert totals(module_db, "acct-member-2") == {"worker_seconds": Decimal("0.2")}
    # a client that goes away mid-upload: its fragment is not decoded, kept or counted
    before = ledger(module_db, "SELECT count(*) FROM rejected_requests")
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(
            b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n"
            b"Content-Length: 100000\r\n\r\n" + first[:20]
        )
    time.sleep(0.5)
    assert ledger(module_db, "SELECT count(*) FROM rejected_requests") == before
    assert _post(address, first)[0] == 200  # and the door still serves


def test_at_capacity_the_door_answers_429_before_reading_the_body(fresh_db):
    collector = Collector(fresh_db, env={"SPANMETER_MAX_INFLIGHT_REQUESTS": "1"}).start()
    try:
        address = _http(collector)
        host, port = address.rsplit(":", 1)
        # one request holds the only slot: its body is still being sent
        with socket.create_connection((host, int(port)), timeout=10) as slow:
            slow.sendall(
                b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n"
                b"Content-Length: 100000\r\n\r\n" + b"\x0a" * 10
            )
            time.sleep(0.5)
            status, headers, answer = _post(address, request_bytes(_run("acct-busy", 100)))
            assert status == 429 and headers["retry-after"] == "1", (status, answer)
        time.sleep(0.5)
        assert _post(address, request_bytes(_run("acct-busy", 100)))[0] == 200  # the slot came back
        assert collector.metrics()['spanmeter_export_throttled_total{limit="requests"}'] >= 1
    finally:
        collector.kill()
