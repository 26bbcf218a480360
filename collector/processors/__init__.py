"""Processors: pure functions from OTLP spans to usage rows and rejections (no I/O, no clock)."""

from .meters import ALL_METERS, CURRENT_METERS, METER_CODES, MeterDefinition, OnUnattributed
from .usage import REJECT_REASONS, MeteringLimits, MeteringResult, Rejection, UsageRow, meter_request

__all__ = [
    "ALL_METERS",
    "CURRENT_METERS",
    "METER_CODES",
    "REJECT_REASONS",
    "MeterDefinition",
    "MeteringLimits",
    "MeteringResult",
    "OnUnattributed",
    "Rejection",
    "UsageRow",
    "meter_request",
]
