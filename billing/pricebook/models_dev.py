"""Importing a public model-price list: the models.dev JSON format (``api.json``), from a file, never the network.

models.dev lists, per provider, each model's ``cost`` in USD per million tokens: ``input``, ``output`` and,
where the provider prices them, ``cache_read``, ``cache_write`` and ``reasoning``. Those are what *you* pay:
they become each entry's ``cost``; the customer ``price`` is the cost times ``1 + markup`` (exact). Models
without a cost, or without an input or output cost, are skipped and listed; cost keys spanmeter does not
meter (audio) are ignored and listed. Numbers are read as decimals (never floats), so ``0.15`` stays 0.15.

    spanmeter prices import --models-dev examples/prices/models-dev-sample.json --book public-llm \\
        --version 2026-12 --from 2026-12-01T00:00:00Z --markup 0.25 --provider openai --provider anthropic
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from .book import TOKEN_KINDS, Match, ModelEntry, PriceBook, TokenPrices
from .parse import PriceBookError, book_document, parse_book

__all__ = ["ModelsDevImport", "book_from_models_dev", "read_models_dev"]


@dataclass(frozen=True)
class ModelsDevImport:
    book: PriceBook
    skipped: tuple[str, ...]  # "provider/model: why"
    ignored_cost_keys: tuple[str, ...]


def read_models_dev(path: Path) -> Any:
    try:
        return json.loads(path.read_text(), parse_float=Decimal)
    except OSError as exc:
        raise PriceBookError(f"{path}: cannot read it ({exc.strerror})") from None
    except json.JSONDecodeError as exc:
        raise PriceBookError(f"{path}: not valid JSON ({exc})") from None


def _is_cost(value: Any) -> bool:
    return (
        isinstance(value, int | Decimal) and not isinstance(value, bool) and Decimal(value).is_finite() and value >= 0
    )


def _prices(cost: dict[str, Decimal], factor: Decimal) -> TokenPrices:
    return TokenPrices(**{kind: (Decimal(cost[kind]) * factor).normalize() for kind in TOKEN_KINDS if kind in cost})


def book_from_models_dev(
    data: Any,
    *,
    code: str,
    version: str,
    effective_from: datetime,
    markup: Decimal,
    providers: Iterable[str] = (),
    description: str = "",
) -> ModelsDevImport:
    """A price book (USD, per million tokens) from models.dev data: one exact entry per model and provider of the
    chosen providers (all when none are named): an entry names its provider, so it prices only rows whose
    ``gen_ai.provider.name`` is that provider (models.dev's provider id: name your spans' providers alike).
    ``markup`` 0.25 prices every token kind at cost × 1.25."""
    if not isinstance(data, dict):
        raise PriceBookError("models.dev data is a JSON object of providers")
    if not markup.is_finite() or markup < 0:
        raise PriceBookError(f"--markup must be a number ≥ 0 (0.25 is 25 % over cost), got {markup}")
    wanted = list(dict.fromkeys(providers))
    missing = sorted(set(wanted) - set(data))
    if missing:
        raise PriceBookError(
            f"provider(s) not in the file: {', '.join(missing)}; it has {', '.join(sorted(data)[:20])}"
        )
    factor = 1 + markup
    entries: dict[tuple[str, str], ModelEntry] = {}
    skipped: list[str] = []
    ignored: set[str] = set()
    for provider_id in wanted or sorted(data):
        provider = data[provider_id]
        for model_id, model in sorted((provider.get("models") or {}).items()):
            name = f"{provider_id}/{model_id}"
            cost = model.get("cost") if isinstance(model, dict) else None
            if not isinstance(cost, dict) or "input" not in cost or "output" not in cost:
                skipped.append(f"{name}: no input and output cost")
                continue
            bad = [kind for kind in TOKEN_KINDS if kind in cost and not _is_cost(cost[kind])]
            if bad:
                skipped.append(f"{name}: cost {', '.join(bad)} is not a number ≥ 0")
                continue
            ignored.update(set(cost) - set(TOKEN_KINDS))
            known = {kind: cost[kind] for kind in TOKEN_KINDS if kind in cost}
            entries[(model_id, provider_id)] = ModelEntry(
                Match("exact", model_id), _prices(known, factor), _prices(known, Decimal(1)), provider_id
            )
    draft = PriceBook(code, version, effective_from, "USD", description or f"models.dev import, markup {markup}",
                      1_000_000, tuple(entries.values()), 1, ())  # fmt: skip
    # through the file format, so an import is validated exactly like a hand-written book
    return ModelsDevImport(parse_book(book_document(draft)), tuple(skipped), tuple(sorted(ignored)))
