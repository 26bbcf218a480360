"""Billable metrics: what a price applies to, summed from one or more meters.

A meter (``collector/processors/meters.py``) is what the collector counts; a billable metric is what a
plan prices. ``tokens`` prices input and output tokens together; the others are one meter each.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from types import MappingProxyType

from .money import exact_sum, require_decimal

__all__ = ["BILLABLE_METRICS", "BillableMetric", "billable_quantities"]


@dataclass(frozen=True, slots=True)
class BillableMetric:
    code: str
    meters: tuple[str, ...]  # meter codes summed into this metric
    unit: str  # UCUM, as the meters write it
    description: str


BILLABLE_METRICS: Mapping[str, BillableMetric] = MappingProxyType(
    {
        m.code: m
        for m in (
            BillableMetric("worker_seconds", ("worker_seconds",), "s", "Worker-seconds"),
            BillableMetric("gpu_seconds", ("gpu_seconds",), "s", "GPU-seconds"),
            BillableMetric("tokens", ("input_tokens", "output_tokens"), "{token}", "LLM tokens (input + output)"),
            BillableMetric("api_requests", ("api_requests",), "{request}", "API requests"),
        )
    }
)
_METRIC_OF_METER: Mapping[str, str] = MappingProxyType(
    {meter: metric.code for metric in BILLABLE_METRICS.values() for meter in metric.meters}
)


def billable_quantities(meter_totals: Mapping[str, Decimal]) -> dict[str, Decimal]:
    """Meter totals (keyed by meter code) summed into billable metrics, every metric present.

    Missing meters count as 0. A meter code no metric knows raises ``ValueError`` (a typo must not
    silently drop usage); so does a negative total.

    >>> billable_quantities({"input_tokens": Decimal(700), "output_tokens": Decimal(300)})["tokens"]
    Decimal('1000')
    """
    unknown = sorted(set(meter_totals) - set(_METRIC_OF_METER))
    if unknown:
        raise ValueError(f"unknown meter codes: {', '.join(unknown)}")
    for meter, total in meter_totals.items():
        if require_decimal(total, f"meter total {meter}") < 0:
            raise ValueError(f"meter total {meter} is negative: {total}")
    return {
        code: exact_sum(meter_totals.get(meter, Decimal(0)) for meter in metric.meters)
        for code, metric in BILLABLE_METRICS.items()
    }
