"""The cost-driver split (``spanmeter.billing.drivers.attribute``), pure: each usage line's amount is shared by
quantity among the drivers that used what it prices; fees stay unattributed; the drivers add up to the bill."""

from __future__ import annotations

from decimal import Decimal

from spanmeter.billing.drivers import attribute
from spanmeter.billing.invoices import Invoice
from spanmeter.billing.rating import Line

D = Decimal


def _line(kind, metric, amount, *, dimension=None, provider=None, usage_kind=None, book=None) -> Line:
    return Line(kind, metric, kind, D(1), D(0), D(0), D(1), D(amount), "EUR", dimension=dimension,
                usage_kind=usage_kind, price_book=book, provider=provider)  # fmt: skip


def _invoice(*lines: Line) -> Invoice:
    return Invoice("DRAFT-2026-12-acme", "draft", "acme", "2026-12", "EUR", "v", {}, list(lines),
                   sum((line.amount for line in lines), D(0)))  # fmt: skip


METRIC_OF = {"worker_seconds": "worker_seconds", "input_tokens": "tokens", "output_tokens": "tokens"}


def test_a_flat_line_is_shared_by_quantity_and_fees_stay_unattributed():
    invoice = _invoice(_line("fee", None, "49.00"), _line("usage", "worker_seconds", "30.00"))
    usage = {("job-a", "worker_seconds", "", ""): D("200"), ("job-b", "worker_seconds", "", ""): D("100")}
    drivers, unattributed = attribute(invoice, usage, METRIC_OF)
    assert [(d.key, d.amount) for d in drivers] == [("job-a", D("20.00")), ("job-b", D("10.00"))]
    assert unattributed == D("49.00")
    assert drivers[0].share == (D(20) / D(79)).quantize(D("0.0001"))
    assert drivers[0].quantities == {"worker_seconds": D("200")}


def test_a_per_model_line_goes_only_to_the_drivers_of_its_model_and_provider():
    invoice = _invoice(
        _line("usage", "tokens", "9.00", dimension="gpt-4o", provider="openai", usage_kind="input", book="b@1"),
        _line("usage", "tokens", "1.00", dimension="gpt-4o", provider="azure", usage_kind="input", book="b@1"),
    )
    usage = {
        ("job-a", "input_tokens", "gpt-4o", "openai"): D(300),
        ("job-b", "input_tokens", "gpt-4o", "openai"): D(600),
        ("job-b", "input_tokens", "gpt-4o", "azure"): D(50),
        ("job-c", "input_tokens", "gpt-4o-mini", "openai"): D(10_000),  # another model: none of these lines
    }
    drivers, unattributed = attribute(invoice, usage, METRIC_OF)
    assert {d.key: d.amount for d in drivers} == {"job-b": D("7.00"), "job-a": D("3.00")}
    assert unattributed == 0 and sum(d.amount for d in drivers) == invoice.total


def test_a_line_whose_usage_is_missing_is_unattributed_and_top_keeps_the_dearest_in_order():
    invoice = _invoice(_line("usage", "worker_seconds", "12.00"), _line("usage", "tokens", "5.00"))
    usage = {(f"job-{i}", "worker_seconds", "", ""): D(i) for i in range(1, 5)}  # no token usage at all
    drivers, unattributed = attribute(invoice, usage, METRIC_OF, top=2)
    assert [d.key for d in drivers] == ["job-4", "job-3"]
    assert [d.amount for d in drivers] == [D("4.80"), D("3.60")]
    assert unattributed == D("5.00")
    everyone, _ = attribute(invoice, usage, METRIC_OF)
    assert sum(d.amount for d in everyone) == D("12.00")


def test_entitlements_bound_the_month_by_a_hard_limit_and_the_segment_by_its_allowance():
    from datetime import UTC, datetime

    from spanmeter.billing.entitlements import PlanLimit, entitlements

    since = datetime(2026, 12, 1, tzinfo=UTC)
    limits = [PlanLimit("growth", "worker_seconds", D(1000), 2, "closed", since)]
    # a plan change mid-month: 700 s before it, 400 s since; the new plan includes 500 s (prorated)
    month = {"worker_seconds": D(1100), "tokens": D(300)}
    segment = {"worker_seconds": D(400), "tokens": D(100)}
    found = {e.metric: e for e in entitlements(month, {"worker_seconds": D(500), "tokens": D(250)}, limits, segment)}
    worker, tokens = found["worker_seconds"], found["tokens"]
    assert (worker.kind, worker.used, worker.limit, worker.remaining, worker.allowed) == (
        "hard",
        D(1100),
        D(1000),
        D(0),
        False,
    )
    assert (worker.max_concurrency, worker.fail_policy) == (2, "closed")
    assert (tokens.kind, tokens.used, tokens.limit, tokens.remaining, tokens.allowed) == (
        "soft",
        D(300),
        D(250),
        D(150),
        True,
    )
    assert found["api_requests"].kind == "none" and found["api_requests"].allowed


def test_a_webhook_url_with_a_space_or_a_line_break_is_refused_naming_the_fix():
    import pytest

    from spanmeter.billing.webhooks import validate_url

    for bad in ("https://example.com/a b", "https://example.com/a\r\nX-Injected: 1", "https://exa\tmple.com/"):
        with pytest.raises(ValueError, match="no spaces or control characters"):
            validate_url(bad)
    assert validate_url(" https://hooks.example.com/spanmeter ") == "https://hooks.example.com/spanmeter"
