"""`spanmeter ingest --otlp-file`: OTLP JSON and protobuf files (as the Collector's file exporter writes
them, gzip too) bill exactly what live ingestion of the same spans bills, and re-running adds nothing."""

from __future__ import annotations

import base64
import gzip
import json
import struct
import subprocess

from google.protobuf import json_format
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.trace import SpanKind

from support import SPANMETER, SpanFactory, exporter, ledger

MS = 1_000_000


def _spans(prefix: str) -> list:
    f = SpanFactory({"service.name": "backfill", "plan_code": "scale"})
    acct = {"account_id": f"{prefix}-acct", "job_id": "j"}
    spans = []
    for i in range(30):
        spans.append(f.span("run/t", {**acct, "celery.action": "run"}, (i + 1) * 70 * MS, kind=SpanKind.CONSUMER))
        spans.append(f.span("gpu", {**acct, "gpu.count": 2, "gpu.model": "a100"}, (i + 1) * 130 * MS))
        spans.append(f.span("chat", {**acct, "gen_ai.usage.input_tokens": i, "gen_ai.usage.output_tokens": 2 * i}, MS))
        spans.append(f.span("GET /x", {**acct, "http.request.method": "GET"}, MS, kind=SpanKind.SERVER))
    spans.append(f.span("run/orphan", {"celery.action": "run"}, MS))  # unattributed: rejected, kept
    return spans


def _otlp_json_line(spans: list) -> str:
    """OTLP JSON as the Collector writes it: lowerCamelCase, hex ids, integer enums."""
    document = json_format.MessageToDict(encode_spans(spans), use_integers_for_enums=True)

    def hexify(node):
        if isinstance(node, dict):
            return {
                k: base64.b64decode(v).hex() if k in ("traceId", "spanId", "parentSpanId") else hexify(v)
                for k, v in node.items()
            }
        if isinstance(node, list):
            return [hexify(x) for x in node]
        return node

    return json.dumps(hexify(document))


def _ledger_view(db: str, account: str) -> list[tuple]:
    return ledger(
        db,
        "SELECT meter_code, idempotency_key::text, quantity, occurred_at, trace_id, span_id, job_id, "
        "plan_code, metadata FROM usage_events WHERE account_id = %s ORDER BY 1, 2",
        (account,),
    )


def _ingest(db: str, *files) -> str:
    result = subprocess.run(
        [SPANMETER, "ingest", "--database-url", db, "--otlp-file", *map(str, files)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_json_and_protobuf_backfill_equal_live_ingestion(tmp_path, collector, module_db, postgres_admin):
    from conftest import create_database

    spans = _spans("bf")
    halves = [spans[:60], spans[60:]]
    # live: the official exporter against `spanmeter serve`
    live_db = module_db
    for half in halves:
        assert exporter(collector.endpoint).export(half) == SpanExportResult.SUCCESS
    live = _ledger_view(live_db, "bf-acct")
    assert len(live) == 30 * 5  # per round: worker, gpu, input tokens, output tokens, api request

    json_file = tmp_path / "traces.jsonl"
    json_file.write_text("\n".join(_otlp_json_line(h) for h in halves) + "\n")
    proto_file = tmp_path / "traces.binpb.gz"
    with gzip.open(proto_file, "wb") as out:
        for half in halves:
            body = encode_spans(half).SerializeToString()
            out.write(struct.pack(">I", len(body)) + body)

    for path in (json_file, proto_file):
        db = create_database(postgres_admin)
        first = _ingest(db, path)
        assert (
            f"2 messages, {len(spans)} spans: {len(live)} new usage rows, 0 already in the ledger, 1 rejected" in first
        )
        assert "rejected unattributed: 1" in first
        assert _ledger_view(db, "bf-acct") == live  # same keys, quantities, times, ids, metadata
        again = _ingest(db, path)  # safe to re-run
        assert f"0 new usage rows, {len(live)} already in the ledger" in again
        assert len(_ledger_view(db, "bf-acct")) == len(live)
        assert ledger(db, "SELECT reason, count(*) FROM rejected_spans GROUP BY 1") == [("unattributed", 1)]

    # the same file into the live database: everything is already there
    assert f"0 new usage rows, {len(live)} already in the ledger" in _ingest(live_db, json_file)


def test_a_bad_file_is_refused_with_the_message_number(tmp_path, module_db):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"resourceSpans": []}\nnot json\n')
    result = subprocess.run(
        [SPANMETER, "ingest", "--database-url", module_db, "--otlp-file", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "line 2: not JSON" in result.stderr
