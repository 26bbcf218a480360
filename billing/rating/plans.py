"""Plans and pricing versions: frozen values, validated when built."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from decimal import ROUND_HALF_UP, Decimal
from types import MappingProxyType
from typing import Literal

from .metrics import BILLABLE_METRICS
from .money import currency_decimals, exact_mul, require_decimal, round_money
from .prices.base import PriceModel

__all__ = ["ALLOWANCE_DECIMALS", "BookPrice", "MetricRate", "Plan", "PricingVersion", "prorate", "validate_fraction"]

# Prorated allowances are rounded half-up to this many decimals (36,000 s × 16/30 is 19,200, not
# 19,199.99999999999999999999999880). Usage quantities themselves are never rounded.
ALLOWANCE_DECIMALS = 6


@dataclass(frozen=True, slots=True)
class BookPrice:
    """A metric priced per model (``tokens``) or per GPU model (``gpus``) from the pricing version's price book,
    at the book version in force when the usage occurred (:mod:`spanmeter.billing.pricebook`)."""

    section: Literal["tokens", "gpus"]

    @property
    def metric(self) -> str:
        return "tokens" if self.section == "tokens" else "gpu_seconds"


@dataclass(frozen=True, slots=True)
class MetricRate:
    metric: str  # a BILLABLE_METRICS code
    description: str  # shown on the invoice, e.g. "Worker-seconds"
    included: Decimal  # units free each full period
    price: PriceModel | BookPrice  # prices the units beyond `included`

    def __post_init__(self) -> None:
        if self.metric not in BILLABLE_METRICS:
            raise ValueError(f"unknown billable metric {self.metric!r}; known: {', '.join(BILLABLE_METRICS)}")
        if require_decimal(self.included, "included") < 0:
            raise ValueError(f"included must not be negative, got {self.included}")
        if isinstance(self.price, BookPrice) and self.price.metric != self.metric:
            raise ValueError(f"book: {self.price.section} prices {self.price.metric}, not {self.metric}")


@dataclass(frozen=True, slots=True)
class Plan:
    code: str
    name: str
    currency: str
    base_fee: Decimal  # per full period; a "fee" line only when non-zero
    rates: tuple[MetricRate, ...]
    minimum_spend: Decimal | None = None  # usage + fees (+ commitment top-up) below this → a "minimum" line
    commitment: Decimal | None = None  # committed usage spend per period, drawn down by usage lines

    def __post_init__(self) -> None:
        currency_decimals(self.currency)  # ValueError on an unknown currency
        if require_decimal(self.base_fee, "base_fee") < 0:
            raise ValueError(f"base_fee must not be negative, got {self.base_fee}")
        if not isinstance(self.rates, tuple):
            raise TypeError("rates must be a tuple of MetricRate")
        metrics = [rate.metric for rate in self.rates]
        if len(set(metrics)) != len(metrics):
            raise ValueError(f"plan {self.code!r} rates a metric twice: {metrics}")
        for name in ("minimum_spend", "commitment"):
            value = getattr(self, name)
            if value is not None and require_decimal(value, name) < 0:
                raise ValueError(f"{name} must not be negative, got {value}")
            if value is not None and round_money(value, self.currency) != value:
                raise ValueError(f"{name} must be a whole number of {self.currency} minor units, got {value}")

    def rate_for(self, metric: str) -> MetricRate | None:
        return next((rate for rate in self.rates if rate.metric == metric), None)


def validate_fraction(fraction: Decimal) -> Decimal:
    if not 0 <= require_decimal(fraction, "fraction") <= 1:
        raise ValueError(f"fraction must be between 0 and 1, got {fraction}")
    return fraction


def _prorate_allowance(included: Decimal, fraction: Decimal) -> Decimal:
    exact = exact_mul(included, fraction)
    return exact.quantize(Decimal(1).scaleb(-ALLOWANCE_DECIMALS), rounding=ROUND_HALF_UP).normalize()


def prorate(plan: Plan, fraction: Decimal) -> Plan:
    """``plan`` for ``fraction`` of a period (a mid-period start or change).

    Base fee: exact product (it is rounded once, as a line). Allowances: rounded half-up to 6 decimals.
    Commitment and minimum spend: rounded to the minor unit (they are thresholds shown in money).
    ``rate_plan(usage, plan, fraction=f)`` uses this, and shows the fee as ``f × base_fee``.
    """
    if validate_fraction(fraction) == 1:
        return plan
    return replace(
        plan,
        base_fee=exact_mul(plan.base_fee, fraction),
        rates=tuple(replace(rate, included=_prorate_allowance(rate.included, fraction)) for rate in plan.rates),
        minimum_spend=None
        if plan.minimum_spend is None
        else round_money(exact_mul(plan.minimum_spend, fraction), plan.currency),
        commitment=None
        if plan.commitment is None
        else round_money(exact_mul(plan.commitment, fraction), plan.currency),
    )


@dataclass(frozen=True, slots=True)
class PricingVersion:
    """A price list. FROZEN once it has billed anyone: add a new version instead of editing one."""

    code: str
    description: str
    plans: Mapping[str, Plan]
    price_book: str | None = None  # the book that prices its BookPrice rates

    @property
    def uses_book(self) -> bool:
        return any(isinstance(rate.price, BookPrice) for plan in self.plans.values() for rate in plan.rates)

    def __post_init__(self) -> None:
        if self.uses_book and not self.price_book:
            raise ValueError(f"{self.code}: a plan prices a metric from a book (book: …), so name price_book")
        plans = MappingProxyType(dict(self.plans))
        for key, plan in plans.items():
            if key != plan.code:
                raise ValueError(f"{self.code}: plan key {key!r} differs from its code {plan.code!r}")
        object.__setattr__(self, "plans", plans)
