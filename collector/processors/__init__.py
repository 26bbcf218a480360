"""Processors: pure functions from OTLP spans to usage events and rejections (no I/O, no clock).

Glossary (one name per concept):

- **meter definition** (:class:`MeterDefinition`, :mod:`.meters`): a meter's code, version, unit and its
  rules as data (match, count, quantity, metadata, routing); frozen once it has billed.
- **meter set** (:class:`MeterSet`, :mod:`.rules`): the definitions metering uses, in match order
  (``CURRENT_METER_SET`` unless a caller passes another).
- **usage event** (:class:`UsageEvent`): one metered span × meter, a row of the ledger table
  ``usage_events``. Its COPY encoding is a ``UsageEventTuple`` (``billing.ledger.writer``), made by
  ``usage_event_tuple`` (``collector.exporters.rows``); the stored row, read back through the ORM, is a
  ``UsageEventRecord`` (``billing.ledger.models``).
- **compact row** (``collector.consumer.CompactRow``): what the exporter's metrics read of a usage event
  (code, version, key, plan, label, quantity, end): the same tuple from either metering core.
- **rejection** (:class:`Rejection`): a span kept in ``rejected_spans`` with its reason, not billed.
"""

from .meters import ALL_METERS, CURRENT_METERS, METER_CODES, MeterDefinition, OnUnattributed
from .rules import CURRENT_METER_SET, MeterSet
from .usage import REJECT_REASONS, MeteringLimits, MeteringResult, Rejection, UsageEvent, meter_request

__all__ = [
    "ALL_METERS",
    "CURRENT_METERS",
    "CURRENT_METER_SET",
    "METER_CODES",
    "REJECT_REASONS",
    "MeterDefinition",
    "MeterSet",
    "MeteringLimits",
    "MeteringResult",
    "OnUnattributed",
    "Rejection",
    "UsageEvent",
    "meter_request",
]
