"""Metric routing is data: a committed row's quantity goes to the billable counter its meter definition
names (MeterRouting), so a new meter version, or a new meter, is a new definition, not an edit of the
exporter. Pure: the exporter's accounting of a committed batch, no database."""

from __future__ import annotations

import decimal

import pytest
from prometheus_client import CollectorRegistry

from spanmeter.billing.ledger.writer import UsageWrite
from spanmeter.collector.exporters import ledger as exporter_module
from spanmeter.collector.exporters.ledger import LedgerExporter
from spanmeter.collector.metrics import CollectorMetrics
from spanmeter.collector.processors.meters import (
    ALL_METERS,
    GPU_SECONDS,
    Constant,
    MeterDefinition,
    MeterRouting,
    OnUnattributed,
    Present,
)
from spanmeter.metrics_catalog import CATALOG

NS = 1_700_000_000 * 10**9


def _record(rows, meters, inserted_keys=None, conflicted=frozenset()):
    registry = CollectorRegistry()
    metrics = CollectorMetrics(registry, plan_codes=("growth",), gpu_models=("H100",))
    exporter = LedgerExporter(database=None, metrics=metrics)  # type: ignore[arg-type]  # never started
    exporter._routes = exporter_module._routes(metrics, meters)
    inserted = len(rows) if inserted_keys is None else len(inserted_keys)
    written = UsageWrite(staged=len(rows), inserted=inserted, inserted_keys=inserted_keys)
    exporter._record(rows, written, NS / 1e9, set(conflicted))
    return lambda name, labels: registry.get_sample_value(name, labels)


def test_every_routing_names_a_billable_counter_of_the_catalog_with_its_labels():
    names = {m.name: m for m in CATALOG}
    for meter in ALL_METERS.values():
        assert meter.routing is not None, meter.code
        entry = names[meter.routing.metric]
        assert entry.type == "counter" and len(entry.labels) == len(meter.routing.labels), meter.code


def test_a_v2_meter_and_a_new_meter_route_by_their_definitions():
    gpu_v2 = MeterDefinition(
        code="gpu_seconds", version=2, unit="s", description="GPU time, per-second rounding (test)",
        on_unattributed=OnUnattributed.REJECT, routing=MeterRouting("spanmeter_billable_gpu_seconds_total", ("plan", "gpu_model")),
        match=GPU_SECONDS.match, quantity=GPU_SECONDS.quantity, count=GPU_SECONDS.count,
    )  # fmt: skip
    cache_reads = MeterDefinition(
        code="cache_read_tokens", version=1, unit="{token}", description="cached input tokens (test)",
        on_unattributed=OnUnattributed.REJECT, routing=MeterRouting("spanmeter_billable_tokens_total", ("plan", "=cache_read")),
        match=Present("gen_ai.usage.cache_read.input_tokens"), quantity=Constant(1),
    )  # fmt: skip
    unrouted = MeterDefinition(
        code="storage_bytes", version=1, unit="By", description="no billable counter (test)",
        on_unattributed=OnUnattributed.REJECT, match=Present("storage.bytes"), quantity=Constant(1),
    )  # fmt: skip
    rows = [  # (code, version, key, plan, label, quantity, end ns): what the exporter counts per committed row
        ("gpu_seconds", 1, "k1", "growth", "H100", "1.5", NS),
        ("gpu_seconds", 2, "k2", "growth", "H100", "2.0", NS),
        ("cache_read_tokens", 1, "k3", "growth", None, "700", NS),
        ("storage_bytes", 1, "k4", "growth", None, "4096", NS),
    ]
    value = _record(rows, [GPU_SECONDS, gpu_v2, cache_reads, unrouted])
    assert value("spanmeter_billable_gpu_seconds_total", {"plan_code": "growth", "gpu_model": "h100"}) == 3.5
    assert value("spanmeter_billable_tokens_total", {"plan_code": "growth", "direction": "cache_read"}) == 700
    billed = {"gpu_seconds": 2, "cache_read_tokens": 1, "storage_bytes": 1}  # every row counted as billed
    for code, count in billed.items():
        assert value("spanmeter_spans_billed_total", {"meter": code}) == count
    # a version nobody defined is not guessed at: billed, but in no billable counter
    value = _record([("gpu_seconds", 3, "k5", "growth", "H100", "9.0", NS)], [GPU_SECONDS])
    assert value("spanmeter_billable_gpu_seconds_total", {"plan_code": "growth", "gpu_model": "h100"}) == 0


def test_a_definition_that_would_not_bill_failed_spans_is_refused_not_ignored():
    with pytest.raises(ValueError, match="bill_failed=False is not implemented"):
        MeterDefinition(
            code="worker_seconds", version=9, unit="s", description="(test)",
            on_unattributed=OnUnattributed.REJECT, bill_failed=False, match=Present("x"), quantity=Constant(1),
        )  # fmt: skip


def test_a_span_twice_in_one_batch_is_billed_once_and_counted_once_as_a_duplicate():
    rows = [
        ("gpu_seconds", 1, "k1", "growth", "H100", "1.5", NS),
        ("gpu_seconds", 1, "k1", "growth", "H100", "1.5", NS),  # the same span again (a retry inside the batch)
        ("gpu_seconds", 1, "k2", "growth", "H100", "2.0", NS),  # already in the ledger: not inserted
        ("gpu_seconds", 1, "k3", "growth", "H100", "4.0", NS),  # same key, other content: a conflict
    ]
    value = _record(rows, [GPU_SECONDS], inserted_keys=["k1"], conflicted={"k3"})
    assert value("spanmeter_spans_billed_total", {"meter": "gpu_seconds"}) == 1
    assert value("spanmeter_billable_gpu_seconds_total", {"plan_code": "growth", "gpu_model": "h100"}) == 1.5
    # the second k1 and k2 are duplicates; the conflict is a rejection counted elsewhere, not a duplicate
    assert value("spanmeter_usage_events_duplicate_total", {"meter": "gpu_seconds"}) == 2


def test_a_quantity_that_cannot_be_summed_leaves_the_row_counts_counted():
    registry = CollectorRegistry()
    metrics = CollectorMetrics(registry, plan_codes=("growth",), gpu_models=("H100",))
    exporter = LedgerExporter(database=None, metrics=metrics)  # type: ignore[arg-type]  # never started
    exporter._routes = exporter_module._routes(metrics, [GPU_SECONDS])
    rows = [
        ("gpu_seconds", 1, "k1", "growth", "H100", "not-a-number", NS),  # a bug upstream: no Decimal for it
        ("gpu_seconds", 1, "k2", "growth", "H100", "1.0", NS),  # already in the ledger
    ]
    written = UsageWrite(staged=2, inserted=1, inserted_keys=["k1"])
    with pytest.raises(decimal.InvalidOperation):
        exporter._record(rows, written, NS / 1e9, set())
    # the rows were committed: what was billed and what was a duplicate is counted before any sum can fail
    assert registry.get_sample_value("spanmeter_spans_billed_total", {"meter": "gpu_seconds"}) == 1
    assert registry.get_sample_value("spanmeter_usage_events_duplicate_total", {"meter": "gpu_seconds"}) == 1
