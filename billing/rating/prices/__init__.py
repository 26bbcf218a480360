"""Price models, one module each. Each is a frozen dataclass with a pure ``lines(...)`` method."""

from .base import PriceModel
from .graduated import Graduated
from .package import Package
from .per_unit import PerUnit
from .tiers import Tier
from .volume import Volume

__all__ = ["Graduated", "Package", "PerUnit", "PriceModel", "Tier", "Volume"]
