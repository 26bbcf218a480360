"""Pricing version ``v1_request``: €0.0004 per API request, nothing else billed.

FROZEN: this version has billed customers. Never edit a number, a plan or a description here; add
``v3_…`` (a new module, registered in ``versions/__init__.py``) instead. ``tests/test_rating.py``
pins every value below, so an edit fails the tests.

The four plan codes exist so that every subscription has a plan under every version, but under v1 they
are priced identically: no base fee, no allowance, no commitment; API requests at €0.0004 each; worker
time, GPU time and tokens are not billed (no line).
"""

from __future__ import annotations

from decimal import Decimal

from ..plans import MetricRate, Plan, PricingVersion
from ..prices import PerUnit

__all__ = ["V1_REQUEST"]

API_REQUEST_PRICE = Decimal("0.0004")


def _plan(code: str, name: str) -> Plan:
    return Plan(
        code=code,
        name=name,
        currency="EUR",
        base_fee=Decimal(0),
        rates=(MetricRate("api_requests", "API requests", Decimal(0), PerUnit(API_REQUEST_PRICE)),),
    )


V1_REQUEST = PricingVersion(
    code="v1_request",
    description="Per API request: €0.0004 per request, nothing else billed",
    plans={
        plan.code: plan
        for plan in (
            _plan("starter", "Starter"),
            _plan("growth", "Growth"),
            _plan("scale", "Scale"),
            _plan("platform", "Platform"),
        )
    },
)
