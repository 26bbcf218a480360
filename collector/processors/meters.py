"""Meter definitions: which spans bill what, in which unit, under which version.

A meter definition is frozen once it has billed anyone. To change what a meter counts, add a new
``MeterDefinition`` with a higher ``version`` and point ``CURRENT_METERS`` at it; the old one stays in
``ALL_METERS`` so rows written under it remain explainable. Every usage row records ``meter_version``.

| meter_code      | unit        | matches                                                                  | quantity                                   | on_unattributed | failed spans |
|-----------------|-------------|--------------------------------------------------------------------------|--------------------------------------------|-----------------|--------------|
| worker_seconds  | ``s``       | Celery task runs (``celery.action = run``) or ``spanmeter.work_unit=true`` | duration rounded up to 100 ms              | reject          | billed       |
| gpu_seconds     | ``s``       | spans with ``gpu.count``                                                 | duration rounded up to 100 ms × gpu.count  | reject          | billed       |
| input_tokens    | ``{token}`` | GenAI spans with input tokens, operation absent or a model call          | ``gen_ai.usage.input_tokens``              | reject          | billed       |
| output_tokens   | ``{token}`` | GenAI spans with output tokens, operation absent or a model call         | ``gen_ai.usage.output_tokens``             | reject          | billed       |
| api_requests    | ``{request}`` | SERVER spans with ``http.request.method`` / ``http.method``            | 1                                          | count_only      | billed       |

Failed attempts (span status ERROR) bill by default for every meter: the compute, the tokens and the
request were consumed, and each Celery retry is its own span (its own row). The row's metadata carries
``"status": "error"`` so rating can treat failures differently without touching the ledger. Not billing
failed spans is not implemented: a definition with ``bill_failed=False`` is refused when it is created,
rather than billing failures while saying it does not.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = [
    "ALL_METERS",
    "API_REQUESTS",
    "CURRENT_METERS",
    "GPU_SECONDS",
    "INPUT_TOKENS",
    "METER_CODES",
    "OUTPUT_TOKENS",
    "WORKER_SECONDS",
    "MeterDefinition",
    "MeterRouting",
    "OnUnattributed",
]


class OnUnattributed(enum.Enum):
    """What happens to a span that matches a meter but carries no ``account_id``."""

    REJECT = "reject"  # the whole span goes to rejected_spans (reason ``unattributed``)
    COUNT_ONLY = "count_only"  # counted in spanmeter_spans_unattributed_total{meter}, not stored


@dataclass(frozen=True, slots=True)
class MeterRouting:
    """Where a committed row's quantity is counted in Prometheus: the ``spanmeter_billable_*`` counter of
    :mod:`spanmeter.metrics_catalog` named ``metric``, with ``labels`` in the counter's order, each one of
    ``"plan"`` (the row's plan code, capped), ``"gpu_model"`` (the row's GPU model, capped) or ``"=text"``
    (that text). A definition without routing counts its rows in ``spanmeter_spans_billed_total`` only."""

    metric: str
    labels: tuple[str, ...]


@dataclass(frozen=True, slots=True, eq=False)  # identity equality: definitions are module constants
class MeterDefinition:
    code: str
    version: int
    unit: str  # UCUM, as OpenTelemetry writes units
    description: str
    on_unattributed: OnUnattributed
    bill_failed: bool = True
    routing: MeterRouting | None = None

    def __post_init__(self) -> None:
        if not self.bill_failed:
            raise ValueError(f"{self.code} v{self.version}: bill_failed=False is not implemented (failed spans bill)")


WORKER_SECONDS = MeterDefinition(
    code="worker_seconds",
    version=1,
    unit="s",
    description="Worker time of Celery task runs and spanmeter.work_unit spans, rounded up to 100 ms",
    on_unattributed=OnUnattributed.REJECT,
    routing=MeterRouting("spanmeter_billable_worker_seconds_total", ("plan",)),
)
GPU_SECONDS = MeterDefinition(
    code="gpu_seconds",
    version=1,
    unit="s",
    description="GPU time: span duration rounded up to 100 ms, times gpu.count",
    on_unattributed=OnUnattributed.REJECT,
    routing=MeterRouting("spanmeter_billable_gpu_seconds_total", ("plan", "gpu_model")),
)
INPUT_TOKENS = MeterDefinition(
    code="input_tokens",
    version=1,
    unit="{token}",
    description="LLM input tokens of model calls (cache tokens included, never billed twice)",
    on_unattributed=OnUnattributed.REJECT,
    routing=MeterRouting("spanmeter_billable_tokens_total", ("plan", "=input")),
)
OUTPUT_TOKENS = MeterDefinition(
    code="output_tokens",
    version=1,
    unit="{token}",
    description="LLM output tokens of model calls (reasoning tokens included, never billed twice)",
    on_unattributed=OnUnattributed.REJECT,
    routing=MeterRouting("spanmeter_billable_tokens_total", ("plan", "=output")),
)
API_REQUESTS = MeterDefinition(
    code="api_requests",
    version=1,
    unit="{request}",
    description="One per HTTP SERVER span",
    on_unattributed=OnUnattributed.COUNT_ONLY,
    routing=MeterRouting("spanmeter_billable_api_requests_total", ("plan",)),
)

# Every definition that ever billed, keyed by (code, version). Never remove or edit an entry.
ALL_METERS: dict[tuple[str, int], MeterDefinition] = {
    (m.code, m.version): m for m in (WORKER_SECONDS, GPU_SECONDS, INPUT_TOKENS, OUTPUT_TOKENS, API_REQUESTS)
}
# The definitions new usage is metered with.
CURRENT_METERS: dict[str, MeterDefinition] = {
    m.code: m for m in (WORKER_SECONDS, GPU_SECONDS, INPUT_TOKENS, OUTPUT_TOKENS, API_REQUESTS)
}
METER_CODES: tuple[str, ...] = tuple(CURRENT_METERS)
