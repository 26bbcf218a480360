"""Reading a price book file (YAML or JSON) into a :class:`.book.PriceBook`, refusing anything ambiguous.

Every refusal is a :class:`PriceBookError` whose message names the field (``tokens.models[2].price.input``) and
the fix. Prices are written as strings (``"3.00"``): YAML reads ``3.00`` as a binary float, which is not exact,
so a bare number with a fraction is refused.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml

from ..rating.money import CURRENCY_DECIMALS, exact_decimal
from .book import TOKEN_KINDS, GpuEntry, Match, ModelEntry, PriceBook, TokenPrices

__all__ = ["PriceBookError", "book_document", "load_file", "parse_book", "read_document"]

_CODE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_TOP = {"book", "version", "effective_from", "currency", "description", "tokens", "gpus"}


class PriceBookError(ValueError):
    pass


def _unknown(mapping: Mapping[Any, Any], known: set[str] | frozenset[str] | tuple[str, ...], where: str) -> list[str]:
    """The keys of ``mapping`` not in ``known``, sorted; a key that is not a string is refused, named."""
    odd = [key for key in mapping if not isinstance(key, str)]
    if odd:
        raise PriceBookError(f"{where}: keys are names (strings), got {odd[0]!r}")
    return sorted(set(mapping) - set(known))


def _decimal(value: Any, where: str) -> Decimal:
    try:
        number = exact_decimal(value)
    except ValueError as exc:
        raise PriceBookError(f"{where}: {exc}") from None
    if number < 0:
        raise PriceBookError(f"{where}: a price must be ≥ 0, got {value!r}")
    return number


def _per(section: Mapping[str, Any], where: str, default: int) -> int:
    per = section.get("per", default)
    if isinstance(per, bool) or not isinstance(per, int) or per < 1 or str(per).rstrip("0") != "1":
        raise PriceBookError(
            f"{where}.per: must be a power of ten (1, 1000, 1000000), got {per!r}, so that unit prices stay exact;"
            " write a GPU-hour price as a price per GPU-second or per 1000 GPU-seconds"
        )
    return per


def _match(entry: Mapping[str, Any], where: str) -> Match:
    given = [key for key in ("model", "pattern", "default") if key in entry]
    if len(given) != 1:
        raise PriceBookError(f"{where}: name exactly one of model: NAME, pattern: GLOB or default: true")
    key = given[0]
    if key == "default":
        if entry["default"] is not True:
            raise PriceBookError(f"{where}.default: must be true (leave it out otherwise)")
        return Match("default")
    value = entry[key]
    if not isinstance(value, str) or not value.strip():
        raise PriceBookError(f"{where}.{key}: a non-empty string")
    return Match("exact" if key == "model" else "pattern", value)


def _token_prices(value: Any, where: str) -> TokenPrices:
    if not isinstance(value, Mapping):
        raise PriceBookError(f"{where}: a mapping of {', '.join(TOKEN_KINDS)} (input and output required)")
    unknown = _unknown(value, TOKEN_KINDS, where)
    if unknown:
        raise PriceBookError(f"{where}: unknown token kind(s) {', '.join(unknown)}; kinds: {', '.join(TOKEN_KINDS)}")
    for required in ("input", "output"):
        if required not in value:
            raise PriceBookError(f"{where}.{required}: required")
    prices = {kind: _decimal(value[kind], f"{where}.{kind}") for kind in TOKEN_KINDS if kind in value}
    return TokenPrices(**prices)


def _entries(section: Any, where: str, make: Any) -> tuple[Any, ...]:
    if not isinstance(section, Mapping) or not isinstance(section.get("models"), list):
        raise PriceBookError(f"{where}: a mapping with per: and models: [ … ]")
    entries = []
    seen: set[tuple[Match, object]] = set()
    for i, raw in enumerate(section["models"]):
        at = f"{where}.models[{i}]"
        if not isinstance(raw, Mapping):
            raise PriceBookError(f"{at}: a mapping")
        unknown = _unknown(raw, {"model", "pattern", "default", "price", "cost", "provider"}, at)
        if unknown:
            raise PriceBookError(f"{at}: unknown key(s) {', '.join(unknown)}")
        match = _match(raw, at)
        provider = raw.get("provider")
        if provider is not None and (not isinstance(provider, str) or not provider.strip()):
            raise PriceBookError(f"{at}.provider: a non-empty string (leave it out for any provider)")
        if (match, provider) in seen:
            who = f" for provider {raw['provider']}" if raw.get("provider") else ""
            raise PriceBookError(f"{at}: {match}{who} is priced twice in {where}")
        seen.add((match, provider))
        if "price" not in raw:
            raise PriceBookError(f"{at}.price: required")
        entries.append(make(raw, at, match))
    return tuple(entries)


def _model(raw: Mapping[str, Any], at: str, match: Match) -> ModelEntry:
    provider = raw.get("provider")
    if provider is not None and (not isinstance(provider, str) or not provider.strip()):
        raise PriceBookError(f"{at}.provider: a non-empty string (leave it out for any provider)")
    cost = _token_prices(raw["cost"], f"{at}.cost") if "cost" in raw else None
    return ModelEntry(match, _token_prices(raw["price"], f"{at}.price"), cost, provider)


def _gpu(raw: Mapping[str, Any], at: str, match: Match) -> GpuEntry:
    if "provider" in raw:
        raise PriceBookError(f"{at}.provider: GPU entries have no provider")
    cost = _decimal(raw["cost"], f"{at}.cost") if "cost" in raw else None
    return GpuEntry(match, _decimal(raw["price"], f"{at}.price"), cost)


def _effective_from(value: Any) -> datetime:
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise PriceBookError(f"effective_from: {value!r} is not an ISO 8601 time (2026-12-01T00:00:00Z)") from None
    else:
        raise PriceBookError("effective_from: required, an ISO 8601 UTC time on a whole hour (2026-12-01T00:00:00Z)")
    if moment.utcoffset() is None:
        raise PriceBookError("effective_from: give a timezone (Z for UTC)")
    moment = moment.astimezone(UTC)
    if moment.minute or moment.second or moment.microsecond:
        raise PriceBookError(
            f"effective_from: prices change on whole UTC hours (rollups are hourly), got {moment.isoformat()}"
        )
    return moment


def parse_book(data: Any) -> PriceBook:
    """A :class:`PriceBook` from a loaded file; :class:`PriceBookError` naming the field when it is not one."""
    if not isinstance(data, Mapping):
        raise PriceBookError(
            "a price book is a mapping with book:, version:, effective_from:, currency:, tokens:, gpus:"
        )
    unknown = _unknown(data, _TOP, "the book")
    if unknown:
        raise PriceBookError(f"unknown top-level key(s) {', '.join(unknown)}; known: {', '.join(sorted(_TOP))}")
    code, version = data.get("book"), data.get("version")
    if not isinstance(code, str) or not _CODE.match(code):
        raise PriceBookError(f"book: a code of lower-case letters, digits, - and _ (e.g. docpipe), got {code!r}")
    if isinstance(version, int):
        version = str(version)
    if not isinstance(version, str) or not _VERSION.match(version):
        raise PriceBookError(f'version: a label such as "2026-12" (quote it), got {version!r}')
    currency = data.get("currency")
    if not isinstance(currency, str) or currency not in CURRENCY_DECIMALS:
        raise PriceBookError(f"currency: one of {', '.join(sorted(CURRENCY_DECIMALS))}, got {currency!r}")
    tokens = data.get("tokens", {"per": 1_000_000, "models": []})
    gpus = data.get("gpus", {"per": 1, "models": []})
    book = PriceBook(
        code=code,
        version=version,
        effective_from=_effective_from(data.get("effective_from")),
        currency=currency,
        description=str(data.get("description", "")),
        token_per=_per(tokens, "tokens", 1_000_000) if isinstance(tokens, Mapping) else 0,
        tokens=_entries(tokens, "tokens", _model),
        gpu_per=_per(gpus, "gpus", 1) if isinstance(gpus, Mapping) else 0,
        gpus=_entries(gpus, "gpus", _gpu),
    )
    if not book.tokens and not book.gpus:
        raise PriceBookError("the book prices nothing: add tokens.models or gpus.models")
    return book


def _prices_document(prices: TokenPrices) -> dict[str, str]:
    return {kind: format(getattr(prices, kind), "f") for kind in TOKEN_KINDS if getattr(prices, kind) is not None}


def _match_document(match: Match) -> dict[str, Any]:
    return (
        {"default": True} if match.kind == "default" else {"model" if match.kind == "exact" else "pattern": match.value}
    )


def book_document(book: PriceBook) -> dict[str, Any]:
    """The canonical JSON form of ``book`` (what the ledger stores and ``prices show`` prints);
    ``parse_book(book_document(b)) == b``."""
    return {
        "book": book.code,
        "version": book.version,
        "effective_from": book.effective_from.isoformat().replace("+00:00", "Z"),
        "currency": book.currency,
        "description": book.description,
        "tokens": {
            "per": book.token_per,
            "models": [
                {
                    **_match_document(e.match),
                    **({"provider": e.provider} if e.provider else {}),
                    "price": _prices_document(e.price),
                    **({"cost": _prices_document(e.cost)} if e.cost else {}),
                }
                for e in book.tokens
            ],
        },
        "gpus": {
            "per": book.gpu_per,
            "models": [
                {
                    **_match_document(e.match),
                    "price": format(e.price, "f"),
                    **({"cost": format(e.cost, "f")} if e.cost is not None else {}),
                }
                for e in book.gpus
            ],
        },
    }


def load_file(path: Path) -> PriceBook:
    """The book in ``path`` (``.json``, else YAML)."""
    return parse_book(read_document(path))


def read_document(path: Path) -> Any:
    """A YAML (or, for ``.json``, JSON) file as loaded; :class:`PriceBookError` when it cannot be read."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise PriceBookError(f"{path}: cannot read it ({exc.strerror})") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise PriceBookError(
            f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'} ({str(exc).splitlines()[0]})"
        ) from None
    return data
