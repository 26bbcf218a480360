"""billing/ledger/ is the only code that speaks SQL for billing, and the domain modules compute without it.

Issue 5/7, item 1: the domain modules (invoices, subscriptions, adjustments, reconcile, quotas, rollups,
usage, exports, the service and the component) and the dead-letter replay read and write through typed query
functions in ``billing/ledger``. The first test reads the source: no SQL text and no cursor call outside the
ledger package. The others run the domain's arithmetic on hand-made rows, without a database (the unit tier's
guard refuses any connection), and check what finance relies on: segments, late usage, reconciliation,
aggregates, projections and the refusals of bad corrections and subscriptions.
"""

from __future__ import annotations

import ast
import re
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from types import MappingProxyType

import pytest

from spanmeter.billing import adjustments, reconcile, rollups, subscriptions
from spanmeter.billing.invoices import draft, late, pricing
from spanmeter.billing.invoices.usage import SegmentUsage, billable_usage, uncovered_windows
from spanmeter.billing.periods import Period

ROOT = Path(__file__).resolve().parents[1]
_SQL = re.compile(r"^\s*(SELECT|INSERT|UPDATE|DELETE|WITH|LOCK|COPY|CREATE|ALTER|DROP|SET|TRUNCATE)\s")
_CURSOR_CALLS = {"execute", "executemany", "copy", "cursor", "fetchone", "fetchall"}


def _domain_files() -> list[Path]:
    billing = ROOT / "billing"
    files = [p for p in billing.rglob("*.py") if "ledger" not in p.relative_to(billing).parts]
    return [*files, ROOT / "collector" / "replay.py"]


def test_only_the_ledger_package_speaks_sql():
    offences = []
    files = _domain_files()
    assert len(files) > 20  # the walk found the domain (billing/*.py, invoices/, rating/)
    for path in files:
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in _CURSOR_CALLS:
                offences.append(f"{path.relative_to(ROOT)}:{node.lineno}: .{node.func.attr}(…)")
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and _SQL.match(node.value):
                offences.append(f"{path.relative_to(ROOT)}:{node.lineno}: SQL text {node.value.strip()[:40]!r}")
    assert offences == [], "move these into billing/ledger/ as typed query functions:\n" + "\n".join(offences)


def test_the_check_sees_sql_where_it_is():
    """The scan above is not vacuous: it finds the ledger package's own SQL."""
    store = ROOT / "billing" / "ledger" / "rollup_store.py"
    tree = ast.parse(store.read_text())
    found = [
        n for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str) and _SQL.match(n.value)
    ]
    assert found


# -- subscriptions and segments ----------------------------------------------------------------------------

T0 = datetime(2026, 11, 1, tzinfo=UTC)
NOV = Period(2026, 11)


def _sub(sid: int, plan: str, start: datetime, end: datetime | None = None) -> subscriptions.Subscription:
    return subscriptions.Subscription(sid, "acme", plan, "v2_compute", "EUR", start, end, start, "test", None)


def test_a_mid_month_plan_change_gives_two_segments_and_no_gap():
    rows = [_sub(1, "growth", T0), _sub(2, "scale", datetime(2026, 11, 15, tzinfo=UTC))]
    segments = subscriptions.resolve_segments(rows, NOV.start, NOV.end)
    assert [(s.start.day, s.end, s.subscription.plan_code) for s in segments] == [
        (1, datetime(2026, 11, 15, tzinfo=UTC), "growth"),
        (15, NOV.end, "scale"),
    ]
    assert uncovered_windows(segments, NOV) == []


def test_an_ended_subscription_leaves_the_rest_of_the_month_uncovered():
    segments = subscriptions.resolve_segments(
        [_sub(1, "growth", T0, datetime(2026, 11, 10, tzinfo=UTC))], NOV.start, NOV.end
    )
    assert uncovered_windows(segments, NOV) == [(datetime(2026, 11, 10, tzinfo=UTC), NOV.end)]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"pricing_version": "v9"}, "unknown pricing version"),
        ({"plan_code": "platinum"}, "has no plan"),
        ({"currency": "USD"}, "priced in EUR, not USD"),
        ({"valid_from": datetime(2026, 11, 1, 10, 30, tzinfo=UTC)}, "whole UTC hours"),
        ({"valid_from": datetime(2026, 11, 1)}, "need a timezone"),
        ({"valid_to": T0}, "valid_to must be after valid_from"),
        ({"account_id": ""}, "an account id is needed"),
    ],
)
def test_a_subscription_no_invoice_could_rate_is_refused(change, message):
    fields = {"account_id": "acme", "plan_code": "growth", "pricing_version": "v2_compute", "valid_from": T0}
    with pytest.raises(subscriptions.SubscriptionError, match=message):
        subscriptions.validate(**{**fields, **change})


def test_a_valid_subscription_takes_the_plans_currency():
    assert (
        subscriptions.validate(account_id="acme", plan_code="growth", pricing_version="v2_compute", valid_from=T0)
        == "EUR"
    )


# -- corrections ---------------------------------------------------------------------------------------------


def _adjustment(quantity: str = "-120") -> adjustments.Adjustment:
    return adjustments.Adjustment(
        "OPS-1", "acme", "worker_seconds", Decimal(quantity), T0, "retry loop", "ops", T0, None
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"meter_code": "bogus"}, "unknown meter"),
        ({"quantity": Decimal(0)}, "non-zero"),
        ({"quantity": Decimal("NaN")}, "non-zero"),
        ({"reason": "  "}, "a reason is required"),
        ({"idempotency_key": ""}, "an idempotency key is required"),
        ({"occurred_at": datetime(2026, 11, 1)}, "timezone"),
    ],
)
def test_a_correction_finance_could_not_explain_is_refused(change, message):
    fields = {"idempotency_key": "k", "meter_code": "worker_seconds", "quantity": Decimal(-1), "occurred_at": T0,
              "reason": "why"}  # fmt: skip
    with pytest.raises(adjustments.AdjustmentError, match=message):
        adjustments.validate(**{**fields, **change})


def test_a_correction_key_reused_for_other_content_is_refused_and_the_same_content_is_not():
    held = _adjustment()
    adjustments.check_replay(
        held, account_id="acme", meter_code="worker_seconds", quantity=Decimal(-120), occurred_at=T0
    )
    with pytest.raises(adjustments.AdjustmentError, match="already used for a different correction"):
        adjustments.check_replay(
            held, account_id="acme", meter_code="worker_seconds", quantity=Decimal(-60), occurred_at=T0
        )


# -- rollups -------------------------------------------------------------------------------------------------


def test_a_window_splits_into_whole_days_and_hour_edges():
    start, end = datetime(2026, 11, 1, 5, tzinfo=UTC), datetime(2026, 11, 4, 7, tzinfo=UTC)
    assert rollups.split_days(start, end) == (datetime(2026, 11, 2, tzinfo=UTC), datetime(2026, 11, 4, tzinfo=UTC))
    inside_a_day = (datetime(2026, 11, 1, 5, tzinfo=UTC), datetime(2026, 11, 1, 9, tzinfo=UTC))
    assert rollups.split_days(*inside_a_day) == (inside_a_day[0], inside_a_day[0])  # hourly rows only
    with pytest.raises(ValueError, match="whole UTC hours"):
        rollups.split_days(datetime(2026, 11, 1, 5, 30, tzinfo=UTC), end)


def test_totals_add_up_per_meter_and_keep_the_span_plan_codes_apart():
    rows = [
        ("worker_seconds", "growth", Decimal("100.5"), 3, [1]),
        ("worker_seconds", "scale", Decimal("20"), 1, [1, 2]),
        ("api_requests", "", Decimal("7"), 7, [1]),
    ]
    totals = rollups.totals_from_rows(rows)
    assert totals["worker_seconds"].quantity == Decimal("120.5")
    assert totals["worker_seconds"].events == 4
    assert dict(totals["worker_seconds"].by_plan_code) == {"growth": Decimal("100.5"), "scale": Decimal(20)}
    assert totals["worker_seconds"].meter_versions == (1, 2)
    assert totals["api_requests"].quantity == 7


def test_each_aggregate_kind_computes_what_its_name_says():
    late, early = datetime(2026, 11, 2, tzinfo=UTC), datetime(2026, 11, 1, tzinfo=UTC)
    buckets = [
        ("docpipe-classifier-small", Decimal(1000), 2, Decimal(700), early, Decimal(300)),
        ("docpipe-extractor-large", Decimal(50), 1, Decimal(50), late, Decimal(50)),
    ]
    agg = rollups.AGGREGATES
    assert rollups.aggregate_buckets(agg["output_tokens"], buckets) == 1050
    assert rollups.aggregate_buckets(agg["api_requests"], buckets) == 3
    assert rollups.aggregate_buckets(agg["largest_task_seconds"], buckets) == 700
    assert rollups.aggregate_buckets(agg["last_task_seconds"], buckets) == 50
    assert rollups.aggregate_buckets(agg["weighted_output_tokens"], buckets) == Decimal(1000) * Decimal("0.1") + 50
    assert rollups.aggregate_buckets(agg["output_tokens"], []) is None


# -- invoices ------------------------------------------------------------------------------------------------


def _total(meter: str, quantity: str, plan: str = "growth") -> rollups.RollupTotal:
    return rollups.RollupTotal(meter, Decimal(quantity), 1, MappingProxyType({plan: Decimal(quantity)}), (1,))


def test_window_usage_adds_corrections_to_the_rollups_and_drops_unknown_meters():
    usage, versions, plans = billable_usage(
        {"worker_seconds": _total("worker_seconds", "5400"), "mystery": _total("mystery", "9")},
        [_adjustment("-600")],
    )
    assert usage["worker_seconds"] == 4800
    assert "mystery" not in usage
    assert versions["worker_seconds"] == {1}
    assert plans["growth"] == Decimal(5400)  # plan codes as the spans carried them, billable meters only


def _parts(worker_seconds: str, plan: str = "growth", span_plan: str = "growth") -> list[SegmentUsage]:
    segment = subscriptions.resolve_segments([_sub(1, plan, T0)], NOV.start, NOV.end)[0]
    usage, versions, plans = billable_usage({"worker_seconds": _total("worker_seconds", worker_seconds, span_plan)}, [])
    return [SegmentUsage(segment, usage, versions, plans)]


def test_a_draft_totals_its_lines_and_reports_a_span_plan_code_it_does_not_price():
    parts = _parts("5400", span_plan="scale")
    invoice = draft.assemble("acme", NOV, parts, rated=pricing.rate_segments(parts, NOV, None))
    assert invoice.invoice_number == "DRAFT-2026-11-acme"
    assert invoice.total == sum((line.amount for line in invoice.lines), Decimal(0))
    assert invoice.total > 0
    assert invoice.usage["worker_seconds"] == 5400
    assert [m["span_plan_code"] for m in invoice.plan_mismatches] == ["scale"]


def test_late_usage_after_finalizing_becomes_one_adjustment_line_on_the_next_open_period():
    billed = _parts("4800")
    finalized_doc = {
        **draft.assemble("acme", NOV, billed, rated=pricing.rate_segments(billed, NOV, None)).to_dict(),
        "invoice_number": "INV-2026-11-0001",
    }
    finalized = [(NOV, finalized_doc)]
    dec = NOV.next()
    assert late.periods_late_onto(finalized, dec) == finalized
    assert late.periods_late_onto(finalized, dec.next()) == []  # December is still open: it takes November's
    now = _parts("5400")  # 600 s arrived after finalizing
    lines, details = late.late_adjustments(NOV, finalized_doc, finalized, now, "EUR")
    rated_now = pricing.metric_amounts(pricing.rate_segments(now, NOV, None)[0])["worker_seconds"]
    rated_then = pricing.metric_amounts(pricing.rate_segments(billed, NOV, None)[0])["worker_seconds"]
    assert [(line.kind, line.meter_code, line.amount) for line in lines] == [
        ("adjustment", "worker_seconds", rated_now - rated_then)
    ]
    assert details[0]["quantity"] == "600" and details[0]["reference_invoice"] == "INV-2026-11-0001"
    # once that line is finalized on December's invoice, November owes nothing more
    settled = [*finalized, (dec, {"late_usage": details, "lines": [], "invoice_number": "INV-2026-12-0001"})]
    assert late.late_adjustments(NOV, finalized_doc, settled, now, "EUR") == ([], [])


# -- reconciliation ------------------------------------------------------------------------------------------


def test_reconciliation_balances_billed_late_and_pending_usage_against_the_ledger():
    invoice = {"invoice_number": "INV-2026-11-0001", "usage": {"worker_seconds": "4800"}}
    later = [{"late_usage": [{"reference_period": "2026-11", "meter_code": "worker_seconds", "quantity": "300"}]},
             {"late_usage": [{"reference_period": "2026-10", "meter_code": "worker_seconds", "quantity": "999"}]}]  # fmt: skip
    late_billed = reconcile.late_billed_for(NOV, later)
    assert late_billed == {"worker_seconds": Decimal(300)}
    pending = {"worker_seconds": Decimal(300)}
    ledger = {"worker_seconds": Decimal(5400)}
    assert reconcile.invoice_differences("acme", invoice, late_billed, pending, ledger) == []
    found = reconcile.invoice_differences("acme", invoice, late_billed, {}, ledger)
    assert [(d["meter_code"], d["ledger"], d["billed_or_pending"]) for d in found] == [
        ("worker_seconds", "5400", "5100")
    ]
    assert reconcile.difference_total(found) == 300


def test_the_next_open_period_skips_finalized_ones():
    assert reconcile.next_open_period(NOV, {NOV.next(), NOV.next().next()}) == NOV.next().next().next()
