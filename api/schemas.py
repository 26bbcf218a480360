"""The API's response documents (pydantic models: the OpenAPI 3.1 schema at ``/openapi.json`` comes from them).

Every amount is a :class:`Money`: a decimal string and its currency, never a float. Quantities are decimal
strings. Times are RFC 3339 in UTC (``2026-12-04T10:00:00Z``). Every document carries ``as_of``: when it was
read.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

__all__ = [
    "Driver",
    "DriverReport",
    "Entitlement",
    "Entitlements",
    "Error",
    "Invoice",
    "InvoiceList",
    "InvoiceSummary",
    "MeterToDate",
    "Money",
    "MonthToDate",
    "Series",
    "SeriesPoint",
    "Usage",
]

DECIMAL = r"^-?[0-9]+(\.[0-9]+)?$"
RFC3339 = "RFC 3339 time in UTC"


class Error(BaseModel):
    detail: str


class Money(BaseModel):
    amount: str = Field(pattern=DECIMAL, description="decimal string, the currency's minor unit")
    currency: str = Field(pattern=r"^[A-Z]{3}$", description="ISO 4217 code")


class MeterToDate(BaseModel):
    meter: str = Field(description="billable metric: worker_seconds, gpu_seconds, tokens or api_requests")
    unit: str
    quantity: str = Field(pattern=DECIMAL, description="the month's usage so far (what the invoice bills)")
    included: str = Field(pattern=DECIMAL, description="the current plan's allowance this month (prorated)")
    remaining: str = Field(pattern=DECIMAL, description="allowance left, never below 0 (the current plan's usage)")
    overage: str = Field(pattern=DECIMAL, description="the current plan's usage past its allowance (billed)")


class MonthToDate(BaseModel):
    account_id: str
    period: str = Field(pattern=r"^[0-9]{4}-[0-9]{2}$")
    as_of: str = Field(description=RFC3339)
    plan_code: str
    pricing_version: str
    currency: str
    in_force: bool = Field(description="false when the subscription ended earlier this month")
    meters: list[MeterToDate]
    invoice_so_far: Money
    projected_total: Money = Field(description="linear estimate for the whole month")


class SeriesPoint(BaseModel):
    start: str = Field(description=RFC3339 + ": the bucket's start")
    quantity: str = Field(pattern=DECIMAL)
    events: int


class Series(BaseModel):
    meter: str
    unit: str
    points: list[SeriesPoint]


class Usage(BaseModel):
    account_id: str
    from_: str = Field(alias="from", description=RFC3339)
    to: str = Field(description=RFC3339 + " (exclusive)")
    granularity: str
    as_of: str
    series: list[Series]

    model_config = {"populate_by_name": True}


class Driver(BaseModel):
    key: str = Field(description="the job id, model, service or Celery task ('' when the rows carry none)")
    amount: Money
    share: str = Field(pattern=DECIMAL, description="of the invoice total, 4 decimals")
    quantities: dict[str, str]


class DriverReport(BaseModel):
    account_id: str
    period: str
    by: str
    as_of: str
    invoice_number: str
    status: str
    total: Money
    unattributed: Money = Field(description="fees, commitments, minimums and late-usage adjustments")
    drivers: list[Driver]


class InvoiceSummary(BaseModel):
    invoice_number: str
    period: str
    status: str = Field(description="draft or finalized")
    total: Money


class InvoiceList(BaseModel):
    account_id: str
    as_of: str
    invoices: list[InvoiceSummary]
    next_cursor: str | None = Field(description="pass as ?cursor= for the next page; null on the last")


class Invoice(BaseModel):
    as_of: str
    invoice: dict = Field(description="the invoice document, as `spanmeter invoice --format json` prints it")
    explanation: list[dict] = Field(description="per line, as `spanmeter invoice explain --format json` prints it")


class Entitlement(BaseModel):
    meter: str
    unit: str
    used: str = Field(pattern=DECIMAL)
    included: str = Field(pattern=DECIMAL)
    limit: str | None = Field(description="the hard limit, else the allowance (soft), else null")
    kind: str = Field(description="hard, soft or none")
    remaining: str | None
    allowed: bool = Field(description="false only past a hard limit")
    max_concurrency: int | None
    fail_policy: str | None = Field(
        description="open or closed: what check() answers when the API cannot be reached (null: the plan sets "
        "none; the application's SPANMETER_ENTITLEMENTS_FAIL applies)"
    )


class Entitlements(BaseModel):
    account_id: str
    as_of: str
    period: str
    plan_code: str
    entitlements: list[Entitlement]
