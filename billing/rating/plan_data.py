"""Pricing versions as data: plans (fees, allowances, tiers, commitments, minimums) in a file, not in code.

``spanmeter prices import plans.yaml`` stores a pricing version in the ledger; subscriptions name it like the
built-in ``v1_request`` and ``v2_compute`` (which this format expresses exactly: ``examples/pricing/`` holds
both, and a test proves they load equal to the frozen Python definitions). An example,
``demo/pricing/v3_models.yaml``::

    pricing_version: v3_models
    description: Per model and per GPU model, from the docpipe price book
    price_book: docpipe                 # prices the rates written `book: tokens` / `book: gpus`
    plans:
      - code: growth
        name: Growth
        currency: EUR                   # the book's currency must match: an invoice never converts
        base_fee: "299"
        commitment: "2000"              # optional; minimum_spend too
        rates:
          - {metric: worker_seconds, description: Worker-seconds, included: "36000", per_unit: "0.0016"}
          - {metric: gpu_seconds, description: GPU-seconds, book: gpus}
          - {metric: tokens, description: LLM tokens, included: "5000000", book: tokens}
          - metric: api_requests
            description: API requests
            graduated:                  # or volume: (same tiers), package: {size: "1000", price: "0.50"}
              - {up_to: "100000", unit_price: "0"}
              - {up_to: null, unit_price: "0.0001", flat_price: "0"}

Every amount is a decimal string; a pricing version is frozen once imported (the same document again is a
no-op; a different one under the same code is refused: import it under a new code).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from .metrics import BILLABLE_METRICS
from .money import exact_decimal
from .plans import BookPrice, MetricRate, Plan, PricingVersion
from .prices import Graduated, Package, PerUnit, PriceModel, Tier, Volume

__all__ = ["PricingDataError", "parse_pricing_version", "pricing_document"]

_CODE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_PRICES = ("per_unit", "graduated", "volume", "package", "book")


class PricingDataError(ValueError):
    pass


def _unknown(mapping: Mapping[Any, Any], known: set[str], where: str) -> list[str]:
    """The keys of ``mapping`` not in ``known``, sorted; a key that is not a string is refused, named."""
    odd = [key for key in mapping if not isinstance(key, str)]
    if odd:
        raise PricingDataError(f"{where}: keys are names (strings), got {odd[0]!r}")
    return sorted(set(mapping) - known)


def _decimal(value: Any, where: str) -> Decimal:
    try:
        return exact_decimal(value)
    except ValueError as exc:
        raise PricingDataError(f"{where}: {exc}") from None


def _tiers(value: Any, where: str) -> tuple[Tier, ...]:
    if not isinstance(value, list) or not value:
        raise PricingDataError(f"{where}: a list of tiers {{up_to, unit_price, flat_price}}, the last with up_to: null")
    tiers = []
    for i, raw in enumerate(value):
        at = f"{where}[{i}]"
        if not isinstance(raw, Mapping) or set(raw) - {"up_to", "unit_price", "flat_price"} or "unit_price" not in raw:
            raise PricingDataError(f"{at}: a mapping with up_to, unit_price and optionally flat_price")
        up_to = raw.get("up_to")
        tiers.append(
            Tier(
                None if up_to is None else _decimal(up_to, f"{at}.up_to"),
                _decimal(raw["unit_price"], f"{at}.unit_price"),
                _decimal(raw.get("flat_price", "0"), f"{at}.flat_price"),
            )
        )
    return tuple(tiers)


def _price(raw: Mapping[str, Any], where: str) -> PriceModel | BookPrice:
    given = [key for key in _PRICES if key in raw]
    if len(given) != 1:
        raise PricingDataError(f"{where}: name exactly one price: {', '.join(_PRICES)}")
    key = given[0]
    value = raw[key]
    if key == "per_unit":
        return PerUnit(_decimal(value, f"{where}.per_unit"))
    if key == "package":
        if not isinstance(value, Mapping) or set(value) != {"size", "price"}:
            raise PricingDataError(f"{where}.package: {{size, price}}")
        return Package(
            _decimal(value["size"], f"{where}.package.size"), _decimal(value["price"], f"{where}.package.price")
        )
    if key == "book":
        if value not in ("tokens", "gpus"):
            raise PricingDataError(f"{where}.book: tokens (per model) or gpus (per GPU model), got {value!r}")
        return BookPrice(value)
    tiers = _tiers(value, f"{where}.{key}")
    return Graduated(tiers) if key == "graduated" else Volume(tiers)


def _rate(raw: Any, where: str) -> MetricRate:
    if not isinstance(raw, Mapping):
        raise PricingDataError(f"{where}: a mapping with metric, description, included and one price")
    unknown = _unknown(raw, {"metric", "description", "included", *_PRICES}, where)
    if unknown:
        raise PricingDataError(f"{where}: unknown key(s) {', '.join(unknown)}")
    metric = raw.get("metric")
    if not isinstance(metric, str) or metric not in BILLABLE_METRICS:
        raise PricingDataError(f"{where}.metric: one of {', '.join(BILLABLE_METRICS)}, got {metric!r}")
    return MetricRate(
        metric,
        str(raw.get("description") or BILLABLE_METRICS[metric].description),
        _decimal(raw.get("included", "0"), f"{where}.included"),
        _price(raw, where),
    )


def _plan(raw: Any, where: str) -> Plan:
    if not isinstance(raw, Mapping):
        raise PricingDataError(f"{where}: a mapping with code, name, currency, base_fee and rates")
    unknown = _unknown(raw, {"code", "name", "currency", "base_fee", "rates", "commitment", "minimum_spend"}, where)
    if unknown:
        raise PricingDataError(f"{where}: unknown key(s) {', '.join(unknown)}")
    code = raw.get("code")
    if not isinstance(code, str) or not _CODE.match(code):
        raise PricingDataError(f"{where}.code: lower-case letters, digits, - and _, got {code!r}")
    rates = raw.get("rates")
    if not isinstance(rates, list):
        raise PricingDataError(f"{where}.rates: a list of rates")
    optional = {
        name: _decimal(raw[name], f"{where}.{name}")
        for name in ("commitment", "minimum_spend")
        if raw.get(name) is not None
    }
    return Plan(
        code=code,
        name=str(raw.get("name") or code),
        currency=str(raw.get("currency", "")),
        base_fee=_decimal(raw.get("base_fee", "0"), f"{where}.base_fee"),
        rates=tuple(_rate(rate, f"{where}.rates[{i}]") for i, rate in enumerate(rates)),
        **optional,
    )


def parse_pricing_version(data: Any) -> PricingVersion:
    """A :class:`PricingVersion` from a loaded file; :class:`PricingDataError` naming the field otherwise."""
    if not isinstance(data, Mapping):
        raise PricingDataError("a pricing version is a mapping with pricing_version, description and plans")
    unknown = _unknown(data, {"pricing_version", "description", "price_book", "plans"}, "the pricing version")
    if unknown:
        raise PricingDataError(f"unknown top-level key(s) {', '.join(unknown)}")
    code = data.get("pricing_version")
    if not isinstance(code, str) or not _CODE.match(code):
        raise PricingDataError(f"pricing_version: a code such as v3_models, got {code!r}")
    plans = data.get("plans")
    if not isinstance(plans, list) or not plans:
        raise PricingDataError("plans: a list of at least one plan")
    try:
        parsed = [_plan(plan, f"plans[{i}]") for i, plan in enumerate(plans)]
        codes = [plan.code for plan in parsed]
        if len(set(codes)) != len(codes):
            raise PricingDataError(f"plans: a plan code appears twice: {codes}")
        return PricingVersion(
            code=code,
            description=str(data.get("description", "")),
            plans={plan.code: plan for plan in parsed},
            price_book=data.get("price_book"),
        )
    except (ValueError, TypeError) as exc:
        if isinstance(exc, PricingDataError):
            raise
        raise PricingDataError(f"{code}: {exc}") from None


def _text(value: Decimal) -> str:
    return format(value, "f")


def _tiers_document(tiers: tuple[Tier, ...]) -> list[dict[str, str | None]]:
    return [
        {
            "up_to": None if t.up_to is None else _text(t.up_to),
            "unit_price": _text(t.unit_price),
            "flat_price": _text(t.flat_price),
        }
        for t in tiers
    ]


def _price_document(price: PriceModel | BookPrice) -> dict[str, Any]:
    if isinstance(price, BookPrice):
        return {"book": price.section}
    if isinstance(price, PerUnit):
        return {"per_unit": _text(price.unit_price)}
    if isinstance(price, Package):
        return {"package": {"size": _text(price.package_size), "price": _text(price.package_price)}}
    if isinstance(price, Graduated):
        return {"graduated": _tiers_document(price.tiers)}
    if isinstance(price, Volume):
        return {"volume": _tiers_document(price.tiers)}
    raise TypeError(f"no data form for {type(price).__name__}")


def pricing_document(version: PricingVersion) -> dict[str, Any]:
    """The canonical data form of ``version``; ``parse_pricing_version(pricing_document(v)) == v``."""
    return {
        "pricing_version": version.code,
        "description": version.description,
        **({"price_book": version.price_book} if version.price_book else {}),
        "plans": [
            {
                "code": plan.code,
                "name": plan.name,
                "currency": plan.currency,
                "base_fee": _text(plan.base_fee),
                **({"commitment": _text(plan.commitment)} if plan.commitment is not None else {}),
                **({"minimum_spend": _text(plan.minimum_spend)} if plan.minimum_spend is not None else {}),
                "rates": [
                    {
                        "metric": r.metric,
                        "description": r.description,
                        "included": _text(r.included),
                        **_price_document(r.price),
                    }
                    for r in plan.rates
                ],
            }
            for plan in version.plans.values()
        ],
    }
