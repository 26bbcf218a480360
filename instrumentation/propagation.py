"""Attribution that cannot be forged from outside.

W3C baggage arrives on inbound HTTP requests from anyone. :class:`AttributionSafeBaggagePropagator`
extracts baggage like the standard W3C propagator, then drops the keys spanmeter reserves for
attribution (``account_id``, ``job_id``, ``plan_code`` and every ``spanmeter.*`` key): a client cannot
choose whom its usage is billed to. Server-side code sets them after authentication (see
:func:`spanmeter.instrumentation.helpers.attribution`); they are injected into outgoing requests and
Celery messages as usual, so they cross the broker to every task.

Use it for *inbound HTTP* only: a Celery worker must extract the reserved keys from task messages, which
only trusted code (the web tier that authenticated the request) put there.
"""

from __future__ import annotations

from opentelemetry import baggage
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import CarrierT, Getter, default_getter

from spanmeter import attributes as A

__all__ = ["AttributionSafeBaggagePropagator", "is_reserved"]


def is_reserved(key: str) -> bool:
    return key in A.ATTRIBUTION_KEYS or key.startswith(A.RESERVED_PREFIX)


class AttributionSafeBaggagePropagator(W3CBaggagePropagator):
    def extract(
        self, carrier: CarrierT, context: Context | None = None, getter: Getter[CarrierT] = default_getter
    ) -> Context:
        extracted = super().extract(carrier, context, getter)
        for key in list(baggage.get_all(extracted)):
            if is_reserved(key):
                extracted = baggage.remove_baggage(key, extracted)
        return extracted
