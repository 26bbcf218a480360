"""Prices as data: price books and pricing versions in the ledger, and the catalog invoices rate with.

    spanmeter prices import examples/prices/docpipe-2026-12.yaml     # a price book version
    spanmeter prices import demo/pricing/v3_models.yaml          # a pricing version (plans over a book)
    spanmeter prices show [--book docpipe] [--version 2026-12]
    spanmeter prices diff docpipe@2026-11 docpipe@2026-12
    spanmeter prices unpriced --period 2026-12                       # models no book version prices

:class:`Catalog` is what rating needs: every pricing version (the built-in, frozen ``v1_request`` and
``v2_compute``, and those imported) and every price book's versions. It is read per invoice run from two small
append-only tables (:mod:`spanmeter.billing.ledger.price_store`).

**Immutability.** A book version or a pricing version is stored once; importing the same document again is
a no-op, a different document under the same key is refused (a price change is a new version, from a later
date). A new book version may not take effect before the end of the last period finalized under a pricing
version that uses the book plus the drift window: invoices already issued never change, and late usage of a
finalized month is re-rated at the prices that month was billed at.

**Currencies.** A book has one currency; a plan priced from it must be priced in the same one (checked when a
book or a pricing version is imported, and when a subscription is set). Nothing is ever converted.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Any

import psycopg

from .ledger import locks, price_store
from .periods import Period
from .pricebook import PriceBook, book_document, parse_book
from .rating import PRICING_VERSIONS, PricingVersion
from .rating.plan_data import parse_pricing_version, pricing_document

__all__ = [
    "Catalog",
    "PricesError",
    "document_sha256",
    "earliest_effective",
    "import_book",
    "import_pricing_version",
    "load_catalog",
    "parse_any",
]


class PricesError(ValueError):
    pass


@dataclass(frozen=True)
class Catalog:
    """Pricing versions by code, and each price book's versions in import order (pure values)."""

    versions: Mapping[str, PricingVersion] = field(default_factory=lambda: PRICING_VERSIONS)
    books: Mapping[str, tuple[PriceBook, ...]] = field(default_factory=dict)

    def version(self, code: str) -> PricingVersion | None:
        return self.versions.get(code)

    def book_versions(self, code: str | None) -> tuple[PriceBook, ...]:
        return self.books.get(code, ()) if code else ()

    @property
    def cut_dates(self) -> list[datetime]:
        """Every effective date of every book: where usage must be read in separate windows."""
        return sorted({book.effective_from for versions in self.books.values() for book in versions})


BUILTIN = Catalog()


def document_sha256(document: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(document, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


_PARSED: dict[tuple[tuple[str, ...], tuple[str, ...]], Catalog] = {}


def load_catalog(conn: psycopg.Connection) -> Catalog:
    """The built-in versions plus every imported pricing version and book version.

    One small query per call (the imported documents' hashes); the documents are read and parsed only when
    those changed since this process last parsed them (the tables are append-only, so equal hashes are equal
    catalogs): rating thousands of invoices does not parse the books thousands of times."""
    key = price_store.fingerprint(conn)
    if key == ((), ()):
        return BUILTIN
    cached = _PARSED.get(key)
    if cached is None:
        cached = _PARSED[key] = _read_catalog(conn)
        while len(_PARSED) > 8:  # a long-lived process sees a handful of imports at most
            del _PARSED[next(iter(_PARSED))]
    return cached


def _read_catalog(conn: psycopg.Connection) -> Catalog:
    books: dict[str, list[PriceBook]] = {}
    for document in price_store.book_documents(conn):
        book = parse_book(document)
        books.setdefault(book.code, []).append(book)
    versions = dict(PRICING_VERSIONS)
    for document in price_store.pricing_documents(conn):
        version = parse_pricing_version(document)
        versions[version.code] = version
    if not books and len(versions) == len(PRICING_VERSIONS):
        return BUILTIN
    return Catalog(MappingProxyType(versions), MappingProxyType({k: tuple(v) for k, v in books.items()}))


def earliest_effective(
    book_code: str,
    versions: Mapping[str, PricingVersion],
    finalized: Sequence[tuple[str, datetime]],
    drift_window: timedelta,
) -> datetime | None:
    """The earliest ``effective_from`` a new version of ``book_code`` may have (pure): the end of the latest
    period finalized under a pricing version that uses the book, plus the drift window; None when none was."""
    latest = None
    for stored_versions, period_start in finalized:
        codes = stored_versions.split("+")
        if any(versions.get(code) and versions[code].price_book == book_code for code in codes):
            latest = period_start if latest is None else max(latest, period_start)
    return None if latest is None else Period.containing(latest).end + drift_window


def _currency_clash(version: PricingVersion, book: PriceBook) -> str | None:
    for plan in version.plans.values():
        if plan.currency != book.currency:
            return (
                f"plan {plan.code} of {version.code} is priced in {plan.currency} but book {book.label} in "
                f"{book.currency}: an invoice never converts; use a book in {plan.currency}"
            )
    return None


def import_book(conn: psycopg.Connection, book: PriceBook, *, imported_by: str, drift_window: timedelta) -> bool:
    """Store a book version (the caller commits); False when the same document is already stored."""
    locks.hold_prices(conn, exclusive=True)  # no invoice is finalized while this import checks and inserts
    document = book_document(book)
    if parse_book(document) != book:  # what is stored must read back as what was checked
        raise PricesError(f"{book.label} does not survive its canonical form: report this as a bug")
    sha = document_sha256(document)
    stored = price_store.stored_book(conn, book.code, book.version)
    if stored is not None:
        if stored[1] == sha:
            return False
        raise PricesError(
            f"{book.label} is already imported with other prices, and versions are frozen: import the change as a "
            f"new version (version: …) with a later effective_from"
        )
    catalog = load_catalog(conn)
    for version in catalog.versions.values():
        if version.price_book == book.code and (clash := _currency_clash(version, book)):
            raise PricesError(clash)
    earliest = earliest_effective(
        book.code, catalog.versions, price_store.finalized_periods_by_version(conn), drift_window
    )
    if earliest is not None and book.effective_from < earliest:
        raise PricesError(
            f"{book.label} would take effect {book.effective_from:%Y-%m-%dT%H:%MZ}, inside a period already "
            f"invoiced under this book (or its drift window): the earliest is {earliest:%Y-%m-%dT%H:%MZ}"
        )
    return price_store.insert_book(
        conn,
        code=book.code,
        version=book.version,
        effective_from=book.effective_from,
        currency=book.currency,
        document=document,
        sha256=sha,
        imported_by=imported_by,
    )


def import_pricing_version(conn: psycopg.Connection, version: PricingVersion, *, imported_by: str) -> bool:
    """Store a pricing version (the caller commits); False when the same document is already stored."""
    if version.code in PRICING_VERSIONS:
        raise PricesError(f"{version.code} is a built-in pricing version (frozen in code): choose a new code")
    document = pricing_document(version)
    sha = document_sha256(document)
    stored = price_store.stored_pricing_version(conn, version.code)
    if stored is not None:
        if stored[1] == sha:
            return False
        raise PricesError(
            f"pricing version {version.code} is already imported with other plans, and it is frozen: use a new code"
        )
    for book in load_catalog(conn).book_versions(version.price_book):
        if clash := _currency_clash(version, book):
            raise PricesError(clash)
    return price_store.insert_pricing_version(
        conn, code=version.code, price_book=version.price_book, document=document, sha256=sha, imported_by=imported_by
    )


def parse_any(document: Any) -> PriceBook | PricingVersion:
    """A loaded file as a price book (``book:``) or a pricing version (``pricing_version:``)."""
    if isinstance(document, Mapping) and "book" in document:
        return parse_book(document)
    if isinstance(document, Mapping) and "pricing_version" in document:
        return parse_pricing_version(document)
    raise PricesError("not a price book (book: …) or a pricing version (pricing_version: …)")
