"""Rating: usage totals and a plan → invoice lines. Pure: no database, no clock, no I/O.

The ledger layer (``billing/rollups.py``, ``billing/invoices/``) reads usage and stores lines; this
package only does the arithmetic, so every rule here is tested without a database::

    from decimal import Decimal
    from spanmeter.billing.rating import PRICING_VERSIONS, billable_quantities, invoice_total, rate_plan

    usage = billable_quantities({"worker_seconds": Decimal("5000"), "input_tokens": Decimal("200000"),
                                 "output_tokens": Decimal("100000")})
    lines = rate_plan(usage, PRICING_VERSIONS["v2_compute"].plans["starter"])
    # fee €49.00; worker-seconds 1,400 × €0.0020 = €2.80; GPU-seconds €0.00;
    # tokens 50,000 × €0.0000018 = €0.09; invoice_total(lines) == Decimal("51.89")

Billable metrics
----------------
Plans price *billable metrics*, summed from meters by ``billable_quantities``: ``worker_seconds`` (s),
``gpu_seconds`` (s), ``tokens`` (input + output tokens) and ``api_requests``.

Minimum billable increment, failed attempts, retries
----------------------------------------------------
Rating never rounds a usage quantity: the meters already applied the minimum billable increment (worker
and GPU time rounded up to 100 ms per span, 1 token, 1 request). Failed attempts and Celery retries bill
by the meter policy: each attempt is its own span and its own usage row, with ``"status": "error"`` in the
row's metadata. Rating sees only totals and treats them like any usage.

Price models (``prices/``, one module each)
-------------------------------------------
Each prices the *overage* ``max(used - included, 0)``; every line reads ``quantity × unit_price = amount``.

- ``PerUnit(unit_price)``: 5,000 s used, 3,600 included, €0.0020/s → 1,400 × €0.0020 = €2.80.
- ``Package(package_size, package_price)``: whole packages rounded up; the line's quantity is the number
  of packages. 2,150,000 tokens over, packages of 1,000,000 at €1.50 → 3 × €1.50 = €4.50.
- ``Graduated(tiers)``: each tier's units at its price, one line per tier with units. Tiers ≤20M at
  €0.0000015, ≤100M at €0.0000012, above at €0.0000009; 25M over → 20M × €0.0000015 = €30.00 and
  5M × €0.0000012 = €6.00.
- ``Volume(tiers)``: all overage units at the price of the tier the overage falls in. ≤500,000 s at
  €0.0018, ≤2,000,000 at €0.0015; 600,000 s → 600,000 × €0.0015 = €900.00.

``Tier(up_to, unit_price, flat_price=0)``: a quantity exactly equal to ``up_to`` is in that tier; tiers
count overage units; the last tier has ``up_to=None``. A tier's flat price is its own line (quantity 1),
charged when the tier applies to a non-zero overage. Every rated metric gets at least one line, also at
zero usage, so the allowance shows on the invoice.

Plans
-----
``rate_plan(usage, plan, fraction=1, label="")``: the base fee ("fee", quantity = fraction), the usage
lines in plan order, then a "commitment" line if usage charges fall short of the commitment (Scale:
€2,000 committed, €1,234.56 used → €765.44 shortfall; usage beyond it is billed as usual), then a
"minimum" line if fees + usage + commitment fall short of ``minimum_spend``. ``fraction`` prorates base
fee, allowances, commitment and minimum for part of a period.

Rounding policy
---------------
1. Quantity × unit price is computed exactly (a 200-digit context that raises on any inexact result).
2. Each LINE amount is rounded once, to the currency's minor unit (EUR, USD, GBP: 2 decimals; JPY: 0),
   half away from zero (``ROUND_HALF_UP``: €0.005 → €0.01, −€0.005 → −€0.01). ``round_money`` is the rule.
3. The invoice total is the exact sum of the rounded line amounts (``invoice_total``); never re-rounded,
   so the lines always add up to the total.
4. Unit prices are never rounded. Usage quantities are never rounded by rating.
5. Prorated amounts: the base fee is one line (fraction × fee, rounded once); the prorated commitment and
   minimum spend are rounded to the minor unit; prorated allowances are rounded half-up to 6 decimals.
6. An unknown currency raises ``ValueError``; a float anywhere raises ``TypeError``.

Pricing versions (``versions/``, one module each)
-------------------------------------------------
``PRICING_VERSIONS``: ``v1_request`` (€0.0004 per API request, nothing else) and ``v2_compute`` (worker-
seconds, GPU-seconds, tokens; plans starter, growth, scale, platform). A version that has billed anyone
is FROZEN: never edit it. To change prices, add ``versions/v3_<name>.py`` defining a new
``PricingVersion``, register it in ``versions/__init__.py``, pin its numbers in ``tests/test_rating.py``,
and point subscriptions at it; invoices record the version that produced them.

Shadow rating and transitions
-----------------------------
``explain_shadow`` tells a customer, in plain English, what the same usage costs under another version.
``transition_lines`` softens a move: ``TransitionPolicy("cap", cap_ratio=Decimal("0.10"),
until_period="2027-03")`` caps the increase at 10 % until March 2027; ``TransitionPolicy("credit",
credit_amount=Decimal("50"))`` credits €50 once (never below a zero total). ``quota_status`` reports
allowance and commitment use.
"""

from .lines import LINE_KINDS, Line, invoice_total
from .metrics import BILLABLE_METRICS, BillableMetric, billable_quantities
from .money import CURRENCY_DECIMALS, format_money, round_money
from .plans import MetricRate, Plan, PricingVersion, prorate
from .prices import Graduated, Package, PerUnit, PriceModel, Tier, Volume
from .quota import QuotaStatus, quota_status
from .rate import rate_plan
from .shadow import explain_shadow
from .transition import TransitionPolicy, transition_lines
from .versions import PRICING_VERSIONS

__all__ = [
    "BILLABLE_METRICS",
    "CURRENCY_DECIMALS",
    "LINE_KINDS",
    "PRICING_VERSIONS",
    "BillableMetric",
    "Graduated",
    "Line",
    "MetricRate",
    "Package",
    "PerUnit",
    "Plan",
    "PriceModel",
    "PricingVersion",
    "QuotaStatus",
    "Tier",
    "TransitionPolicy",
    "Volume",
    "billable_quantities",
    "explain_shadow",
    "format_money",
    "invoice_total",
    "prorate",
    "quota_status",
    "rate_plan",
    "round_money",
    "transition_lines",
]
