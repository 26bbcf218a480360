"""How much of a plan's allowances (and commitment) a customer has used: for dashboards and alerts."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

from .money import exact_sum, require_decimal
from .plans import Plan, prorate
from .rate import rate_plan

__all__ = ["QuotaStatus", "quota_status"]

RATIO_QUANTUM = Decimal("0.0001")  # ratios are rounded half-up to 0.01 %


@dataclass(frozen=True, slots=True)
class QuotaStatus:
    metric: str  # a billable metric code, or "commitment" (money)
    used: Decimal
    included: Decimal
    ratio: Decimal | None  # used / included, 4 decimals; None when included is 0


def _ratio(used: Decimal, included: Decimal) -> Decimal | None:
    return None if included == 0 else (used / included).quantize(RATIO_QUANTUM, rounding=ROUND_HALF_UP)


def quota_status(
    usage: Mapping[str, Decimal], plan: Plan, *, fraction: Decimal = Decimal(1), spend: Decimal | None = None
) -> list[QuotaStatus]:
    """One status per rated metric with an allowance (plan order), then ``commitment`` for a commitment plan.

    The commitment's ``used`` is the usage charges so far: ``spend`` if given (the rated usage amount),
    else the usage lines of ``rate_plan(usage, plan, fraction=fraction)``.
    """
    period_plan = prorate(plan, fraction)
    statuses = [
        QuotaStatus(rate.metric, used, rate.included, _ratio(used, rate.included))
        for rate in period_plan.rates
        if rate.included > 0
        for used in [require_decimal(usage.get(rate.metric, Decimal(0)), f"usage of {rate.metric}")]
    ]
    if period_plan.commitment is not None:
        if spend is None:
            lines = rate_plan(usage, plan, fraction=fraction)
            spend = exact_sum(line.amount for line in lines if line.kind == "usage")
        require_decimal(spend, "spend")
        statuses.append(QuotaStatus("commitment", spend, period_plan.commitment, _ratio(spend, period_plan.commitment)))
    return statuses
