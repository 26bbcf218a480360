"""Pricing version ``v2_compute``: compute and tokens, not requests.

FROZEN: once an invoice has been produced under this version, never edit a number, a plan or a
description here; add ``v3_…`` (a new module, registered in ``versions/__init__.py``) instead.
``tests/test_rating.py`` pins every value below, so an edit fails the tests.

List rates: worker-second €0.0020, GPU-second €0.0180, €1.80 per million tokens (€0.0000018 per token,
input and output alike). API requests are not billed under v2 (no line). GPU-seconds are at list price
with no allowance in every plan. All prices in EUR, per calendar month.

| plan     | base fee | worker-seconds                              | tokens                                                            |
|----------|----------|---------------------------------------------|-------------------------------------------------------------------|
| starter  | €49      | 3,600 included, then €0.0020                | 250,000 included, then €0.0000018                                 |
| growth   | €299     | 36,000 included, then €0.0016               | 5,000,000 included, then graduated: first 20M €0.0000015, to 100M €0.0000012, above €0.0000009 |
| scale    | —        | volume: ≤500,000 €0.0018, ≤2,000,000 €0.0015, above €0.0012 | €0.0000014                                        |
| platform | €499     | 20,000 included, then €0.0020               | 1,000,000 included, then €0.0000018                               |

Scale commits to €2,000 of usage a month: usage charges draw the commitment down; a shortfall is billed
as a "commitment" line, usage beyond it is billed as usual.
"""

from __future__ import annotations

from decimal import Decimal

from ..plans import MetricRate, Plan, PricingVersion
from ..prices import Graduated, PerUnit, Tier, Volume

__all__ = ["V2_COMPUTE"]

WORKER_SECOND_LIST = Decimal("0.0020")
GPU_SECOND_LIST = Decimal("0.0180")
TOKEN_LIST = Decimal("0.0000018")

WORKER = "Worker-seconds"
GPU = "GPU-seconds"
TOKENS = "LLM tokens"


def _gpu() -> MetricRate:
    return MetricRate("gpu_seconds", GPU, Decimal(0), PerUnit(GPU_SECOND_LIST))


STARTER = Plan(
    code="starter",
    name="Starter",
    currency="EUR",
    base_fee=Decimal("49"),
    rates=(
        MetricRate("worker_seconds", WORKER, Decimal("3600"), PerUnit(WORKER_SECOND_LIST)),
        _gpu(),
        MetricRate("tokens", TOKENS, Decimal("250000"), PerUnit(TOKEN_LIST)),
    ),
)
GROWTH = Plan(
    code="growth",
    name="Growth",
    currency="EUR",
    base_fee=Decimal("299"),
    rates=(
        MetricRate("worker_seconds", WORKER, Decimal("36000"), PerUnit(Decimal("0.0016"))),
        _gpu(),
        MetricRate(
            "tokens",
            TOKENS,
            Decimal("5000000"),
            Graduated(
                (
                    Tier(Decimal("20000000"), Decimal("0.0000015")),
                    Tier(Decimal("100000000"), Decimal("0.0000012")),
                    Tier(None, Decimal("0.0000009")),
                )
            ),
        ),
    ),
)
SCALE = Plan(
    code="scale",
    name="Scale",
    currency="EUR",
    base_fee=Decimal(0),
    commitment=Decimal("2000"),
    rates=(
        MetricRate(
            "worker_seconds",
            WORKER,
            Decimal(0),
            Volume(
                (
                    Tier(Decimal("500000"), Decimal("0.0018")),
                    Tier(Decimal("2000000"), Decimal("0.0015")),
                    Tier(None, Decimal("0.0012")),
                )
            ),
        ),
        _gpu(),
        MetricRate("tokens", TOKENS, Decimal(0), PerUnit(Decimal("0.0000014"))),
    ),
)
PLATFORM = Plan(
    code="platform",
    name="Platform",
    currency="EUR",
    base_fee=Decimal("499"),
    rates=(
        MetricRate("worker_seconds", WORKER, Decimal("20000"), PerUnit(WORKER_SECOND_LIST)),
        _gpu(),
        MetricRate("tokens", TOKENS, Decimal("1000000"), PerUnit(TOKEN_LIST)),
    ),
)

V2_COMPUTE = PricingVersion(
    code="v2_compute",
    description="Compute and tokens: worker-seconds, GPU-seconds and LLM tokens; API requests free",
    plans={plan.code: plan for plan in (STARTER, GROWTH, SCALE, PLATFORM)},
)
