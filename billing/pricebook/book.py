"""A price book version: per LLM model and per GPU model, what a unit costs the customer (``price``) and what it
costs you (``cost``), from an effective date. Pure values, validated when built; see the package docstring.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Literal, TypeVar

__all__ = ["TOKEN_KINDS", "GpuEntry", "Match", "ModelEntry", "PriceBook", "TokenPrices"]

# The token kinds a model entry prices. Cache reads and writes are part of the input count and reasoning
# tokens part of the output count (the GenAI semantic conventions count them inside), so each is priced
# *instead of*, never on top of, the input or output price: see :func:`spanmeter.billing.pricebook.split_tokens`.
TOKEN_KINDS = ("input", "output", "cache_read", "cache_write", "reasoning")

MatchKind = Literal["exact", "pattern", "default"]


@dataclass(frozen=True, slots=True)
class Match:
    """How an entry claims a model name: ``exact`` name, a ``pattern`` (shell-style: ``gpt-4o-2024-*``, for the
    dated snapshots of one model), or the book's ``default``."""

    kind: MatchKind
    value: str = ""  # the name or the pattern; "" for the default

    def matches(self, name: str) -> bool:
        if self.kind == "exact":
            return name == self.value
        if self.kind == "pattern":
            return fnmatch.fnmatchcase(name, self.value)
        return True

    def __str__(self) -> str:
        return {"exact": self.value, "pattern": f"pattern {self.value}", "default": "default"}[self.kind]


@dataclass(frozen=True, slots=True)
class TokenPrices:
    """Prices per ``PriceBook.token_per`` tokens. ``cache_read``/``cache_write`` default to ``input``,
    ``reasoning`` to ``output`` (what providers charge when they do not price them apart)."""

    input: Decimal
    output: Decimal
    cache_read: Decimal | None = None
    cache_write: Decimal | None = None
    reasoning: Decimal | None = None

    def of(self, kind: str) -> Decimal:
        """The price of one token kind, defaults applied."""
        if kind == "input":
            return self.input
        if kind == "output":
            return self.output
        value = getattr(self, kind)
        if value is not None:
            return value
        return self.output if kind == "reasoning" else self.input


@dataclass(frozen=True, slots=True)
class ModelEntry:
    match: Match
    price: TokenPrices
    cost: TokenPrices | None = None  # what the provider charges you, in the book's currency
    provider: str | None = None  # only rows of this provider (gen_ai.provider.name) match; None: any provider


@dataclass(frozen=True, slots=True)
class GpuEntry:
    match: Match
    price: Decimal  # per PriceBook.gpu_per GPU-seconds
    cost: Decimal | None = None


_E = TypeVar("_E", ModelEntry, GpuEntry)


def _find(entries: tuple[_E, ...], name: str, provider: str = "") -> _E | None:
    for kind in ("exact", "pattern", "default"):
        # within each kind, an entry for the row's provider before one for any provider
        for specific in (True, False):
            for entry in entries:
                entry_provider = getattr(entry, "provider", None)
                if specific != (entry_provider is not None):
                    continue
                if entry_provider is not None and entry_provider != provider:
                    continue
                if entry.match.kind == kind and entry.match.matches(name):
                    return entry
    return None


@dataclass(frozen=True, slots=True)
class PriceBook:
    """One version of a price book. FROZEN once an invoice used it: a price change is a new version from a
    later date (``spanmeter prices import``)."""

    code: str
    version: str
    effective_from: datetime
    currency: str
    description: str
    token_per: int  # token prices are per this many tokens (a power of ten)
    tokens: tuple[ModelEntry, ...]
    gpu_per: int  # GPU prices are per this many GPU-seconds (a power of ten)
    gpus: tuple[GpuEntry, ...]

    @property
    def label(self) -> str:
        """``docpipe@2026-12``: how invoices and reports name this version."""
        return f"{self.code}@{self.version}"

    def model(self, name: str, provider: str = "") -> ModelEntry | None:
        """The entry pricing LLM model ``name`` sold by ``provider`` ('' when the span named none): exact name
        first, then the first matching pattern, then the default; at each step an entry for that provider before
        one for any provider (an entry naming another provider never matches). None when the book prices it
        nowhere (unpriced usage: listed on the invoice, never free)."""
        return _find(self.tokens, name, provider)

    def gpu(self, name: str) -> GpuEntry | None:
        """The entry pricing GPU model ``name``, in the same order as :meth:`model`."""
        return _find(self.gpus, name)
