"""Tiers, shared by the graduated and volume price models.

Tier ``i`` covers overage units in ``(up_to of tier i-1, up_to of tier i]``: a quantity exactly equal to
``up_to`` belongs to that tier, one unit more to the next. The last tier has ``up_to=None`` (no bound).
Tiers count overage units, i.e. units beyond the plan's allowance.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from itertools import pairwise

from ..money import format_quantity, require_decimal

__all__ = ["Tier", "tier_range", "validate_tiers"]


@dataclass(frozen=True, slots=True)
class Tier:
    up_to: Decimal | None  # inclusive upper bound in overage units; None on the last tier
    unit_price: Decimal
    flat_price: Decimal = Decimal(0)  # charged once when the tier applies (graduated: has units; volume: is the tier)

    def __post_init__(self) -> None:
        if self.up_to is not None and require_decimal(self.up_to, "up_to") <= 0:
            raise ValueError(f"up_to must be positive, got {self.up_to}")
        if require_decimal(self.unit_price, "unit_price") < 0:
            raise ValueError(f"unit_price must not be negative, got {self.unit_price}")
        if require_decimal(self.flat_price, "flat_price") < 0:
            raise ValueError(f"flat_price must not be negative, got {self.flat_price}")


def validate_tiers(tiers: tuple[Tier, ...]) -> None:
    """At least one tier, bounds strictly increasing, only the last one unbounded."""
    if not isinstance(tiers, tuple) or not tiers:
        raise ValueError("tiers must be a non-empty tuple of Tier")
    if tiers[-1].up_to is not None:
        raise ValueError("the last tier must have up_to=None")
    bounds = [tier.up_to for tier in tiers[:-1] if tier.up_to is not None]
    if len(bounds) != len(tiers) - 1:
        raise ValueError("only the last tier may have up_to=None")
    if any(b <= a for a, b in pairwise(bounds)):
        raise ValueError(f"tier bounds must be strictly increasing, got {bounds}")


def tier_range(tiers: tuple[Tier, ...], index: int) -> str:
    """``"tier 2: 20,000,000–100,000,000"``, ``"tier 3: above 100,000,000"`` (bounds in overage units)."""
    lower = Decimal(0) if index == 0 else tiers[index - 1].up_to
    upper = tiers[index].up_to
    assert lower is not None
    if upper is None:
        return f"tier {index + 1}: above {format_quantity(lower)}"
    return f"tier {index + 1}: {format_quantity(lower)}–{format_quantity(upper)}"
