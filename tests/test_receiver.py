"""The receiver end to end: the official OTLP exporter → `spanmeter serve` → PostgreSQL ledger.

Each test uses its own account ids, so exact ledger totals are per test although the module shares one
collector and one database.
"""

from __future__ import annotations

import gzip
import json
import subprocess
import threading
import time
from decimal import Decimal

import grpc
from google.rpc import status_pb2
from opentelemetry.exporter.otlp.proto.grpc.exporter import Compression
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.trace import SpanKind

from support import SECOND, SPANMETER, SpanFactory, exporter, ledger, raw_export, request_bytes, totals

MS = 1_000_000


def test_every_meter_and_rounding_rule(collector, module_db):
    f = SpanFactory({"service.name": "docs-worker", "plan_code": "growth"})
    acct = {"account_id": "acct-meters", "job_id": "job-1"}
    spans = [
        # worker_seconds: Celery task runs and work units, rounded UP to the next 100 ms
        f.span(
            "run/extract",
            {**acct, "celery.action": "run", "celery.task_name": "extract"},
            1230 * MS,
            kind=SpanKind.CONSUMER,
        ),
        f.span("unit", {**acct, "spanmeter.work_unit": True}, 100 * MS),  # exactly 0.1
        f.span("unit", {**acct, "spanmeter.work_unit": True}, 100 * MS + 1),  # 1 ns over → 0.2
        f.span("apply_async/extract", {**acct, "celery.action": "apply_async"}, 50 * MS, kind=SpanKind.PRODUCER),
        f.span("run/flaky", {**acct, "celery.action": "run"}, 400 * MS, error=True),  # failed attempt bills
        # gpu_seconds: rounded up, times gpu.count
        f.span("detect", {**acct, "gpu.count": 2, "gpu.model": "h100"}, 2050 * MS),  # 2.1 × 2
        f.span("detect", {**acct, "gpu.count": 1}, 1 * MS),  # 0.1
        # tokens: current names; legacy names; both (current wins); agent spans never bill
        f.span(
            "chat",
            {
                **acct,
                "gen_ai.operation.name": "chat",
                "gen_ai.usage.input_tokens": 1000,
                "gen_ai.usage.output_tokens": 250,
                "gen_ai.usage.cache_read.input_tokens": 400,
                "gen_ai.usage.reasoning.output_tokens": 50,
                "gen_ai.response.model": "gpt-4o",
                "gen_ai.provider.name": "openai",
            },
            10 * MS,
            kind=SpanKind.CLIENT,
        ),
        f.span(
            "legacy",
            {**acct, "gen_ai.usage.prompt_tokens": 7, "gen_ai.usage.completion_tokens": 3, "gen_ai.system": "openai"},
            10 * MS,
        ),
        f.span(
            "both",
            {
                **acct,
                "gen_ai.usage.input_tokens": 11,
                "gen_ai.usage.prompt_tokens": 99999,
                "gen_ai.usage.output_tokens": 5,
                "gen_ai.usage.completion_tokens": 99999,
            },
            10 * MS,
        ),
        f.span(
            "agent",
            {
                **acct,
                "gen_ai.operation.name": "invoke_agent",
                "gen_ai.usage.input_tokens": 5000,
                "gen_ai.usage.output_tokens": 5000,
            },
            10 * MS,
        ),
        f.span("embed", {**acct, "gen_ai.operation.name": "embeddings", "gen_ai.usage.input_tokens": 64}, 10 * MS),
        # api_requests: SERVER spans with an HTTP method (stable or legacy name); CLIENT spans never
        f.span("GET /a", {**acct, "http.request.method": "GET"}, 5 * MS, kind=SpanKind.SERVER),
        f.span("GET /b", {**acct, "http.method": "GET"}, 5 * MS, kind=SpanKind.SERVER),
        f.span("GET out", {**acct, "http.request.method": "GET"}, 5 * MS, kind=SpanKind.CLIENT),
        # not billable at all
        f.span("plain", {**acct, "db.system": "postgresql"}, 5 * MS),
    ]
    assert exporter(collector.endpoint).export(spans) == SpanExportResult.SUCCESS

    assert totals(module_db, "acct-meters") == {
        "worker_seconds": Decimal("2.0"),  # 1.3 + 0.1 + 0.2 + 0.4
        "gpu_seconds": Decimal("4.3"),  # 4.2 + 0.1
        "input_tokens": Decimal("1082"),  # 1000 + 7 + 11 + 64
        "output_tokens": Decimal("258"),  # 250 + 3 + 5
        "api_requests": Decimal("2"),
        # subsets of the chat span's counts, on rows of their own for price books (still inside the counts above)
        "cache_read_tokens": Decimal("400"),
        "reasoning_tokens": Decimal("50"),
    }
    rows = ledger(
        module_db,
        "SELECT meter_code, meter_version, unit, job_id, plan_code, metadata FROM usage_events "
        "WHERE account_id = 'acct-meters' AND metadata->>'span.name' = 'chat' ORDER BY 1",
    )
    cached, (_, v_in, unit_in, job, plan, meta_in), (_, _, _, _, _, meta_out), reasoning = rows
    assert (cached[0], cached[5]["gen_ai.model"], reasoning[0]) == ("cache_read_tokens", "gpt-4o", "reasoning_tokens")
    assert (v_in, unit_in, job, plan) == (1, "{token}", "job-1", "growth")
    assert meta_in["gen_ai.usage.cache_read.input_tokens"] == 400  # kept, not billed again
    assert meta_in["gen_ai.model"] == "gpt-4o" and meta_in["gen_ai.provider.name"] == "openai"
    assert meta_out["gen_ai.usage.reasoning.output_tokens"] == 50
    failed = ledger(
        module_db,
        "SELECT metadata->>'status' FROM usage_events WHERE account_id = 'acct-meters' "
        "AND metadata->>'span.name' = 'run/flaky'",
    )
    assert failed == [("error",)]
    # keys are lower-case hex, rows carry their span's ids
    ids = ledger(
        module_db,
        "SELECT DISTINCT length(trace_id), length(span_id), trace_id = lower(trace_id) "
        "FROM usage_events WHERE account_id = 'acct-meters'",
    )
    assert ids == [(32, 16, True)]

    out = subprocess.run(
        [SPANMETER, "usage", "--account", "acct-meters", "--database-url", module_db, "--format", "json"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    meters = {m["meter_code"]: m["quantity"] for m in json.loads(out)["meters"]}
    assert meters == {
        "api_requests": "2",
        "gpu_seconds": "4.3",
        "input_tokens": "1082",
        "output_tokens": "258",
        "worker_seconds": "2.0",
        "cache_read_tokens": "400",  # listed apart: subsets of input_tokens and output_tokens
        "reasoning_tokens": "50",
    }


def test_attribution_from_span_then_resource(collector, module_db):
    on_resource = SpanFactory({"service.name": "svc", "account_id": "acct-res", "plan_code": "starter"})
    spans = [
        on_resource.span("run/a", {"celery.action": "run"}, 500 * MS),
        on_resource.span("run/b", {"celery.action": "run", "account_id": "acct-span"}, 700 * MS),
    ]
    assert exporter(collector.endpoint).export(spans) == SpanExportResult.SUCCESS
    assert totals(module_db, "acct-res") == {"worker_seconds": Decimal("0.5")}
    assert totals(module_db, "acct-span") == {"worker_seconds": Decimal("0.7")}
    assert ledger(module_db, "SELECT plan_code FROM usage_events WHERE account_id = 'acct-span'") == [("starter",)]


def test_same_batch_exported_three_times_bills_once(collector, module_db):
    f = SpanFactory()
    batch = [
        f.span(f"run/{i}", {"account_id": "acct-thrice", "celery.action": "run"}, (i + 1) * 100 * MS) for i in range(50)
    ]
    before = collector.metrics()
    exp = exporter(collector.endpoint)
    for _ in range(3):
        assert exp.export(batch) == SpanExportResult.SUCCESS
    assert totals(module_db, "acct-thrice") == {"worker_seconds": Decimal("127.5")}  # 0.1 + … + 5.0
    assert ledger(module_db, "SELECT count(*) FROM usage_events WHERE account_id = 'acct-thrice'") == [(50,)]
    after = collector.metrics()
    key = 'spanmeter_usage_events_duplicate_total{meter="worker_seconds"}'
    assert after[key] - before[key] == 100
    billed = 'spanmeter_spans_billed_total{meter="worker_seconds"}'
    assert after[billed] - before[billed] == 50


def test_two_receivers_sharing_one_database_bill_once(collector, module_db, make_collector):
    second = make_collector(module_db)
    f = SpanFactory()
    batch = [f.span("gpu", {"account_id": "acct-two", "gpu.count": 4}, (i + 1) * 250 * MS) for i in range(200)]
    results = []

    def send(endpoint: str) -> None:
        results.append(exporter(endpoint).export(batch))

    threads = [threading.Thread(target=send, args=(e,)) for e in (collector.endpoint, second.endpoint) * 2]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [SpanExportResult.SUCCESS] * 4
    # sum of ceil(0.25 i, 0.1) × 4 for i = 1..200
    expected = sum(Decimal(-(-(i * 250) // 100)) / 10 * 4 for i in range(1, 201))
    assert totals(module_db, "acct-two") == {"gpu_seconds": expected}
    assert ledger(module_db, "SELECT count(*) FROM usage_events WHERE account_id = 'acct-two'") == [(200,)]


def test_gzip_compression(collector, module_db):
    f = SpanFactory()
    batch = [f.span("run", {"account_id": "acct-gzip", "celery.action": "run"}, 300 * MS) for _ in range(20)]
    assert exporter(collector.endpoint, compression=Compression.Gzip).export(batch) == SpanExportResult.SUCCESS
    assert totals(module_db, "acct-gzip") == {"worker_seconds": Decimal("6.0")}


def test_empty_request_succeeds(collector):
    result = raw_export(collector.endpoint, b"")
    assert result.code == grpc.StatusCode.OK
    assert not result.response.HasField("partial_success")


def test_oversize_request_is_resource_exhausted_without_retry_info(collector):
    # 65 MiB after decompression, a few hundred KiB on the wire (gzip): the limit applies after decompression.
    f = SpanFactory()
    big = f.span("big", {"account_id": "acct-big", "celery.action": "run", "blob": "x" * (65 * 1024 * 1024)}, MS)
    body = request_bytes([big])
    assert len(body) > 64 * 1024 * 1024
    assert len(gzip.compress(body)) < 1024 * 1024
    result = raw_export(collector.endpoint, body, compression=grpc.Compression.Gzip)
    assert result.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "google.rpc.retryinfo-bin" not in result.trailers
    assert collector.metrics()  # still serving


def test_unparseable_request_is_invalid_argument_counted_and_kept(collector, module_db):
    garbage = b"\x0a\xff\xff\xff\xff\x0fnot protobuf at all" * 3
    before = collector.metrics()['spanmeter_export_requests_total{grpc_code="INVALID_ARGUMENT"}']
    result = raw_export(collector.endpoint, garbage)
    assert result.code == grpc.StatusCode.INVALID_ARGUMENT
    details = status_pb2.Status.FromString(result.trailers["grpc-status-details-bin"])
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert collector.metrics()['spanmeter_export_requests_total{grpc_code="INVALID_ARGUMENT"}'] == before + 1
    kept = ledger(module_db, "SELECT reason, size_bytes, body FROM rejected_requests WHERE body = %s", (garbage,))
    assert kept == [("unparseable", len(garbage), garbage)]


def test_invalid_utf8_is_replaced_not_fatal(collector, module_db):
    f = SpanFactory()
    body = request_bytes(
        [
            f.span("run", {"account_id": "acct-utf8", "celery.action": "run", "note": "MARK"}, 200 * MS),
            f.span("run", {"account_id": "acct-utf8", "celery.action": "run", "celery.task_name": "MARK"}, 300 * MS),
        ]
    )
    body = body.replace(b"MARK", b"M\xffRK")  # same length: invalid UTF-8 inside string fields
    result = raw_export(collector.endpoint, body)
    assert result.code == grpc.StatusCode.OK
    assert result.response.partial_success.rejected_spans == 0
    assert "invalid UTF-8" in result.response.partial_success.error_message
    assert totals(module_db, "acct-utf8") == {"worker_seconds": Decimal("0.5")}
    names = ledger(
        module_db,
        "SELECT metadata->>'celery.task_name' FROM usage_events "
        "WHERE account_id = 'acct-utf8' AND metadata ? 'celery.task_name'",
    )
    assert names == [("M\ufffdRK",)]


def _with_ids(body: bytes, trace_id: bytes | None = None, span_id: bytes | None = None) -> bytes:
    request = ExportTraceServiceRequest.FromString(body)
    span = request.resource_spans[0].scope_spans[0].spans[0]
    if trace_id is not None:
        span.trace_id = trace_id
    if span_id is not None:
        span.span_id = span_id
    return request.SerializeToString()


def test_every_reject_reason_is_kept_counted_and_reported(collector, module_db):
    f = SpanFactory({"service.name": "rejects"})
    now = time.time_ns()
    ok = {"account_id": "acct-rej", "celery.action": "run"}
    spans = {
        "unattributed": f.span("r", {"celery.action": "run"}, 100 * MS),
        "negative_duration": f.span("r", ok, -100 * MS),
        "duration_too_long": f.span("r", ok, 8 * 86_400 * SECOND),
        "future_timestamp": f.span("r", ok, 100 * MS, end_ns=now + 3600 * SECOND),
        "stale_timestamp": f.span("r", ok, 100 * MS, end_ns=now - 31 * 86_400 * SECOND),
        "invalid_tokens": f.span("r", {"account_id": "acct-rej", "gen_ai.usage.input_tokens": -5}, MS),
        "invalid_gpu_count": f.span("r", {"account_id": "acct-rej", "gpu.count": 0}, MS),
    }
    request = ExportTraceServiceRequest.FromString(request_bytes(list(spans.values())))
    zero_ids = ExportTraceServiceRequest.FromString(
        _with_ids(request_bytes([f.span("r", ok, 100 * MS)]), trace_id=bytes(16))
    )
    request.resource_spans[0].scope_spans[0].spans.append(zero_ids.resource_spans[0].scope_spans[0].spans[0])
    good = f.span("fine", ok, 100 * MS)
    good_request = ExportTraceServiceRequest.FromString(request_bytes([good]))
    request.resource_spans[0].scope_spans[0].spans.append(good_request.resource_spans[0].scope_spans[0].spans[0])
    body = request.SerializeToString()

    before = collector.metrics()
    for _ in range(2):  # a retry keeps one row per rejected span
        result = raw_export(collector.endpoint, body)
        assert result.code == grpc.StatusCode.OK
        assert result.response.partial_success.rejected_spans == 8
        message = result.response.partial_success.error_message
        assert "8 spans rejected" in message and "unattributed x1" in message
    after = collector.metrics()

    reasons = {"invalid_id", *spans}
    rows = ledger(module_db, "SELECT reason, count(*) FROM rejected_spans WHERE service_name = 'rejects' GROUP BY 1")
    assert dict(rows) == {reason: 1 for reason in reasons}
    for reason in reasons:
        key = f'spanmeter_spans_rejected_total{{reason="{reason}"}}'
        assert after[key] - before[key] == 2
    assert totals(module_db, "acct-rej") == {"worker_seconds": Decimal("0.1")}  # the good span only
    # the text log line on-call reads says how many and why, without turning on JSON logs
    logged = [line for line in collector.output if "export partially rejected" in line]
    assert logged and "8 of 9 spans rejected" in logged[-1], collector.output[-5:]
    assert "unattributed 1" in logged[-1] and "invalid_id 1" in logged[-1]
    # the whole span is kept and decodes as OTLP
    payload = ledger(
        module_db,
        "SELECT payload, meter_codes FROM rejected_spans WHERE reason = 'invalid_gpu_count' "
        "AND service_name = 'rejects'",
    )[0]
    from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans

    kept = ResourceSpans.FromString(payload[0])
    assert kept.scope_spans[0].spans[0].name == "r" and payload[1] == ["gpu_seconds"]
    assert {kv.key for kv in kept.resource.attributes} >= {"service.name"}


def test_unattributed_api_requests_are_counted_not_stored(collector, module_db):
    f = SpanFactory({"service.name": "health"})
    before = collector.metrics()['spanmeter_spans_unattributed_total{meter="api_requests"}']
    spans = [f.span("GET /healthz", {"http.request.method": "GET"}, MS, kind=SpanKind.SERVER) for _ in range(5)]
    assert exporter(collector.endpoint).export(spans) == SpanExportResult.SUCCESS
    assert collector.metrics()['spanmeter_spans_unattributed_total{meter="api_requests"}'] == before + 5
    assert ledger(module_db, "SELECT count(*) FROM rejected_spans WHERE service_name = 'health'") == [(0,)]
    assert ledger(module_db, "SELECT count(*) FROM usage_events WHERE metadata->>'service.name' = 'health'") == [(0,)]


def test_synthetic_traffic_is_metered_in_metrics_never_billed(collector, module_db):
    f = SpanFactory({"service.name": "probe"})
    before = collector.metrics()['spanmeter_synthetic_spans_total{meter="worker_seconds"}']
    spans = [
        f.span("run", {"account_id": "acct-synth", "celery.action": "run", "spanmeter.synthetic": True}, MS)
        for _ in range(3)
    ]
    assert exporter(collector.endpoint).export(spans) == SpanExportResult.SUCCESS
    assert collector.metrics()['spanmeter_synthetic_spans_total{meter="worker_seconds"}'] == before + 3
    assert totals(module_db, "acct-synth") == {}


def test_metrics_are_declared_and_initialised(collector):
    m = collector.metrics()
    for name in (
        "spanmeter_spans_received_total",
        'spanmeter_spans_rejected_total{reason="invalid_gpu_count"}',
        'spanmeter_spans_billed_total{meter="api_requests"}',
        'spanmeter_usage_events_duplicate_total{meter="gpu_seconds"}',
        'spanmeter_export_requests_total{grpc_code="UNAVAILABLE"}',
        "spanmeter_ledger_write_duration_seconds_count",
        'spanmeter_pipeline_lag_seconds_bucket{le="1.0"}',
        'spanmeter_pipeline_lag_seconds_bucket{le="60.0"}',
        "spanmeter_ledger_last_commit_timestamp_seconds",
        "spanmeter_oldest_pending_span_age_seconds",
        'spanmeter_billable_worker_seconds_total{plan_code="other"}',
        'spanmeter_billable_gpu_seconds_total{gpu_model="h100",plan_code="scale"}',
        'spanmeter_billable_tokens_total{direction="output",plan_code="starter"}',
        'spanmeter_billable_api_requests_total{plan_code="platform"}',
    ):
        assert name in m, name
    assert not any("account_id" in key for key in m)
    assert collector.get("/healthz")[0] == 200
    from spanmeter.billing.ledger.migrate import head_revision

    assert collector.get("/readyz") == (200, f"ready (schema {head_revision()})\n")


def test_the_same_span_twice_in_one_request_is_billed_and_counted_once(collector, module_db):
    f = SpanFactory()
    span = f.span("run", {"account_id": "acct-twice", "celery.action": "run"}, 400 * MS)
    before = collector.metrics()
    assert raw_export(collector.endpoint, request_bytes([span, span])).code == grpc.StatusCode.OK
    after = collector.metrics()
    assert totals(module_db, "acct-twice") == {"worker_seconds": Decimal("0.4")}
    billed, duplicate = (
        'spanmeter_spans_billed_total{meter="worker_seconds"}',
        'spanmeter_usage_events_duplicate_total{meter="worker_seconds"}',
    )
    assert (after[billed] - before[billed], after[duplicate] - before[duplicate]) == (1, 1)
    plan = 'spanmeter_billable_worker_seconds_total{plan_code="other"}'
    assert round(after[plan] - before[plan], 6) == 0.4  # metrics are floats; the ledger above is exact
