"""The ``spanmeter prices`` commands: price books and pricing versions as data (see :mod:`spanmeter.billing.prices`).

    spanmeter prices import FILE [--by WHO]                          # a price book or a pricing version (YAML/JSON)
    spanmeter prices import --models-dev FILE --book CODE --version V --from TIME --markup 0.25 [--provider P ...]
    spanmeter prices show [--book CODE] [--version V] [--format table|json]
    spanmeter prices diff CODE@V1 CODE@V2
    spanmeter prices unpriced --period YYYY-MM                       # exit 1 when some usage has no price
    spanmeter prices check FILE                                      # validate a file without a database
    spanmeter prices margin --period YYYY-MM [--by account|meter|model]  # revenue, provider cost, margin

Importing is append-only: the same file again changes nothing; a changed price is a new version from a later
``effective_from`` (refused inside a period already invoiced under the book, or its drift window).
"""

from __future__ import annotations

import argparse
import json
import sys
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from ._shared import DATABASE, READ_REPLICA, CommandError, config_from, parse_time, read_databases, who

__all__ = ["register"]


def register(sub: Any) -> None:
    """Add ``prices`` and its sub-commands to the ``spanmeter`` parser's sub-parsers."""
    prices = sub.add_parser("prices", help="price books (per model and GPU) and pricing versions as data")
    psub = prices.add_subparsers(dest="prices_command", required=True)
    imp = psub.add_parser(
        "import",
        help="store a price book version or a pricing version from a YAML or JSON file (append-only)",
        parents=[DATABASE],
    )
    imp.add_argument(
        "file", type=Path, help="the file: a price book (book: …) or a pricing version (pricing_version: …)"
    )
    imp.add_argument(
        "--models-dev", action="store_true", help="FILE is a models.dev api.json: import it as a price book"
    )
    imp.add_argument("--book", help="with --models-dev: the book code to create, e.g. public-llm")
    imp.add_argument("--version", help="with --models-dev: the version label, e.g. 2026-12")
    imp.add_argument("--from", dest="effective_from", help="with --models-dev: effective from (a whole UTC hour)")
    imp.add_argument("--markup", help="with --models-dev: price = cost × (1 + markup), e.g. 0.25")
    imp.add_argument("--provider", action="append", default=[], help="with --models-dev: only this provider (repeat)")
    imp.add_argument("--by", help="who (default: $USER)")
    imp.set_defaults(handler=_import)

    check = psub.add_parser("check", help="validate a price book or pricing version file (no database)")
    check.add_argument("file", type=Path, help="the YAML or JSON file")
    check.set_defaults(handler=_check)

    show = psub.add_parser(
        "show", help="the imported price books (and a version's prices)", parents=[DATABASE, READ_REPLICA]
    )
    show.add_argument("--book", help="one book's versions")
    show.add_argument("--version", help="with --book: that version's prices")
    show.add_argument("--format", choices=("table", "json"), default="table", help="output format (default table)")
    show.set_defaults(handler=_show)

    diff = psub.add_parser(
        "diff", help="what changed between two versions of a price book", parents=[DATABASE, READ_REPLICA]
    )
    diff.add_argument("old", help="CODE@VERSION, e.g. docpipe@2026-11")
    diff.add_argument("new", help="CODE@VERSION, e.g. docpipe@2026-12")
    diff.set_defaults(handler=_diff)

    unpriced = psub.add_parser(
        "unpriced",
        help="usage of a month no price book version prices (exit 1 when any)",
        parents=[DATABASE, READ_REPLICA],
    )
    unpriced.add_argument("--period", required=True, help="YYYY-MM")
    unpriced.add_argument("--format", choices=("table", "json"), default="table", help="output format (default table)")
    unpriced.set_defaults(handler=_unpriced)

    margin = psub.add_parser(
        "margin",
        help="revenue, provider cost (the books' cost entries) and margin of a month, per account, meter or model",
        parents=[DATABASE, READ_REPLICA],
    )
    margin.add_argument("--period", required=True, help="YYYY-MM")
    margin.add_argument(
        "--by", choices=("account", "meter", "model"), default="account", help="grouping (default account)"
    )
    margin.add_argument("--format", choices=("table", "json"), default="table", help="output format (default table)")
    margin.set_defaults(handler=_margin)


def _service(args: argparse.Namespace, *, writes: bool) -> Any:
    """The billing service: writes go to the primary (migrated first); reads to the replica when configured."""
    from spanmeter.billing.ledger import migrate
    from spanmeter.billing.ledger.replica import resolve_databases
    from spanmeter.billing.service import BillingService

    config = config_from(args)
    if not writes:
        return BillingService(read_databases(config))
    databases = resolve_databases(config.database_url, None, config.data_dir, create=True)
    migrate.prepare(databases.primary)
    return BillingService(databases)


def _load(args: argparse.Namespace) -> Any:
    from spanmeter.billing.pricebook import PriceBookError
    from spanmeter.billing.pricebook.models_dev import book_from_models_dev, read_models_dev
    from spanmeter.billing.pricebook.parse import read_document
    from spanmeter.billing.prices import PricesError, parse_any
    from spanmeter.billing.rating.plan_data import PricingDataError

    try:
        if getattr(args, "models_dev", False):
            missing = [flag for flag, value in (("--book", args.book), ("--version", args.version),
                                                ("--from", args.effective_from), ("--markup", args.markup)) if not value]  # fmt: skip
            if missing:
                raise CommandError(f"--models-dev needs {', '.join(missing)}")
            try:
                markup = Decimal(args.markup)
            except InvalidOperation:
                raise CommandError(f"--markup {args.markup!r}: a decimal such as 0.25 (25 % over cost)") from None
            result = book_from_models_dev(
                read_models_dev(args.file),
                code=args.book,
                version=args.version,
                effective_from=parse_time(args.effective_from, "--from"),
                markup=markup,
                providers=args.provider,
            )
            for line in result.skipped:
                print(f"skipped {line}", file=sys.stderr)
            if result.ignored_cost_keys:
                print(f"ignored cost keys (not metered): {', '.join(result.ignored_cost_keys)}", file=sys.stderr)
            return result.book
        return parse_any(read_document(args.file))
    except (PriceBookError, PricingDataError, PricesError) as exc:
        raise CommandError(f"{args.file}: {exc}") from None


def _describe(item: Any) -> str:
    from spanmeter.billing.pricebook import PriceBook

    if isinstance(item, PriceBook):
        return (
            f"price book {item.label} ({item.currency}, from {item.effective_from:%Y-%m-%dT%H:%MZ}): "
            f"{len(item.tokens)} model entr{'y' if len(item.tokens) == 1 else 'ies'}, {len(item.gpus)} GPU entr"
            f"{'y' if len(item.gpus) == 1 else 'ies'}"
        )
    plans = ", ".join(f"{p.code} ({p.currency})" for p in item.plans.values())
    book = f" over book {item.price_book}" if item.price_book else ""
    return f"pricing version {item.code}{book}: plans {plans}"


def _check(args: argparse.Namespace) -> int:
    print(f"valid: {_describe(_load(args))}")
    return 0


def _import(args: argparse.Namespace) -> int:
    from spanmeter.billing.prices import PricesError

    from .billing import _drift_window

    item = _load(args)
    try:
        created = _service(args, writes=True).import_prices(item, by=who(args.by), drift_window=_drift_window())
    except PricesError as exc:
        raise CommandError(str(exc)) from None
    print(f"{'imported' if created else 'already imported (same document): nothing changed'}: {_describe(item)}")
    return 0


def _book(catalog: Any, label: str) -> Any:
    code, _, version = label.partition("@")
    for book in catalog.book_versions(code):
        if book.version == version:
            return book
    known = ", ".join(b.label for versions in catalog.books.values() for b in versions) or "none imported"
    raise CommandError(f"no price book {label!r} (write CODE@VERSION); books: {known}")


def _show(args: argparse.Namespace) -> int:
    from spanmeter.billing.pricebook import book_document

    catalog = _service(args, writes=False).catalog()
    if args.version:
        if not args.book:
            raise CommandError("--version needs --book")
        document = book_document(_book(catalog, f"{args.book}@{args.version}"))
        if args.format == "json":
            print(json.dumps(document, indent=2))
            return 0
        print(f"{document['book']}@{document['version']}  {document['currency']}  from {document['effective_from']}")
        per = document["tokens"]["per"]
        for entry in document["tokens"]["models"]:
            match = entry.get("model") or (f"pattern {entry['pattern']}" if "pattern" in entry else "default")
            price = " ".join(f"{k} {v}" for k, v in entry["price"].items())
            cost = (" | cost " + " ".join(f"{k} {v}" for k, v in entry["cost"].items())) if "cost" in entry else ""
            print(f"  tokens  {match:<32} per {per}: {price}{cost}")
        per = document["gpus"]["per"]
        for entry in document["gpus"]["models"]:
            match = entry.get("model") or (f"pattern {entry['pattern']}" if "pattern" in entry else "default")
            cost = f" | cost {entry['cost']}" if "cost" in entry else ""
            print(f"  gpu     {match:<32} per {per} s: {entry['price']}{cost}")
        return 0
    rows = [
        {
            "book": b.code,
            "version": b.version,
            "effective_from": b.effective_from.isoformat(),
            "currency": b.currency,
            "models": len(b.tokens),
            "gpus": len(b.gpus),
        }
        for code, versions in sorted(catalog.books.items())
        if not args.book or code == args.book
        for b in sorted(versions, key=lambda b: b.effective_from)
    ]
    imported = [
        {"pricing_version": v.code, "price_book": v.price_book, "plans": list(v.plans)}
        for v in catalog.versions.values()
        if v.price_book
    ]
    if args.format == "json":
        print(json.dumps({"price_books": rows, "pricing_versions": imported}, indent=2))
        return 0
    if not rows:
        print("no price books imported (spanmeter prices import FILE)")
    for r in rows:
        print(
            f"{r['book']}@{r['version']:<12} {r['currency']}  from {r['effective_from']}  {r['models']} models, {r['gpus']} GPUs"
        )
    for v in imported:
        print(f"pricing version {v['pricing_version']} over {v['price_book']}: plans {', '.join(v['plans'])}")
    return 0


def _diff(args: argparse.Namespace) -> int:
    from spanmeter.billing.pricebook import diff_books

    catalog = _service(args, writes=False).catalog()
    old, new = _book(catalog, args.old), _book(catalog, args.new)
    changes = diff_books(old, new)
    print(f"{old.label} -> {new.label} (effective {new.effective_from:%Y-%m-%dT%H:%MZ}): {len(changes)} change(s)")
    for line in changes:
        print(f"  {line}")
    return 0


def _unpriced(args: argparse.Namespace) -> int:
    from .billing import _period

    found = _service(args, writes=False).unpriced(_period(args.period))
    if args.format == "json":
        print(json.dumps(found, indent=2))
    elif not found:
        print(f"every model and GPU used in {args.period} has a price")
    for item in found if args.format == "table" else []:
        print(
            f"{item['account_id']:<16} {item['model']:<32} {item['meter_code']:<16} {item['quantity']:>14}  (book {item['price_book']})"
        )
    if found:
        print(
            f"{len(found)} unpriced: import a price book version that prices them (or a default entry)", file=sys.stderr
        )
    return 1 if found else 0


def _margin(args: argparse.Namespace) -> int:
    from spanmeter.billing.margin import group_rows

    from .billing import _period

    rows = group_rows(_service(args, writes=False).margin(_period(args.period)), args.by)
    if args.format == "json":
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print(f"no account is subscribed in {args.period}")
        return 0
    print(
        f"{args.by:<28} {'currency':<8} {'revenue':>12} {'cost':>12} {'margin':>12} {'margin %':>9}  revenue without a known cost"
    )
    for r in rows:
        print(
            f"{r[args.by]:<28} {r['currency']:<8} {r['revenue']:>12} {r['cost']:>12} {r['margin']:>12} {r['margin_pct']:>9}  {r['revenue_without_known_cost']}"
        )
    print("cost: the price books' cost entries for all usage of a model (allowance included); fees and worker time have "
          "no provider cost here; totals per currency, never converted")  # fmt: skip
    return 0
