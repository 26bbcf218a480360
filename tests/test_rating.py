"""The rating engine, without a database: table-driven price models, the pinned catalogues, worked plan
examples (amounts computed by hand in the comments), transitions, shadow explanations, and properties."""

from __future__ import annotations

import random
from dataclasses import FrozenInstanceError, fields
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spanmeter.billing.rating import (
    BILLABLE_METRICS,
    PRICING_VERSIONS,
    BillableMetric,
    Graduated,
    Line,
    MetricRate,
    Package,
    PerUnit,
    Plan,
    PricingVersion,
    QuotaStatus,
    Tier,
    TransitionPolicy,
    Volume,
    billable_quantities,
    explain_shadow,
    invoice_total,
    prorate,
    quota_status,
    rate_plan,
    round_money,
    transition_lines,
)

D = Decimal
V1 = PRICING_VERSIONS["v1_request"]
V2 = PRICING_VERSIONS["v2_compute"]
FAST = settings(max_examples=200, deadline=None)


def amounts(lines: list[Line]) -> list[tuple[str, str | None, Decimal]]:
    return [(line.kind, line.meter_code, line.amount) for line in lines]


# --- money -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("amount", "currency", "expected"),
    [
        ("0.005", "EUR", "0.01"),  # half up
        ("0.004999", "EUR", "0.00"),
        ("-0.005", "EUR", "-0.01"),  # half away from zero
        ("1.005", "EUR", "1.01"),
        ("2.675", "USD", "2.68"),  # exact Decimal: no float 2.67499999
        ("0.015", "GBP", "0.02"),
        ("12.5", "JPY", "13"),
        ("12.4999", "JPY", "12"),
        ("1234567890123456789012345678901.005", "EUR", "1234567890123456789012345678901.01"),  # > 28 digits
        ("7", "EUR", "7.00"),
    ],
)
def test_round_money(amount: str, currency: str, expected: str) -> None:
    rounded = round_money(D(amount), currency)
    assert rounded == D(expected)
    assert str(rounded) == expected  # exactly the currency's decimals


def test_round_money_refuses_unknown_currency_and_floats() -> None:
    with pytest.raises(ValueError, match="unknown currency 'XYZ'"):
        round_money(D("1"), "XYZ")
    with pytest.raises(TypeError, match="Decimal"):
        round_money(1.5, "EUR")  # type: ignore[arg-type]


# --- lines -------------------------------------------------------------------------------------------


def test_line_to_dict_is_json_ready() -> None:
    line = Line("usage", "api_requests", "API requests", D("30750"), D("0"), D("30750"), D("4E-4"), D("12.3"), "EUR")
    assert line.to_dict() == {
        "kind": "usage",
        "meter_code": "api_requests",
        "description": "API requests",
        "quantity": "30750",
        "included_quantity": "0",
        "overage_quantity": "30750",
        "unit_price": "0.0004",
        "amount": "12.30",
        "currency": "EUR",
        "reference_period": None,
    }
    big = Line("usage", "tokens", "t", D("1E+12"), D(0), D("1E+12"), D("0.0000009"), D("900000.00"), "EUR")
    assert big.to_dict()["quantity"] == "1000000000000"
    adjustment = Line("adjustment", None, "Correction", D(1), D(0), D(0), D("-5"), D("-5"), "JPY", "2026-10")
    assert adjustment.to_dict()["amount"] == "-5"
    assert adjustment.to_dict()["reference_period"] == "2026-10"


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"amount": D("0.005")}, "not rounded"),
        ({"kind": "discount"}, "line kind"),
        ({"meter_code": None}, "meter_code"),
        ({"currency": "XYZ"}, "unknown currency"),
        ({"reference_period": "2026-13"}, "YYYY-MM"),
    ],
)
def test_line_validation(kwargs: dict[str, Any], error: str) -> None:
    base: dict[str, Any] = {
        "kind": "usage",
        "meter_code": "tokens",
        "description": "x",
        "quantity": D(1),
        "included_quantity": D(0),
        "overage_quantity": D(1),
        "unit_price": D(1),
        "amount": D(1),
        "currency": "EUR",
    }
    with pytest.raises(ValueError, match=error):
        Line(**{**base, **kwargs})


def test_invoice_total_is_the_exact_sum_and_refuses_mixed_currencies() -> None:
    eur = [Line("fee", None, "f", D(1), D(0), D(0), D("0.10"), D("0.10"), "EUR")] * 3
    assert invoice_total(eur) == D("0.30")
    assert invoice_total([]) == D(0)
    usd = Line("fee", None, "f", D(1), D(0), D(0), D(1), D(1), "USD")
    with pytest.raises(ValueError, match="mix currencies: EUR, USD"):
        invoice_total([*eur, usd])


# --- price models, table-driven ----------------------------------------------------------------------

GRADUATED_TOKENS = Graduated(
    (Tier(D("20000000"), D("0.0000015")), Tier(D("100000000"), D("0.0000012")), Tier(None, D("0.0000009")))
)
VOLUME_SECONDS = Volume((Tier(D("500000"), D("0.0018")), Tier(D("2000000"), D("0.0015")), Tier(None, D("0.0012"))))
GRADUATED_FLAT = Graduated((Tier(D(10), D(1), flat_price=D(5)), Tier(None, D("0.5"), flat_price=D(2))))
VOLUME_FLAT = Volume((Tier(D(100), D(1), flat_price=D(10)), Tier(None, D("0.5"), flat_price=D(20))))

# (model, used, included, [(quantity, overage_quantity, unit_price, amount), ...])
PRICE_CASES = [
    ("per-unit overage", PerUnit(D("0.0020")), "5000", "3600", [("1400", "1400", "0.0020", "2.80")]),
    ("per-unit within allowance", PerUnit(D("0.0020")), "3000", "3600", [("0", "0", "0.0020", "0.00")]),
    ("per-unit zero", PerUnit(D("0.0020")), "0", "0", [("0", "0", "0.0020", "0.00")]),
    ("per-unit 100 ms over rounds to 0", PerUnit(D("0.0020")), "3600.1", "3600", [("0.1", "0.1", "0.0020", "0.00")]),
    ("per-unit half-up at .005", PerUnit(D("0.0020")), "3602.5", "3600", [("2.5", "2.5", "0.0020", "0.01")]),
    (
        "per-unit 10^12 tokens",
        PerUnit(D("0.0000018")),
        "1000000000000",
        "0",
        [("1e12", "1e12", "0.0000018", "1800000.00")],
    ),
    # 2,150,000 over in packages of 1,000,000: 2.15 → 3 packages × €1.50
    ("package rounds up", Package(D(1000000), D("1.50")), "2400000", "250000", [("3", "2150000", "1.50", "4.50")]),
    ("package exactly one", Package(D(1000000), D("1.50")), "1250000", "250000", [("1", "1000000", "1.50", "1.50")]),
    ("package one unit over", Package(D(1000000), D("1.50")), "1250001", "250000", [("2", "1000001", "1.50", "3.00")]),
    ("package zero", Package(D(1000000), D("1.50")), "100", "250000", [("0", "0", "1.50", "0.00")]),
    # 25M over: 20M × 0.0000015 = 30.00; 5M × 0.0000012 = 6.00
    (
        "graduated two tiers",
        GRADUATED_TOKENS,
        "30000000",
        "5000000",
        [("20000000", "20000000", "0.0000015", "30.00"), ("5000000", "5000000", "0.0000012", "6.00")],
    ),
    (
        "graduated exactly at up_to",
        GRADUATED_TOKENS,
        "25000000",
        "5000000",
        [("20000000", "20000000", "0.0000015", "30.00")],
    ),
    (
        "graduated one unit over up_to",
        GRADUATED_TOKENS,
        "25000001",
        "5000000",
        [("20000000", "20000000", "0.0000015", "30.00"), ("1", "1", "0.0000012", "0.00")],
    ),
    ("graduated zero", GRADUATED_TOKENS, "1000000", "5000000", [("0", "0", "0.0000015", "0.00")]),
    # 10^12: 20M × 0.0000015 = 30; 80M × 0.0000012 = 96; 999,900,000,000 × 0.0000009 = 899,910
    (
        "graduated 10^12 tokens",
        GRADUATED_TOKENS,
        "1000000000000",
        "0",
        [
            ("20000000", "20000000", "0.0000015", "30.00"),
            ("80000000", "80000000", "0.0000012", "96.00"),
            ("999900000000", "999900000000", "0.0000009", "899910.00"),
        ],
    ),
    # tier 1: 10 × 1 + flat 5; tier 2: 5 × 0.5 + flat 2
    (
        "graduated flat fees",
        GRADUATED_FLAT,
        "15",
        "0",
        [("10", "10", "1", "10.00"), ("1", "0", "5", "5.00"), ("5", "5", "0.5", "2.50"), ("1", "0", "2", "2.00")],
    ),
    ("volume exactly at up_to", VOLUME_SECONDS, "500000", "0", [("500000", "500000", "0.0018", "900.00")]),
    # 500,000.1 × 0.0015 = 750.00015
    ("volume one increment over", VOLUME_SECONDS, "500000.1", "0", [("500000.1", "500000.1", "0.0015", "750.00")]),
    ("volume tier 2", VOLUME_SECONDS, "600000", "0", [("600000", "600000", "0.0015", "900.00")]),
    ("volume allowance first", VOLUME_SECONDS, "600000", "100000", [("500000", "500000", "0.0018", "900.00")]),
    ("volume zero", VOLUME_SECONDS, "0", "0", [("0", "0", "0.0018", "0.00")]),
    ("volume 10^12", VOLUME_SECONDS, "1000000000000", "0", [("1e12", "1e12", "0.0012", "1200000000.00")]),
    ("volume flat fee", VOLUME_FLAT, "150", "0", [("150", "150", "0.5", "75.00"), ("1", "0", "20", "20.00")]),
    ("volume zero has no flat fee", VOLUME_FLAT, "0", "0", [("0", "0", "1", "0.00")]),
]


@pytest.mark.parametrize(
    ("name", "model", "used", "included", "expected"), PRICE_CASES, ids=[c[0] for c in PRICE_CASES]
)
def test_price_model(name: str, model: Any, used: str, included: str, expected: list[tuple[str, ...]]) -> None:
    lines = model.lines("tokens", "Tokens", D(used), D(included), "EUR")
    got = [(line.quantity, line.overage_quantity, line.unit_price, line.amount) for line in lines]
    assert got == [tuple(D(v) for v in row) for row in expected]
    for line in lines:
        assert (line.kind, line.meter_code, line.currency) == ("usage", "tokens", "EUR")
        assert line.included_quantity == D(included)
        assert line.amount == round_money(line.quantity * line.unit_price, "EUR")
        assert line.description.startswith("Tokens: ")


def test_tier_descriptions_name_the_range() -> None:
    lines = GRADUATED_TOKENS.lines("tokens", "LLM tokens", D("200000000"), D(0), "EUR")
    assert [line.description for line in lines] == [
        "LLM tokens: 200,000,000 used, 0 included; tier 1: 0–20,000,000",
        "LLM tokens: 200,000,000 used, 0 included; tier 2: 20,000,000–100,000,000",
        "LLM tokens: 200,000,000 used, 0 included; tier 3: above 100,000,000",
    ]
    volume = VOLUME_SECONDS.lines("worker_seconds", "Worker-seconds", D(600000), D(0), "EUR")
    assert volume[0].description == "Worker-seconds: 600,000 used, 0 included; tier 2: 500,000–2,000,000"


def test_jpy_lines_round_to_whole_yen() -> None:
    (line,) = PerUnit(D("0.25")).lines("api_requests", "Requests", D(10), D(0), "JPY")  # 2.5 → 3
    assert line.amount == D("3") and line.to_dict()["amount"] == "3"


@pytest.mark.parametrize(
    ("build", "error"),
    [
        (lambda: PerUnit(D("-1")), "negative"),
        (lambda: PerUnit(0.1), "Decimal"),  # type: ignore[arg-type]
        (lambda: Package(D(0), D(1)), "positive"),
        (lambda: Graduated(()), "non-empty"),
        (lambda: Graduated((Tier(D(10), D(1)),)), "last tier"),
        (lambda: Volume((Tier(D(10), D(1)), Tier(D(5), D(1)), Tier(None, D(1)))), "increasing"),
        (lambda: Volume((Tier(None, D(1)), Tier(None, D(1)))), "only the last"),
        (lambda: PerUnit(D(1)).lines("tokens", "t", D(-1), D(0), "EUR"), "negative"),
        (lambda: PerUnit(D(1)).lines("tokens", "t", D(1), D(0), "XYZ"), "unknown currency"),
    ],
)
def test_price_model_validation(build: Any, error: str) -> None:
    with pytest.raises((ValueError, TypeError), match=error):
        build()


# --- billable metrics --------------------------------------------------------------------------------


def test_billable_metrics_and_quantities() -> None:
    assert BILLABLE_METRICS["tokens"] == BillableMetric(
        "tokens", ("input_tokens", "output_tokens"), "{token}", "LLM tokens (input + output)"
    )
    assert {code: (m.meters, m.unit) for code, m in BILLABLE_METRICS.items()} == {
        "worker_seconds": (("worker_seconds",), "s"),
        "gpu_seconds": (("gpu_seconds",), "s"),
        "tokens": (("input_tokens", "output_tokens"), "{token}"),
        "api_requests": (("api_requests",), "{request}"),
    }
    assert billable_quantities({"input_tokens": D(700), "output_tokens": D(300), "worker_seconds": D("1.5")}) == {
        "worker_seconds": D("1.5"),
        "gpu_seconds": D(0),
        "tokens": D(1000),
        "api_requests": D(0),
    }
    with pytest.raises(ValueError, match="unknown meter codes: cpu_seconds"):
        billable_quantities({"cpu_seconds": D(1)})
    with pytest.raises(ValueError, match="negative"):
        billable_quantities({"api_requests": D(-1)})


# --- the catalogues: every number pinned --------------------------------------------------------------


def dump(value: Any) -> Any:
    """A plan/price/tier as plain data (Decimals as strings) so a test can pin every number."""
    if isinstance(value, Decimal):
        return format(value, "f")  # keeps "0.0020" as written, never "9E-7"
    if isinstance(value, tuple):
        return [dump(v) for v in value]
    if hasattr(value, "__dataclass_fields__"):
        return {"type": type(value).__name__, **{f.name: dump(getattr(value, f.name)) for f in fields(value)}}
    return value


def v1_plan(code: str, name: str) -> dict[str, Any]:
    return {
        "type": "Plan",
        "code": code,
        "name": name,
        "currency": "EUR",
        "base_fee": "0",
        "rates": [rate("api_requests", "API requests", "0", per_unit("0.0004"))],
        "minimum_spend": None,
        "commitment": None,
    }


def rate(metric: str, description: str, included: str, price: dict[str, Any]) -> dict[str, Any]:
    return {"type": "MetricRate", "metric": metric, "description": description, "included": included, "price": price}


def per_unit(price: str) -> dict[str, Any]:
    return {"type": "PerUnit", "unit_price": price}


def tiers(kind: str, *rows: tuple[str | None, str]) -> dict[str, Any]:
    return {"type": kind, "tiers": [{"type": "Tier", "up_to": u, "unit_price": p, "flat_price": "0"} for u, p in rows]}


GPU_LIST = rate("gpu_seconds", "GPU-seconds", "0", per_unit("0.0180"))


def test_v1_request_catalogue_is_pinned() -> None:
    assert (V1.code, V1.description) == ("v1_request", "Per API request: €0.0004 per request, nothing else billed")
    assert {code: dump(plan) for code, plan in V1.plans.items()} == {
        "starter": v1_plan("starter", "Starter"),
        "growth": v1_plan("growth", "Growth"),
        "scale": v1_plan("scale", "Scale"),
        "platform": v1_plan("platform", "Platform"),
    }


def test_v2_compute_catalogue_is_pinned() -> None:
    assert (V2.code, V2.description) == (
        "v2_compute",
        "Compute and tokens: worker-seconds, GPU-seconds and LLM tokens; API requests free",
    )
    common = {"type": "Plan", "currency": "EUR", "minimum_spend": None}
    assert {code: dump(plan) for code, plan in V2.plans.items()} == {
        "starter": {
            **common,
            "code": "starter",
            "name": "Starter",
            "base_fee": "49",
            "commitment": None,
            "rates": [
                rate("worker_seconds", "Worker-seconds", "3600", per_unit("0.0020")),
                GPU_LIST,
                rate("tokens", "LLM tokens", "250000", per_unit("0.0000018")),
            ],
        },
        "growth": {
            **common,
            "code": "growth",
            "name": "Growth",
            "base_fee": "299",
            "commitment": None,
            "rates": [
                rate("worker_seconds", "Worker-seconds", "36000", per_unit("0.0016")),
                GPU_LIST,
                rate(
                    "tokens",
                    "LLM tokens",
                    "5000000",
                    tiers("Graduated", ("20000000", "0.0000015"), ("100000000", "0.0000012"), (None, "0.0000009")),
                ),
            ],
        },
        "scale": {
            **common,
            "code": "scale",
            "name": "Scale",
            "base_fee": "0",
            "commitment": "2000",
            "rates": [
                rate(
                    "worker_seconds",
                    "Worker-seconds",
                    "0",
                    tiers("Volume", ("500000", "0.0018"), ("2000000", "0.0015"), (None, "0.0012")),
                ),
                GPU_LIST,
                rate("tokens", "LLM tokens", "0", per_unit("0.0000014")),
            ],
        },
        "platform": {
            **common,
            "code": "platform",
            "name": "Platform",
            "base_fee": "499",
            "commitment": None,
            "rates": [
                rate("worker_seconds", "Worker-seconds", "20000", per_unit("0.0020")),
                GPU_LIST,
                rate("tokens", "LLM tokens", "1000000", per_unit("0.0000018")),
            ],
        },
    }


def test_versions_are_frozen() -> None:
    assert list(PRICING_VERSIONS) == ["v1_request", "v2_compute"]
    with pytest.raises(TypeError):
        PRICING_VERSIONS["v3"] = V2  # type: ignore[index]
    with pytest.raises(TypeError):
        V2.plans["starter"] = V2.plans["growth"]  # type: ignore[index]
    with pytest.raises(FrozenInstanceError):
        V2.plans["starter"].base_fee = D(0)  # type: ignore[misc]
    with pytest.raises(ValueError, match="differs from its code"):
        PricingVersion("v9", "x", {"a": V2.plans["starter"]})


# --- plans: worked examples ---------------------------------------------------------------------------

# 50,000 worker-seconds, 1,800 GPU-seconds, 30,000,000 tokens, 1,800,000 API requests
MONTH = {"worker_seconds": D(50000), "gpu_seconds": D(1800), "tokens": D(30000000), "api_requests": D(1800000)}

PLAN_CASES = [
    # v1, every plan: 1,800,000 × 0.0004 = 720.00, nothing else
    *[(V1, code, MONTH, [("usage", "api_requests", "720.00")], "720.00") for code in V1.plans],
    # starter: fee 49; (50,000 − 3,600) × 0.0020 = 92.80; 1,800 × 0.0180 = 32.40;
    # (30,000,000 − 250,000) × 0.0000018 = 53.55; total 227.75
    (
        V2,
        "starter",
        MONTH,
        [
            ("fee", None, "49.00"),
            ("usage", "worker_seconds", "92.80"),
            ("usage", "gpu_seconds", "32.40"),
            ("usage", "tokens", "53.55"),
        ],
        "227.75",
    ),
    # growth: fee 299; (50,000 − 36,000) × 0.0016 = 22.40; GPU 32.40; tokens 25M over:
    # 20M × 0.0000015 = 30.00 and 5M × 0.0000012 = 6.00; total 389.80
    (
        V2,
        "growth",
        MONTH,
        [
            ("fee", None, "299.00"),
            ("usage", "worker_seconds", "22.40"),
            ("usage", "gpu_seconds", "32.40"),
            ("usage", "tokens", "30.00"),
            ("usage", "tokens", "6.00"),
        ],
        "389.80",
    ),
    # scale, shortfall: 50,000 × 0.0018 (volume tier 1) = 90.00; GPU 32.40; 30M × 0.0000014 = 42.00;
    # usage 164.40 < 2,000 → commitment 1,835.60; total 2,000.00
    (
        V2,
        "scale",
        MONTH,
        [
            ("usage", "worker_seconds", "90.00"),
            ("usage", "gpu_seconds", "32.40"),
            ("usage", "tokens", "42.00"),
            ("commitment", None, "1835.60"),
        ],
        "2000.00",
    ),
    # scale, over the commitment: 1,000,000 s in volume tier 2 × 0.0015 = 1,500.00; 36,000 GPU-s × 0.0180
    # = 648.00; 100M × 0.0000014 = 140.00; usage 2,288.00 ≥ 2,000 → no commitment line
    (
        V2,
        "scale",
        {"worker_seconds": D(1000000), "gpu_seconds": D(36000), "tokens": D(100000000)},
        [("usage", "worker_seconds", "1500.00"), ("usage", "gpu_seconds", "648.00"), ("usage", "tokens", "140.00")],
        "2288.00",
    ),
    # platform: fee 499; (50,000 − 20,000) × 0.0020 = 60.00; GPU 32.40; 29M × 0.0000018 = 52.20; total 643.60
    (
        V2,
        "platform",
        MONTH,
        [
            ("fee", None, "499.00"),
            ("usage", "worker_seconds", "60.00"),
            ("usage", "gpu_seconds", "32.40"),
            ("usage", "tokens", "52.20"),
        ],
        "643.60",
    ),
    # no usage at all: a zero line per rated metric, so the allowances show
    (
        V2,
        "starter",
        {},
        [
            ("fee", None, "49.00"),
            ("usage", "worker_seconds", "0.00"),
            ("usage", "gpu_seconds", "0.00"),
            ("usage", "tokens", "0.00"),
        ],
        "49.00",
    ),
]


@pytest.mark.parametrize(("version", "plan", "usage", "expected", "total"), PLAN_CASES)
def test_plan_worked_example(
    version: PricingVersion, plan: str, usage: dict[str, Decimal], expected: list[tuple[Any, ...]], total: str
) -> None:
    lines = rate_plan(usage, version.plans[plan])
    assert amounts(lines) == [(kind, meter, D(amount)) for kind, meter, amount in expected]
    assert invoice_total(lines) == D(total)


def test_commitment_line_description() -> None:
    lines = rate_plan(MONTH, V2.plans["scale"])
    assert lines[-1].description == "Committed spend €2,000.00, used €164.40: shortfall"
    assert (lines[-1].quantity, lines[-1].unit_price) == (D(1), D("1835.60"))


SMALL = Plan(
    "small",
    "Small",
    "EUR",
    D(10),
    (MetricRate("api_requests", "API requests", D(0), PerUnit(D("0.01"))),),
    minimum_spend=D(25),
)


@pytest.mark.parametrize(
    ("requests", "expected"),
    [
        # fee 10.00 + 500 × 0.01 = 5.00 → 15.00 < 25 → minimum 10.00
        (500, [("fee", None, "10.00"), ("usage", "api_requests", "5.00"), ("minimum", None, "10.00")]),
        # 10.00 + 15.00 = 25.00: exactly the minimum, no line
        (1500, [("fee", None, "10.00"), ("usage", "api_requests", "15.00")]),
        (2000, [("fee", None, "10.00"), ("usage", "api_requests", "20.00")]),
    ],
)
def test_minimum_spend(requests: int, expected: list[tuple[Any, ...]]) -> None:
    lines = rate_plan({"api_requests": D(requests)}, SMALL)
    assert amounts(lines) == [(k, m, D(a)) for k, m, a in expected]
    assert invoice_total(lines) >= D(25)


def test_prorated_half_month_with_label() -> None:
    # growth × 0.5: fee 0.5 × 299 = 149.50; allowance 18,000 s → 2,000 × 0.0016 = 3.20; GPU 0;
    # tokens allowance 2,500,000 → 500,000 in tier 1 × 0.0000015 = 0.75; total 153.45
    usage = {"worker_seconds": D(20000), "tokens": D(3000000)}
    lines = rate_plan(usage, V2.plans["growth"], fraction=D("0.5"), label="Growth, Nov 16–30: ")
    assert amounts(lines) == [
        ("fee", None, D("149.50")),
        ("usage", "worker_seconds", D("3.20")),
        ("usage", "gpu_seconds", D("0.00")),
        ("usage", "tokens", D("0.75")),
    ]
    assert invoice_total(lines) == D("153.45")
    assert (lines[0].quantity, lines[0].unit_price) == (D("0.5"), D("299"))
    assert lines[0].description == "Growth, Nov 16–30: Growth base fee × 50% of the period"
    assert [line.included_quantity for line in lines[1:]] == [D(18000), D(0), D(2500000)]
    assert all(line.description.startswith("Growth, Nov 16–30: ") for line in lines)


def test_prorated_sixteen_thirtieths() -> None:
    fraction = D(16) / D(30)  # 0.5333333333333333333333333333
    plan = prorate(V2.plans["growth"], fraction)
    assert [r.included for r in plan.rates] == [D(19200), D(0), D("2666666.666667")]  # 6 decimals, half up
    lines = rate_plan({}, V2.plans["growth"], fraction=fraction)
    assert lines[0].amount == D("159.47")  # 299 × 16/30 = 159.4666…
    assert (lines[0].quantity, lines[0].description) == (fraction, "Growth base fee × 53.33% of the period")
    # scale × 16/30: commitment 1,066.67; no usage → the whole commitment is the shortfall
    assert amounts(rate_plan({}, V2.plans["scale"], fraction=fraction))[-1] == ("commitment", None, D("1066.67"))
    # scale × 0.5: commitment 1,000.00; 10,000 s × 0.0018 = 18.00 → shortfall 982.00
    assert amounts(rate_plan({"worker_seconds": D(10000)}, V2.plans["scale"], fraction=D("0.5")))[-1] == (
        "commitment",
        None,
        D("982.00"),
    )
    with pytest.raises(ValueError, match="fraction"):
        rate_plan({}, V2.plans["growth"], fraction=D("1.5"))


def test_rate_plan_refuses_floats_and_negative_usage() -> None:
    with pytest.raises(TypeError, match="Decimal"):
        rate_plan({"tokens": 1.5}, V2.plans["starter"])  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="negative"):
        rate_plan({"tokens": D(-1)}, V2.plans["starter"])


# --- quota -------------------------------------------------------------------------------------------


def test_quota_status() -> None:
    usage = {"worker_seconds": D(1800), "tokens": D(500000)}
    assert quota_status(usage, V2.plans["starter"]) == [
        QuotaStatus("worker_seconds", D(1800), D(3600), D("0.5000")),
        QuotaStatus("tokens", D(500000), D(250000), D("2.0000")),
    ]
    # scale: no allowances; spend 164.40 of 2,000 → 0.0822
    assert quota_status(MONTH, V2.plans["scale"]) == [QuotaStatus("commitment", D("164.40"), D(2000), D("0.0822"))]
    assert quota_status({}, V2.plans["scale"], spend=D(3000)) == [
        QuotaStatus("commitment", D(3000), D(2000), D("1.5000"))
    ]
    assert quota_status(MONTH, V1.plans["growth"]) == []


# --- transitions -------------------------------------------------------------------------------------


def fee_lines(*amounts_: str) -> list[Line]:
    return [Line("fee", None, "f", D(1), D(0), D(0), D(a), D(a), "EUR") for a in amounts_]


@pytest.mark.parametrize(
    ("previous", "new", "policy", "period", "expected"),
    [
        # cap: 100.00 × 1.10 = 110.00; new 150.00 → −40.00
        ("100.00", ["150.00"], TransitionPolicy("cap", until_period="2027-03"), "2027-01", [("transition", "-40.00")]),
        ("100.00", ["150.00"], TransitionPolicy("cap", until_period="2027-03"), "2027-03", [("transition", "-40.00")]),
        ("100.00", ["150.00"], TransitionPolicy("cap", until_period="2027-03"), "2027-04", []),  # cap ended
        ("100.00", ["105.00"], TransitionPolicy("cap"), "2027-01", []),  # within the cap
        ("100.00", ["110.00"], TransitionPolicy("cap"), "2027-01", []),  # exactly at the cap
        # cap 25 %: 33.33 × 1.25 = 41.6625 → 41.66; new 50.00 → −8.34
        ("33.33", ["50.00"], TransitionPolicy("cap", cap_ratio=D("0.25")), "2027-01", [("transition", "-8.34")]),
        ("100.00", ["150.00"], TransitionPolicy("credit", credit_amount=D(50)), "2027-01", [("credit", "-50.00")]),
        # never below zero: credit 200 on 150 → −150.00
        ("100.00", ["150.00"], TransitionPolicy("credit", credit_amount=D(200)), "2027-01", [("credit", "-150.00")]),
        ("100.00", ["0.00"], TransitionPolicy("credit", credit_amount=D(50)), "2027-01", []),
        ("0", ["20.00"], TransitionPolicy("credit", credit_amount=D(5), until_period="2026-12"), "2027-01", []),
    ],
)
def test_transition_lines(
    previous: str, new: list[str], policy: TransitionPolicy, period: str, expected: list[tuple[str, str]]
) -> None:
    new_lines = fee_lines(*new)
    extra = transition_lines(D(previous), new_lines, policy, period, "EUR")
    assert [(line.kind, line.amount) for line in extra] == [(k, D(a)) for k, a in expected]
    for line in extra:
        assert line.amount == line.quantity * line.unit_price
        assert invoice_total([*new_lines, *extra]) >= 0


def test_transition_cap_description_and_validation() -> None:
    (line,) = transition_lines(
        D(100), fee_lines("150.00"), TransitionPolicy("cap", until_period="2027-03"), "2027-01", "EUR"
    )
    assert line.description == "Transition cap until 2027-03: €150.00 capped at €110.00 (previous €100.00 + 10%)"
    with pytest.raises(ValueError, match="cap"):
        TransitionPolicy("discount")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="YYYY-MM"):
        transition_lines(D(1), [], TransitionPolicy("cap"), "2027-1", "EUR")
    with pytest.raises(ValueError, match="not all in USD"):
        transition_lines(D(1), fee_lines("1.00"), TransitionPolicy("cap"), "2027-01", "USD")


# --- shadow explanation -------------------------------------------------------------------------------


def test_explain_shadow() -> None:
    # 51,120 s = 14.2 worker-hours; 1,800 GPU-s = 0.5 GPU-hours
    usage = {"worker_seconds": D(51120), "gpu_seconds": D(1800), "tokens": D(320000), "api_requests": D(1800000)}
    v1 = rate_plan(usage, V1.plans["starter"])  # 1,800,000 × 0.0004 = 720.00
    # 49 + (51,120 − 3,600) × 0.0020 = 95.04 + 1,800 × 0.0180 = 32.40 + 70,000 × 0.0000018 = 0.126 → 0.13
    # = 176.57; difference −543.43 = −75.476 % → −75.5 %
    v2 = rate_plan(usage, V2.plans["starter"])
    text = explain_shadow("2026-11", usage, "v1_request", v1, "v2_compute", v2)
    assert text == (
        "Your 2026-11 usage was 14.2 worker-hours, 0.5 GPU-hours, 320,000 tokens and 1,800,000 API requests. "
        "Under v1_request you pay €720.00; under v2_compute you would pay €176.57 (€543.43 less, −75.5%). "
        "The difference comes mostly from api_requests (€720.00 under v1_request, not billed under v2_compute). "
        "Other differences: worker_seconds +€95.04, the base fee +€49.00, gpu_seconds +€32.40 and tokens +€0.13."
    )
    assert text == explain_shadow("2026-11", usage, "v1_request", v1, "v2_compute", v2)  # deterministic
    reverse = explain_shadow("2026-11", usage, "v2_compute", v2, "v1_request", v1)
    assert (
        "Under v2_compute you pay €176.57; under v1_request you would pay €720.00 (€543.43 more, +307.8%)." in reverse
    )
    same = explain_shadow("2026-11", {}, "v1_request", v1, "v1_request", v1)
    assert same.endswith("(the same). Every item costs the same under both versions.")


def test_explain_shadow_small_and_empty_usage() -> None:
    usage = {"worker_seconds": D(10), "api_requests": D(1)}
    v1, v2 = rate_plan(usage, V1.plans["starter"]), rate_plan(usage, V2.plans["starter"])
    text = explain_shadow("2026-11", usage, "v1_request", v1, "v2_compute", v2)
    # 1 × 0.0004 = 0.0004 → €0.00 under v1, so no percentage; €49.00 base fee under v2
    assert text.startswith("Your 2026-11 usage was less than 0.01 worker-hours and 1 API request. ")
    assert "(€49.00 more)" in text and "mostly from the base fee (not billed under v1_request" in text
    assert explain_shadow("2026-11", {}, "v1_request", v1, "v1_request", v1).startswith(
        "You had no billable usage in 2026-11."
    )
    with pytest.raises(ValueError, match="one currency"):
        explain_shadow("2026-11", {}, "a", [], "b", [])


def test_user_guide_example() -> None:
    """The example at the top of ``spanmeter.billing.rating``'s docstring."""
    usage = billable_quantities(
        {"worker_seconds": D("5000"), "input_tokens": D("200000"), "output_tokens": D("100000")}
    )
    lines = rate_plan(usage, PRICING_VERSIONS["v2_compute"].plans["starter"])
    assert [line.amount for line in lines] == [D("49.00"), D("2.80"), D("0.00"), D("0.09")]  # 50,000 × 0.0000018
    assert invoice_total(lines) == D("51.89")


def test_docstring_examples() -> None:
    import doctest

    from spanmeter.billing.rating import metrics, money

    for module in (money, metrics):
        assert doctest.testmod(module, raise_on_error=True).failed == 0


# --- properties ---------------------------------------------------------------------------------------

ALL_PLANS = [(v.code, code) for v in (V1, V2) for code in v.plans] + [("test", "small")]
seconds = st.integers(min_value=0, max_value=10**8).map(lambda n: D(n) / 10)  # 100 ms increments
token_counts = st.integers(min_value=0, max_value=10**11).map(D)
usages = st.fixed_dictionaries(
    {"worker_seconds": seconds, "gpu_seconds": seconds, "tokens": token_counts, "api_requests": token_counts}
)
fractions = st.sampled_from([D(1), D("0.5"), D(16) / D(30), D(1) / D(31), D(0)])


def plan_of(key: tuple[str, str]) -> Plan:
    return SMALL if key[0] == "test" else PRICING_VERSIONS[key[0]].plans[key[1]]


@FAST
@given(usage=usages, key=st.sampled_from(ALL_PLANS), fraction=fractions)
def test_lines_add_up_and_are_rounded(usage: dict[str, Decimal], key: tuple[str, str], fraction: Decimal) -> None:
    lines = rate_plan(usage, plan_of(key), fraction=fraction)
    total = invoice_total(lines)
    assert total == sum((line.amount for line in lines), D(0))
    assert total >= 0  # no credits → never negative
    for line in lines:
        assert line.amount.as_tuple().exponent == -2
        assert line.amount == round_money(line.quantity * line.unit_price, "EUR")
    again = rate_plan(dict(reversed(list(usage.items()))), plan_of(key), fraction=fraction)
    assert again == lines and [line.to_dict() for line in again] == [line.to_dict() for line in lines]


@FAST
@given(
    rows=st.lists(
        st.tuples(
            st.sampled_from(["worker_seconds", "gpu_seconds", "input_tokens", "output_tokens", "api_requests"]),
            st.integers(0, 10**9),
        ),
        max_size=30,
    ),
    seed=st.integers(0, 2**32),
    key=st.sampled_from(ALL_PLANS),
)
def test_rating_depends_only_on_totals(rows: list[tuple[str, int]], seed: int, key: tuple[str, str]) -> None:
    """Usage rows (a partition of each meter's total), summed in any order, rate like the totals."""
    quantities = [(meter, D(n) / 10 if meter.endswith("seconds") else D(n)) for meter, n in rows]
    shuffled = quantities[:]
    random.Random(seed).shuffle(shuffled)
    totals: dict[str, Decimal] = {}
    for meter, quantity in shuffled:
        totals[meter] = totals.get(meter, D(0)) + quantity
    direct = {m: sum((q for meter, q in quantities if meter == m), D(0)) for m in dict(quantities)}
    plan = plan_of(key)
    assert rate_plan(billable_quantities(totals), plan) == rate_plan(billable_quantities(direct), plan)


@FAST
@given(a=st.integers(0, 10**12), b=st.integers(0, 10**12), included=st.integers(0, 10**8))
def test_graduated_is_monotone(a: int, b: int, included: int) -> None:
    low, high = sorted((D(a), D(b)))
    for model in (GRADUATED_TOKENS, GRADUATED_FLAT):
        cost_low = invoice_total(model.lines("tokens", "t", low, D(included), "EUR"))
        cost_high = invoice_total(model.lines("tokens", "t", high, D(included), "EUR"))
        assert cost_low <= cost_high
