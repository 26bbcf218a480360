"""Dead letters: list, show, and replay rejected spans into the ledger exactly once, with provenance."""

from __future__ import annotations

import json
import subprocess
from decimal import Decimal

from opentelemetry.sdk.trace.export import SpanExportResult

from support import SPANMETER, SpanFactory, exporter, ledger, totals

MS = 1_000_000


def cli(db: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [SPANMETER, "dead-letter", *args, "--database-url", db], capture_output=True, text=True, timeout=60
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


def test_replay_bills_exactly_once_with_who_and_why(fresh_db, make_collector):
    collector = make_collector(fresh_db)
    f = SpanFactory({"service.name": "dl-svc"})
    orphans = [f.span("run/orphan", {"celery.action": "run", "job_id": "j-7"}, (i + 1) * 250 * MS) for i in range(4)]
    broken = f.span("gpu", {"account_id": "acct-dl", "gpu.count": 0}, 500 * MS)
    assert exporter(collector.endpoint).export([*orphans, broken]) == SpanExportResult.SUCCESS
    assert totals(fresh_db, "acct-dl") == {}

    listed = json.loads(cli(fresh_db, "list", "--format", "json").stdout)
    assert sorted(r["reason"] for r in listed) == ["invalid_gpu_count"] + ["unattributed"] * 4
    assert {r["status"] for r in listed} == {"pending"}
    table = cli(fresh_db, "list", "--reason", "unattributed").stdout.splitlines()
    assert len(table) == 5 and all("unattributed" in line and "pending" in line for line in table[1:])

    assert cli(fresh_db, "list", "--since", "2100-01-01").stdout.strip() == "no rejected spans"
    assert len(json.loads(cli(fresh_db, "list", "--since", "2020-01-01", "--format", "json").stdout)) == 5

    gpu_id = next(r["id"] for r in listed if r["reason"] == "invalid_gpu_count")
    shown = json.loads(cli(fresh_db, "show", gpu_id).stdout)
    span = shown["span"]["scopeSpans"][0]["spans"][0]
    assert shown["message"].startswith("gpu.count must be") and span["name"] == "gpu"
    assert {"key": "gpu.count", "value": {"intValue": "0"}} in span["attributes"]
    assert len(span["traceId"]) == 32 and span["traceId"] == shown["trace_id"]

    # without the missing attribution nothing can bill: reported, ledger untouched, still pending
    out = cli(fresh_db, "replay", "--reason", "unattributed").stdout
    assert "4 rejected spans selected: 0 billed" in out and "unattributed x4" in out
    assert ledger(fresh_db, "SELECT count(*) FROM usage_events") == [(0,)]

    refused = cli(fresh_db, "replay", "--reason", "unattributed", "--patch", "account_id=acct-dl", check=False)
    assert refused.returncode == 2 and "--why is required" in refused.stderr
    bad_key = cli(fresh_db, "replay", "--id", gpu_id, "--patch", "gpu.count=1", "--why", "x", check=False)
    assert bad_key.returncode == 2 and "may set only account_id, job_id, plan_code" in bad_key.stderr

    out = cli(
        fresh_db,
        "replay",
        "--reason",
        "unattributed",
        "--patch",
        "account_id=acct-dl",
        "--by",
        "alice",
        "--why",
        "ticket 42: worker lost its baggage",
    ).stdout
    assert "4 rejected spans selected: 4 billed (4 new usage rows, 0 already in the ledger)" in out
    assert totals(fresh_db, "acct-dl") == {
        "worker_seconds": Decimal("2.6")  # 0.25, 0.5, 0.75, 1.0 s round up to 0.3 + 0.5 + 0.8 + 1.0
    }
    provenance = ledger(
        fresh_db,
        "SELECT DISTINCT metadata->'replay'->>'by', metadata->'replay'->>'why', job_id "
        "FROM usage_events WHERE account_id = 'acct-dl'",
    )
    assert provenance == [("alice", "ticket 42: worker lost its baggage", "j-7")]
    assert (
        ledger(fresh_db, "SELECT replayed_by, patch, usage_rows FROM dead_letter_replays")
        == [("alice", {"account_id": "acct-dl"}, 1)] * 4
    )
    statuses = {r["reason"]: r["status"] for r in json.loads(cli(fresh_db, "list", "--format", "json").stdout)}
    assert statuses == {"unattributed": "replayed", "invalid_gpu_count": "pending"}

    # twice changes nothing
    out = cli(fresh_db, "replay", "--reason", "unattributed", "--patch", "account_id=other", "--why", "again").stdout
    assert out.startswith("0 rejected spans selected")
    assert ledger(fresh_db, "SELECT count(*), sum(quantity) FROM usage_events") == [(4, Decimal("2.6"))]

    # a retried export of the same unattributed spans keeps one dead letter each, and stays replayed
    assert exporter(collector.endpoint).export(orphans) == SpanExportResult.SUCCESS
    assert ledger(fresh_db, "SELECT count(*) FROM rejected_spans WHERE reason = 'unattributed'") == [(4,)]
    assert cli(
        fresh_db, "replay", "--reason", "unattributed", "--patch", "account_id=x", "--why", "y"
    ).stdout.startswith("0 rejected spans selected")
    assert ledger(fresh_db, "SELECT count(*), sum(quantity) FROM usage_events") == [(4, Decimal("2.6"))]
