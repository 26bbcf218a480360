"""Pricing usage per model and per GPU from price book versions (pure: no database, no clock).

A plan rate written ``book: tokens`` or ``book: gpus`` (see :mod:`spanmeter.billing.rating.plan_data`) prices its
metric here instead of at one unit price:

1. **Windows.** The subscription segment is cut where a new version of the plan's price book takes effect
   (:func:`book_windows`); usage in each window is priced by the version in force then. Effective dates are
   whole UTC hours, like subscriptions and rollups, so every window is exact.
2. **Kinds.** LLM tokens are split into kinds (:func:`split_tokens`): the GenAI semantic conventions count
   cache reads and cache writes *inside* ``gen_ai.usage.input_tokens`` and reasoning tokens inside
   ``output_tokens``. Pricing ``input_tokens × input price`` and then cache reads again at their own price
   would charge cached tokens twice (the trap); here cached tokens are taken *out* of the input count and
   priced once, at the cache price, and reasoning tokens out of the output count.
3. **Groups.** One line per (model or GPU model, kind, book version): ``quantity × price / per``.
4. **Allowance.** A rate's ``included`` units are applied to the dearest groups first (highest unit price,
   then name): the customer-friendly order, and one anyone can recompute. Allowances and tiers do not reset
   at a mid-month price change: they apply to the period's (segment's) total across windows.
5. **Unpriced.** A model no entry matches (exact, pattern, default) is never billed at zero silently: it comes
   back in ``unpriced``; the invoice lists it, and finalizing is refused until a book version prices it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from ..rating.book_lines import Group
from .book import PriceBook

__all__ = ["BookWindow", "book_windows", "group_usage", "split_tokens"]

# meter -> token kind it counts; subsets are taken out of their parent kind (see split_tokens)
TOKEN_METERS = {"input_tokens": "input", "output_tokens": "output", "cache_read_tokens": "cache_read",
                "cache_write_tokens": "cache_write", "reasoning_tokens": "reasoning"}  # fmt: skip
_PARENT = {"cache_read": "input", "cache_write": "input", "reasoning": "output"}


@dataclass(frozen=True, slots=True)
class BookWindow:
    """[start, end) priced by ``book`` (None: no version of the book is in force yet)."""

    start: datetime
    end: datetime
    book: PriceBook | None


def book_windows(versions: Sequence[PriceBook], start: datetime, end: datetime) -> list[BookWindow]:
    """[start, end) cut at the effective dates of ``versions`` (one book's versions; a later import with the
    same effective date supersedes an earlier one, as subscriptions do)."""
    by_date: dict[datetime, PriceBook] = {}
    for version in versions:  # in import order
        by_date[version.effective_from] = version
    dates = sorted(by_date)
    windows: list[BookWindow] = []
    cursor = start
    in_force = None
    for date in dates:
        if date <= start:
            in_force = by_date[date]
            continue
        if date >= end:
            break
        windows.append(BookWindow(cursor, date, in_force))
        cursor, in_force = date, by_date[date]
    windows.append(BookWindow(cursor, end, in_force))
    return windows


def split_tokens(by_meter: Mapping[str, Decimal]) -> dict[str, Decimal]:
    """Token counts by meter -> counts by kind, each token in exactly one kind (the cached-input trap).

    >>> split_tokens({"input_tokens": Decimal(1000), "cache_read_tokens": Decimal(800),
    ...               "output_tokens": Decimal(200), "reasoning_tokens": Decimal(150)})
    {'input': Decimal('200'), 'output': Decimal('50'), 'cache_read': Decimal('800'), 'reasoning': Decimal('150')}

    A subset larger than what is left of its parent count (inconsistent spans) is cut to it: never negative,
    never more tokens than the parent counted."""
    kinds: dict[str, Decimal] = {}
    for meter, kind in TOKEN_METERS.items():
        if kind in ("input", "output") and meter in by_meter:
            kinds[kind] = by_meter[meter]
    for meter, kind in TOKEN_METERS.items():
        parent = _PARENT.get(kind)
        if parent is None or meter not in by_meter:
            continue
        taken = min(by_meter[meter], kinds.get(parent, Decimal(0)))
        kinds[parent] = kinds.get(parent, Decimal(0)) - taken
        kinds[kind] = kinds.get(kind, Decimal(0)) + taken
    return {kind: q for kind, q in kinds.items() if q or kind in ("input", "output")}


def _per_unit(price: Decimal, per: int) -> Decimal:
    """``price / per`` exactly (``per`` is a power of ten: a shift of the exponent, never a rounding)."""
    return price.scaleb(-(len(str(per)) - 1))


def _per_unit_or_none(price: Decimal | None, per: int) -> Decimal | None:
    return None if price is None else _per_unit(price, per)


def group_usage(
    book_kind: str, windows: Sequence[tuple[BookWindow, Mapping[tuple[str, str, str], Decimal]]]
) -> tuple[list[Group], list[tuple[str, str, str, Decimal]]]:
    """Groups (priced) and unpriced (dimension, provider, meter, quantity) from each window's usage by (meter,
    dimension, provider).

    ``book_kind`` is ``tokens`` (meters of :data:`TOKEN_METERS`, dimension = model, provider = the row's
    ``gen_ai.provider.name``) or ``gpus`` (meter ``gpu_seconds``, dimension = GPU model)."""
    totals: dict[tuple[str, str, str, str], Group] = {}
    unpriced: dict[tuple[str, str, str], Decimal] = {}
    for window, usage in windows:
        by_dimension: dict[tuple[str, str], dict[str, Decimal]] = {}
        for (meter, dimension, provider), quantity in usage.items():
            if quantity:
                by_dimension.setdefault((dimension, provider), {})[meter] = quantity
        book = window.book
        for (dimension, provider), by_meter in sorted(by_dimension.items()):
            prices: dict[str, tuple[Decimal, Decimal | None]]
            if book_kind == "gpus":
                entry = book.gpu(dimension) if book else None
                if book is None or entry is None:
                    for meter, q in by_meter.items():
                        key = (dimension, provider, meter)
                        unpriced[key] = unpriced.get(key, Decimal(0)) + q
                    continue
                kinds = {"gpu": by_meter.get("gpu_seconds", Decimal(0))}
                prices = {"gpu": (_per_unit(entry.price, book.gpu_per), _per_unit_or_none(entry.cost, book.gpu_per))}
            else:
                model = book.model(dimension, provider) if book else None
                if book is None or model is None:
                    for meter, q in by_meter.items():
                        key = (dimension, provider, meter)
                        unpriced[key] = unpriced.get(key, Decimal(0)) + q
                    continue
                kinds = split_tokens(by_meter)
                prices = {
                    kind: (
                        _per_unit(model.price.of(kind), book.token_per),
                        _per_unit_or_none(model.cost.of(kind) if model.cost else None, book.token_per),
                    )
                    for kind in kinds
                }
            for kind, quantity in kinds.items():
                if not quantity:
                    continue
                key4 = (dimension, provider, kind, book.label)
                held = totals.get(key4)
                price, cost = prices[kind]
                total = quantity + (held.quantity if held else Decimal(0))
                totals[key4] = Group(dimension, kind, book.label, price, cost, total, provider)
    groups = sorted(totals.values(), key=lambda g: (g.dimension, g.provider, g.kind, g.book))
    return groups, [(d, p, m, q) for (d, p, m), q in sorted(unpriced.items())]
