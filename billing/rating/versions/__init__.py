"""Every pricing version that ever billed, one frozen module each. Never remove or edit an entry."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from ..plans import PricingVersion
from .v1_request import V1_REQUEST
from .v2_compute import V2_COMPUTE

__all__ = ["PRICING_VERSIONS"]

PRICING_VERSIONS: Mapping[str, PricingVersion] = MappingProxyType({v.code: v for v in (V1_REQUEST, V2_COMPUTE)})
