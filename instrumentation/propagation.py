"""Attribution that cannot be forged from outside.

W3C baggage arrives on inbound HTTP requests from anyone. :class:`AttributionSafeBaggagePropagator`
extracts baggage like the standard W3C propagator, then drops the keys spanmeter reserves for
attribution (``account_id``, ``job_id``, ``plan_code`` and every ``spanmeter.*`` key): a client cannot
choose whom its usage is billed to, nor mark its own traffic synthetic (unbilled). Server-side code sets
the keys after authentication (:class:`spanmeter.instrumentation.django.SpanmeterMiddleware`, or
:func:`spanmeter.instrumentation.helpers.attribution`); they are injected into outgoing requests and
Celery messages as usual, so they cross the broker to every task.

Reserved keys are kept only when the carrier is read through a *trusted getter*: the Celery
instrumentation's getter by default, because task messages are written by your own web tier (which
authenticated the request) into your own broker. Anyone who can write to the broker can already run
tasks as any account; protect the broker like the database.
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
    """W3C baggage that strips reserved keys unless the carrier comes through a trusted getter.

    ``trusted_getter_types``: getter classes whose carriers are written by trusted code only.
    ``trusted_getter_names``: the same as ``"module:QualName"`` strings, for classes from a library that
    may never be imported in this process (:mod:`.bootstrap` passes
    ``"opentelemetry.instrumentation.celery:CeleryGetter"``, so a Django service without Celery never
    imports Celery for it). A getter is trusted when its class or one of its bases matches either.
    """

    def __init__(self, trusted_getter_types: tuple[type, ...] = (), trusted_getter_names: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.trusted_getter_types = trusted_getter_types
        self.trusted_getter_names = frozenset(trusted_getter_names)
        self._trusted_by_type: dict[type, bool] = {}

    def _trusted(self, getter: object) -> bool:
        cls = type(getter)
        trusted = self._trusted_by_type.get(cls)
        if trusted is None:
            trusted = bool(self.trusted_getter_types) and isinstance(getter, self.trusted_getter_types)
            trusted = trusted or any(
                f"{c.__module__}:{c.__qualname__}" in self.trusted_getter_names for c in cls.__mro__
            )
            self._trusted_by_type[cls] = trusted
        return trusted

    def extract(
        self, carrier: CarrierT, context: Context | None = None, getter: Getter[CarrierT] = default_getter
    ) -> Context:
        extracted = super().extract(carrier, context, getter)
        if self._trusted(getter):
            return extracted
        # Strip even without a W3C ``baggage`` header: an earlier propagator in the composite (Jaeger's
        # ``uberctx-*``, OT's ``ot-baggage-*``) may have put client-chosen entries into the context.
        entries = baggage.get_all(extracted)
        if not entries:  # no inbound baggage: the common case, nothing to strip
            return extracted
        for key in list(entries):
            if is_reserved(key):
                extracted = baggage.remove_baggage(key, extracted)
        return extracted
