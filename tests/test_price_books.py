"""Price books and plans as data (issue 6/7): the file formats, matching, the cached-token trap, windows,
the models.dev importer, and invoices priced per model and GPU model against a real ledger.

The unit tests run the pure parts on the bundled example files. The integration tests import books and
pricing versions into a migrated PostgreSQL ledger, write usage through the ledger writer (the rollup
trigger, as ingest does), and read invoices back: per-model lines at the book version in force, a mid-month
price change, unpriced models that block finalizing, immutability, currencies, and a differential check that
prices the raw ledger rows independently and must agree with the rollup-based invoice to the cent.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import psycopg
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spanmeter.billing import invoices, prices, subscriptions
from spanmeter.billing.ledger import migrate
from spanmeter.billing.ledger.database import resolve_database
from spanmeter.billing.ledger.writer import LedgerWriter
from spanmeter.billing.periods import Period
from spanmeter.billing.pricebook import (
    PriceBookError,
    book_document,
    book_windows,
    diff_books,
    load_file,
    parse_book,
    split_tokens,
)
from spanmeter.billing.pricebook.models_dev import book_from_models_dev, read_models_dev
from spanmeter.billing.rating import PRICING_VERSIONS
from spanmeter.billing.rating.plan_data import PricingDataError, parse_pricing_version

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "demo" / "pricing" / "docpipe-2026-01.yaml"
BOOK_USD = ROOT / "examples" / "prices" / "docpipe-usd-2026-01.yaml"
V3 = ROOT / "demo" / "pricing" / "v3_models.yaml"
V3_USD = ROOT / "examples" / "pricing" / "v3_models_usd.yaml"
DEC = Period(2026, 12)
D = Decimal


V2_TOKEN_ALLOWANCES = {"starter": "250000", "growth": "5000000", "scale": "0", "platform": "1000000"}


def _v3(code: str = "v3_allow", book: str = "docpipe", allowances: dict | None = None) -> dict:
    """v3_models with token allowances (v2's by default; v3 itself includes no tokens), as a new version."""
    document = {**yaml.safe_load(V3.read_text()), "pricing_version": code, "price_book": book}
    for plan in document["plans"]:
        for rate in plan["rates"]:
            if rate["metric"] == "tokens":
                rate["included"] = (allowances or V2_TOKEN_ALLOWANCES)[plan["code"]]
    return document


def _book(**change) -> dict:
    document = book_document(load_file(BOOK))
    document.update(change)
    return document


# -- the file formats ----------------------------------------------------------------------------------------


def test_the_example_books_load_and_survive_their_canonical_form():
    for path in (BOOK, BOOK_USD):
        book = load_file(path)
        assert parse_book(book_document(book)) == book
    book = load_file(BOOK)
    assert book.label == "docpipe@2026-01" and book.currency == "EUR"
    assert book.model("gpt-4o", "openai").price.input == D("5.00")


@pytest.mark.parametrize(
    ("change", "names"),
    [
        ({"currency": "XXX"}, "currency"),
        ({"effective_from": "2026-01-01T00:30:00Z"}, "whole UTC hours"),
        ({"effective_from": "2026-01-01T00:00:00"}, "timezone"),
        ({"version": 2026.1}, "version"),
        ({"tokens": {"per": 3600, "models": []}}, "tokens.per"),
        (
            {"tokens": {"per": 1000000, "models": [{"model": "m", "price": {"input": 0.3, "output": "1"}}]}},
            "tokens.models[0].price.input",
        ),
        (
            {
                "tokens": {
                    "per": 1000000,
                    "models": [{"model": "m", "price": {"input": "1", "output": "1", "audio": "9"}}],
                }
            },
            "unknown token kind",
        ),
        (
            {"tokens": {"per": 1000000, "models": [{"model": "m", "price": {"input": "1"}}]}},
            "tokens.models[0].price.output",
        ),
        (
            {
                "tokens": {
                    "per": 1000000,
                    "models": [
                        {"model": "m", "price": {"input": "1", "output": "1"}},
                        {"model": "m", "price": {"input": "2", "output": "2"}},
                    ],
                }
            },
            "priced twice",
        ),
        (
            {
                "tokens": {
                    "per": 1000000,
                    "models": [{"model": "m", "pattern": "m*", "price": {"input": "1", "output": "1"}}],
                }
            },
            "exactly one",
        ),
        ({"gpus": {"per": 1, "models": [{"model": "l4", "price": "-1"}]}}, "gpus.models[0].price"),
        ({"surprise": 1}, "unknown top-level"),
    ],
)
def test_a_book_that_is_not_exact_or_not_clear_is_refused_naming_the_field(change, names):  # fmt: skip
    with pytest.raises(PriceBookError, match=re.escape(names)):
        parse_book(_book(**change))


def test_the_builtin_pricing_versions_written_as_data_load_equal_to_the_frozen_code():
    for code, version in PRICING_VERSIONS.items():
        data = yaml.safe_load((ROOT / "examples" / "pricing" / f"{code}.yaml").read_text())
        assert parse_pricing_version(data) == version  # same plans, rates, tiers, commitments: same invoices


def test_a_plan_file_names_its_mistakes():
    data = yaml.safe_load(V3.read_text())
    data["plans"][0]["rates"][0]["per_unit"] = 0.002
    with pytest.raises(PricingDataError, match=r"plans\[0\].rates\[0\].per_unit"):
        parse_pricing_version(data)
    data = yaml.safe_load(V3.read_text())
    del data["price_book"]
    with pytest.raises(PricingDataError, match="name price_book"):
        parse_pricing_version(data)
    data = yaml.safe_load(V3.read_text())
    data["plans"][0]["rates"][1]["book"] = "tokens"  # the gpu_seconds rate
    with pytest.raises(PricingDataError, match="prices tokens, not gpu_seconds"):
        parse_pricing_version(data)


# -- matching, kinds, windows ----------------------------------------------------------------------------


def test_a_model_matches_by_exact_name_then_pattern_then_default_and_otherwise_is_unpriced():
    book = load_file(BOOK)
    assert str(book.model("gpt-4o-mini", "openai").match) == "gpt-4o-mini"
    assert str(book.model("gpt-4o-mini-2024-07-18", "openai").match) == "pattern gpt-4o-mini-20*"
    assert book.model("claude-sonnet-4", "anthropic") is None  # no default in this book: unpriced
    with_default = parse_book(_book(tokens={"per": 1000000, "models": [
        {"pattern": "gpt-*", "price": {"input": "1", "output": "1"}},
        {"default": True, "price": {"input": "9", "output": "9"}},
        {"model": "gpt-4o", "price": {"input": "5", "output": "5"}},
    ]}))  # fmt: skip
    assert with_default.model("gpt-4o").price.input == 5  # exact wins over an earlier pattern
    assert with_default.model("gpt-3.5").price.input == 1
    assert with_default.model("claude").price.input == 9


def test_cached_and_reasoning_tokens_are_priced_once_never_on_top_of_input_and_output():
    kinds = split_tokens({"input_tokens": D(1000), "cache_read_tokens": D(800), "cache_write_tokens": D(100),
                          "output_tokens": D(300), "reasoning_tokens": D(200)})  # fmt: skip
    assert kinds == {
        "input": D(100),
        "cache_read": D(800),
        "cache_write": D(100),
        "output": D(100),
        "reasoning": D(200),
    }
    assert sum(kinds.values()) == 1300  # every token exactly once
    # inconsistent spans (a subset larger than its parent) never make a count negative or add tokens
    assert split_tokens({"input_tokens": D(10), "cache_read_tokens": D(50)}) == {"input": D(0), "cache_read": D(10)}


def test_a_book_version_prices_from_its_effective_hour_and_a_later_import_on_the_same_hour_supersedes():
    first = load_file(BOOK)
    later = parse_book(_book(version="2026-12b", effective_from="2026-12-15T00:00:00Z"))
    fix = parse_book(_book(version="2026-12c", effective_from="2026-12-15T00:00:00Z"))
    windows = book_windows([first, later, fix], DEC.start, DEC.end)
    assert [(w.start.day, w.book.version) for w in windows] == [(1, "2026-01"), (15, "2026-12c")]
    assert book_windows([later], DEC.start, DEC.end)[0].book is None  # nothing in force before the 15th


def test_diff_names_each_changed_price_with_its_percentage():
    old = load_file(BOOK)
    models = book_document(old)["tokens"]["models"]
    for entry in models:  # the same prices, now written per thousand tokens
        for side in ("price", "cost"):
            entry[side] = {kind: format(D(value) / 1000, "f") for kind, value in entry[side].items()}
    models[1]["price"]["input"] = "0.004"  # gpt-4o input: 5.00 -> 4.00 per million
    new = parse_book(_book(version="2026-12", tokens={"per": 1000, "models": models[:2]}))
    changes = diff_books(old, new)
    assert any(
        c.startswith("tokens gpt-4o via openai price.input: 0.005 -> 0.004 per 1000 (-20.0 %)") for c in changes
    ), changes
    assert "tokens pattern gpt-4o-mini-20* via openai: removed" in changes
    assert not any("gpt-4o-mini price" in c for c in changes)  # the same price per token: no change shown


def test_the_models_dev_importer_marks_up_cost_exactly_and_says_what_it_skipped():
    result = book_from_models_dev(
        read_models_dev(ROOT / "examples" / "prices" / "models-dev-sample.json"),
        code="public-llm", version="2026-12", effective_from=DEC.start, markup=D("0.25"),
        providers=["openai", "azure"],
    )  # fmt: skip
    book = result.book
    mini = book.model("gpt-4o-mini", "openai")
    assert mini.cost.input == D("0.15") and mini.price.input == D("0.1875")  # 0.15 × 1.25, no float on the way
    assert book.model("gpt-4o-mini", "azure").cost.input == D("0.165")  # each provider at its own cost
    assert book.model("gpt-4o-mini", "google") is None
    assert "openai/text-embedding-3-small: no input and output cost" in result.skipped
    assert result.ignored_cost_keys == ("input_audio", "output_audio")
    assert book.currency == "USD" and book.token_per == 1_000_000
    assert book.model("claude-sonnet-4-20250514", "anthropic") is None  # anthropic not chosen


# -- against a real ledger -------------------------------------------------------------------------------------

_key = iter(range(1, 10**9))


def _row(account, meter, quantity, when, *, model=None, gpu=None, plan="growth", provider="openai"):
    """A ledger row as the meters write it: a model call's rows name the model and its provider."""
    metadata = json.dumps(
        {
            **({"gen_ai.model": model} if model else {}),
            **({"gen_ai.provider.name": provider} if model and provider else {}),
            **({"gpu.model": gpu} if gpu else {}),
        }
    )
    micros = int(when.timestamp()) * 1_000_000
    unit = {"worker_seconds": "s", "gpu_seconds": "s", "api_requests": "{request}"}.get(meter, "{token}")
    key = f"{next(_key):032x}"
    return (micros, key, account, None, plan, meter, 1, str(quantity), unit, "ab" * 16, "cd" * 8, metadata)


def _write(db, rows, writer_class=LedgerWriter):
    with psycopg.connect(db) as conn:
        writer_class(conn).write_usage(rows)
        conn.commit()


class _WriterBefore0018(LedgerWriter):
    """The writer on a ledger older than migration 0018 (no key registry yet): rows straight into the ledger."""

    @staticmethod
    def _insert(cur, staged):
        from spanmeter.billing.ledger import writer

        cur.execute(writer._INSERT)
        return cur.rowcount, None


@pytest.fixture
def db(fresh_db):
    migrate.upgrade(resolve_database(fresh_db, data_dir=None))
    return fresh_db


def _import(db, *paths, drift=timedelta(days=2)):
    with psycopg.connect(db) as conn:
        for path in paths:
            item = prices.parse_any(yaml.safe_load(Path(path).read_text()) if isinstance(path, Path) else path)
            if isinstance(item, type(load_file(BOOK))):
                prices.import_book(conn, item, imported_by="test", drift_window=drift)
            else:
                prices.import_pricing_version(conn, item, imported_by="test")
        conn.commit()


def _subscribe(db, account, plan="growth", pricing="v3_models", currency=None, start=DEC.start):
    with psycopg.connect(db) as conn:
        subscriptions.set_subscription(conn, account_id=account, plan_code=plan, pricing_version=pricing,
                                       valid_from=start, created_by="test", currency=currency)  # fmt: skip
        conn.commit()


def _invoice(db, account, period=DEC):
    with psycopg.connect(db) as conn:
        return invoices.build_invoice(conn, account, period)


def _money(value: Decimal) -> Decimal:
    return value.quantize(D("0.01"), rounding=ROUND_HALF_UP)


def test_tokens_and_gpu_time_are_priced_per_model_at_the_book_in_force(db):
    _import(db, BOOK, _v3())
    _subscribe(db, "acme", pricing="v3_allow")
    day = DEC.start + timedelta(days=3)
    _write(db, [
        _row("acme", "input_tokens", 4_000_000, day, model="gpt-4o-mini"),
        _row("acme", "output_tokens", 1_000_000, day, model="gpt-4o-mini"),
        _row("acme", "input_tokens", 2_000_000, day, model="gpt-4o"),
        _row("acme", "output_tokens", 500_000, day, model="gpt-4o-2024-08-06"),  # priced nowhere: no pattern
        _row("acme", "gpu_seconds", 1000, day, gpu="l4"),
        _row("acme", "gpu_seconds", 1000, day, gpu="h100"),
    ])  # fmt: skip
    inv = _invoice(db, "acme")
    usage = {line.description.split(": ")[0]: line for line in inv.lines if line.kind == "usage"}
    # growth includes 5M tokens, applied to the dearest first: gpt-4o input (5.00/M) takes 2M, then
    # gpt-4o-mini output (1.20/M) 1M, then gpt-4o-mini input (0.30/M) 2M of its 4M
    assert usage["LLM tokens, gpt-4o via openai input (docpipe@2026-01)"].amount == D("0.00")
    assert usage["LLM tokens, gpt-4o-mini via openai output (docpipe@2026-01)"].amount == D("0.00")
    assert usage["LLM tokens, gpt-4o-mini via openai input (docpipe@2026-01)"].quantity == 2_000_000
    assert usage["LLM tokens, gpt-4o-mini via openai input (docpipe@2026-01)"].amount == D("0.60")  # 2M × 0.30/M
    assert usage["GPU-seconds, l4 (docpipe@2026-01)"].amount == D("0.25")  # 1000 × 0.00025
    assert usage["GPU-seconds, h100 (docpipe@2026-01)"].amount == D("1.20")  # the dearer GPU costs more
    assert inv.price_books == ("docpipe@2026-01",)
    assert [(u["model"], u["meter_code"], u["quantity"]) for u in inv.unpriced_models] == [
        ("gpt-4o-2024-08-06", "output_tokens", "500000")
    ]
    document = inv.to_dict()
    assert document["unpriced_models"] and document["price_books"] == ["docpipe@2026-01"]
    # a finalized invoice with unpriced usage would bill it at zero: refused, saying what to do
    with psycopg.connect(db) as conn, pytest.raises(invoices.InvoiceError, match="gpt-4o-2024-08-06"):
        invoices.finalize_invoice(conn, "acme", DEC, now=DEC.end + timedelta(days=3), finalized_by="test")
    # a version that prices it (a pattern for the dated snapshots), effective in the open month, settles it
    models = book_document(load_file(BOOK))["tokens"]["models"]
    models.append({"pattern": "gpt-4o-20*", "price": {"input": "5.00", "output": "20.00"}})
    _import(
        db, _book(version="2026-12", effective_from="2026-12-01T00:00:00Z", tokens={"per": 1000000, "models": models})
    )
    inv = _invoice(db, "acme")
    assert not inv.unpriced_models
    usage = {line.description.split(": ")[0]: line for line in inv.lines if line.kind == "usage"}
    assert inv.price_books == ("docpipe@2026-12",)  # in force from the 1st: the whole month at its prices
    # the newly priced snapshot (20.00/M output) is now the dearest group: the allowance covers it first,
    # and 500,000 more tokens of gpt-4o-mini input are billed than before
    assert usage["LLM tokens, gpt-4o-2024-08-06 via openai output (docpipe@2026-12)"].amount == D("0.00")
    assert usage["LLM tokens, gpt-4o-mini via openai input (docpipe@2026-12)"].quantity == 2_500_000
    assert usage["LLM tokens, gpt-4o-mini via openai input (docpipe@2026-12)"].amount == D("0.75")
    with psycopg.connect(db) as conn:
        done, created = invoices.finalize_invoice(conn, "acme", DEC, now=DEC.end + timedelta(days=3), finalized_by="t")
        conn.commit()
    assert created and done.total == inv.total


def test_a_mid_month_price_change_prices_each_side_at_its_version_and_the_allowance_once(db):
    _import(db, BOOK, _v3())
    _subscribe(db, "acme", plan="starter", pricing="v3_allow")  # 250,000 tokens included
    _write(db, [
        _row("acme", "input_tokens", 1_000_000, DEC.start + timedelta(days=2), model="gpt-4o-mini"),
        _row("acme", "input_tokens", 1_000_000, DEC.start + timedelta(days=20), model="gpt-4o-mini"),
    ])  # fmt: skip
    dearer = book_document(load_file(BOOK))
    dearer["tokens"]["models"][0]["price"]["input"] = "0.60"
    _import(db, _book(version="2026-12-15", effective_from="2026-12-15T00:00:00Z", tokens=dearer["tokens"]))
    lines = {
        line.description.split(": ")[0]: line for line in _invoice(db, "acme").lines if line.meter_code == "tokens"
    }
    before = lines["LLM tokens, gpt-4o-mini via openai input (docpipe@2026-01)"]
    after = lines["LLM tokens, gpt-4o-mini via openai input (docpipe@2026-12-15)"]
    assert after.quantity == 750_000 and after.amount == D("0.45")  # the allowance went to the dearer side
    assert before.quantity == 1_000_000 and before.amount == D("0.30")


def test_versions_are_immutable_and_never_take_effect_inside_an_invoiced_month(db):
    _import(db, BOOK, V3)
    _import(db, BOOK)  # the same document again: nothing changes
    with psycopg.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM price_books").fetchone()[0] == 1
        changed = parse_book(_book(description="edited"))
        with pytest.raises(prices.PricesError, match="frozen"):
            prices.import_book(conn, changed, imported_by="t", drift_window=timedelta(days=2))
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
            conn.execute("UPDATE price_books SET currency = 'USD'")
    _subscribe(db, "acme", start=Period(2026, 11).start)
    _write(db, [_row("acme", "input_tokens", 10, Period(2026, 11).start + timedelta(days=1), model="gpt-4o")])
    with psycopg.connect(db) as conn:
        invoices.finalize_invoice(conn, "acme", Period(2026, 11), now=DEC.start + timedelta(days=3), finalized_by="t")
        conn.commit()
        late = parse_book(_book(version="2026-11b", effective_from="2026-11-20T00:00:00Z"))
        with pytest.raises(prices.PricesError, match="earliest is 2026-12-03T00:00Z"):
            prices.import_book(conn, late, imported_by="t", drift_window=timedelta(days=2))
        on_time = parse_book(_book(version="2026-12b", effective_from="2026-12-03T00:00:00Z"))
        assert prices.import_book(conn, on_time, imported_by="t", drift_window=timedelta(days=2))
        with pytest.raises(prices.PricesError, match="built-in"):
            prices.import_pricing_version(conn, PRICING_VERSIONS["v2_compute"], imported_by="t")


def test_a_usd_plan_is_billed_in_usd_and_a_book_in_another_currency_is_refused(db):
    _import(db, BOOK_USD, V3_USD)
    _subscribe(db, "initech", pricing="v3_models_usd", currency="USD")
    _write(db, [_row("initech", "gpu_seconds", 10_000, DEC.start + timedelta(days=1), gpu="h100")])
    inv = _invoice(db, "initech")
    assert inv.currency == "USD" and all(line.currency == "USD" for line in inv.lines)
    assert inv.to_dict()["total"] == "341.00"  # the USD base fee 329.00 + 10,000 h100-seconds × 0.00120
    with psycopg.connect(db) as conn:
        eur_on_usd = parse_pricing_version(
            {**yaml.safe_load(V3.read_text()), "pricing_version": "v3_eur", "price_book": "docpipe-usd"}
        )
        with pytest.raises(prices.PricesError, match="never converts"):
            prices.import_pricing_version(conn, eur_on_usd, imported_by="t")
        with pytest.raises(subscriptions.SubscriptionError, match="priced in USD, not EUR"):
            subscriptions.set_subscription(conn, account_id="x", plan_code="growth", pricing_version="v3_models_usd",
                                           valid_from=DEC.start, created_by="t", currency="EUR")  # fmt: skip


def test_v2_invoices_are_identical_whether_or_not_books_and_v3_are_imported(db):
    _subscribe(db, "globex", pricing="v2_compute")
    _write(db, [
        _row("globex", "input_tokens", 9_000_000, DEC.start + timedelta(days=1), model="gpt-4o"),
        _row("globex", "gpu_seconds", 700, DEC.start + timedelta(days=1), gpu="h100"),
        _row("globex", "worker_seconds", 50_000, DEC.start + timedelta(days=1)),
    ])  # fmt: skip
    before = _invoice(db, "globex").to_dict()
    _import(db, BOOK, V3)
    after = _invoice(db, "globex").to_dict()
    assert after == before
    assert "price_books" not in after and "unpriced_models" not in after  # the document's form is unchanged


MONTH_HOURS = 31 * 24
_examples = iter(range(10**6))


def _books_for(n: int, change_hour: int) -> tuple:
    """Example ``n``'s own book (two versions, the second dearer from ``change_hour``) and pricing version."""
    base = {**book_document(load_file(BOOK)), "book": f"dp{n}"}
    for entry in base["tokens"]["models"]:  # any provider's rows, but azure sells gpt-4o-mini at its own price
        entry.pop("provider", None)
    base["tokens"]["models"].append(
        {"model": "gpt-4o-mini", "provider": "azure", "price": {"input": "0.33", "output": "1.32"}}
    )
    dearer = json.loads(json.dumps(base))
    for entry in dearer["tokens"]["models"]:
        entry["price"] = {kind: format(D(value) * 2, "f") for kind, value in entry["price"].items()}
    dearer["gpus"]["models"][1]["price"] = "0.00200"
    at = DEC.start + timedelta(hours=change_hour)
    dearer.update(version="dearer", effective_from=at.isoformat())
    return parse_book(base), parse_book(dearer)


@pytest.fixture(scope="module")
def ledger(module_db):
    migrate.upgrade(resolve_database(module_db, data_dir=None))
    return module_db


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rows=st.lists(
        st.tuples(
            st.sampled_from(["input_tokens", "output_tokens", "gpu_seconds"]),
            st.sampled_from(["gpt-4o-mini", "gpt-4o", "gpt-4o-mini-2024-07-18"]),
            st.sampled_from(["openai", "azure", ""]),
            st.sampled_from(["l4", "h100"]),
            st.integers(1, 3_000_000),
            st.integers(0, MONTH_HOURS - 1),
        ),
        min_size=1,
        max_size=25,
    ),
    change_hour=st.integers(1, MONTH_HOURS - 1),
    plan=st.sampled_from(["starter", "growth", "scale"]),
    allowance=st.sampled_from(["0", "250000", "5000000"]),
)
def test_invoices_from_rollups_equal_the_raw_rows_priced_by_hand_to_the_cent(
    ledger, rows, change_hour, plan, allowance
):
    n = next(_examples)
    book_a, book_b = _books_for(n, change_hour)
    allowances = dict.fromkeys(V2_TOKEN_ALLOWANCES, allowance)
    version = parse_pricing_version(_v3(f"v3x{n}", f"dp{n}", allowances))
    with psycopg.connect(ledger) as conn:
        prices.import_book(conn, book_a, imported_by="t", drift_window=timedelta(days=2))
        prices.import_book(conn, book_b, imported_by="t", drift_window=timedelta(days=2))
        prices.import_pricing_version(conn, version, imported_by="t")
        conn.commit()
    account = f"acct{n}"
    _subscribe(ledger, account, plan=plan, pricing=version.code)
    usage = []
    for meter, model, provider, gpu, quantity, hour in rows:
        when = DEC.start + timedelta(hours=hour, minutes=7)
        if meter == "gpu_seconds":
            usage.append(_row(account, meter, quantity, when, gpu=gpu))
        else:
            usage.append(_row(account, meter, quantity, when, model=model, provider=provider))
    _write(ledger, usage)
    inv = _invoice(ledger, account)
    # the oracle: every raw row priced at the version in force at its own time, grouped, the allowance to the
    # dearest first, each group rounded once; independent of rollups, windows and the rating code
    groups: dict[tuple[str, str, str, str], list[Decimal]] = {}
    with psycopg.connect(ledger) as conn:
        raw = conn.execute(
            "SELECT meter_code, coalesce(metadata->>'gen_ai.model', metadata->>'gpu.model'),"
            " coalesce(metadata->>'gen_ai.provider.name', ''), quantity, occurred_at"
            " FROM usage_events WHERE account_id = %s",
            (account,),
        ).fetchall()
    for meter, dim, provider, quantity, occurred in raw:
        book = book_b if occurred >= book_b.effective_from else book_a
        if meter == "gpu_seconds":
            key, unit_price = (dim, "", "gpu", book.label), book.gpu(dim).price / book.gpu_per
        else:
            kind = meter.split("_")[0]
            entry = book.model(dim, provider)  # azure's own price for gpt-4o-mini, else the any-provider entry
            key, unit_price = (dim, provider, kind, book.label), entry.price.of(kind) / book.token_per
        groups.setdefault(key, [D(0), unit_price])[0] += quantity
    included = {r.metric: r.included for r in version.plans[plan].rates}
    expected: dict[tuple[str, str, str, str], Decimal] = {}
    for metric, kinds in (("tokens", ("input", "output")), ("gpu_seconds", ("gpu",))):
        left = included[metric]
        for key in sorted((k for k in groups if k[2] in kinds), key=lambda k: (-groups[k][1], k[0], k[1], k[2])):
            free = min(left, groups[key][0])
            left -= free
            expected[key] = _money((groups[key][0] - free) * groups[key][1])
    got = {
        (line.dimension, line.provider or "", line.usage_kind, line.price_book): line.amount
        for line in inv.lines
        if line.dimension is not None
    }
    assert got == expected
    assert not inv.unpriced_models
    assert inv.total == sum((line.amount for line in inv.lines), D(0))


def test_the_prices_commands_import_show_diff_and_list_unpriced_usage(db, tmp_path):
    env = {"SPANMETER_DATABASE_URL": db}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        import os

        return subprocess.run([sys.executable, "-m", "spanmeter", *args], capture_output=True, text=True, timeout=120,
                              env={**os.environ, **env})  # fmt: skip

    assert "imported: price book docpipe@2026-01" in cli("prices", "import", str(BOOK)).stdout
    assert "already imported" in cli("prices", "import", str(BOOK)).stdout
    assert "imported: pricing version v3_models over book docpipe" in cli("prices", "import", str(V3)).stdout
    newer = tmp_path / "newer.yaml"
    document = book_document(load_file(BOOK))
    document.update(version="2026-12", effective_from="2026-12-01T00:00:00Z")
    document["gpus"]["models"][0]["price"] = "0.00030"
    newer.write_text(yaml.safe_dump(document))
    cli("prices", "import", str(newer))
    shown = cli("prices", "show").stdout
    assert "docpipe@2026-01" in shown and "docpipe@2026-12" in shown and "pricing version v3_models" in shown
    diff = cli("prices", "diff", "docpipe@2026-01", "docpipe@2026-12")
    assert diff.returncode == 0 and "gpus l4 price: 0.00025 -> 0.0003 per 1 (+20.0 %)" in diff.stdout
    _subscribe(db, "acme")
    _write(db, [_row("acme", "output_tokens", 1000, DEC.start + timedelta(hours=5), model="mystery-model")])
    unpriced = cli("prices", "unpriced", "--period", "2026-12")
    assert unpriced.returncode == 1 and "mystery-model" in unpriced.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        yaml.safe_dump(
            {**document, "tokens": {"per": 1000000, "models": [{"model": "m", "price": {"input": 0.5, "output": "1"}}]}}
        )
    )
    refused = cli("prices", "import", str(bad))
    assert (
        refused.returncode == 2
        and "tokens.models[0].price.input" in refused.stderr
        and "Traceback" not in refused.stderr
    )
    models_dev = cli("prices", "import", "--models-dev", str(ROOT / "examples/prices/models-dev-sample.json"), "--book",
                     "public-llm", "--version", "2026-12", "--from", "2026-12-01T00:00:00Z", "--markup", "0.25")  # fmt: skip
    assert models_dev.returncode == 0 and "imported: price book public-llm@2026-12 (USD" in models_dev.stdout


def test_invoice_explain_traces_every_line_to_its_rows_jobs_traces_corrections_and_book_version(db):
    _import(db, BOOK, V3)
    _subscribe(db, "acme", plan="starter")
    day = DEC.start + timedelta(days=4)
    rows = [
        _row("acme", "input_tokens", 300_000, day, model="gpt-4o"),
        _row("acme", "input_tokens", 200_000, day + timedelta(hours=1), model="gpt-4o"),
        _row("acme", "input_tokens", 900_000, day, model="gpt-4o-mini"),
        _row("acme", "worker_seconds", 5000, day),
    ]
    _write(db, rows)
    with psycopg.connect(db) as conn:
        from spanmeter.billing import adjustments

        adjustments.record(conn, idempotency_key="OPS-9", account_id="acme", meter_code="worker_seconds",
                           quantity=D(-400), occurred_at=day, reason="runaway retry loop, OPS-9", created_by="finance")  # fmt: skip
        conn.commit()
    env = {"SPANMETER_DATABASE_URL": db, "SPANMETER_TRACE_URL_TEMPLATE": "http://tempo:3200/trace/{trace_id}"}
    import os

    out = subprocess.run(
        [sys.executable, "-m", "spanmeter", "invoice", "explain", "--account", "acme", "--period", "2026-12",
         "--format", "json"],
        capture_output=True, text=True, timeout=120, env={**os.environ, **env},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    explained = json.loads(out.stdout)
    by_description = {e["line"]["description"].split(": ")[0]: e for e in explained["lines"]}
    gpt4o = by_description["LLM tokens, gpt-4o via openai input (docpipe@2026-01)"]
    assert gpt4o["meters"] == ["input_tokens"] and gpt4o["dimension"] == "gpt-4o"
    assert gpt4o["totals"] == [{"meter_code": "input_tokens", "rows": "2", "quantity": "500000",
                                "first": "2026-12-05T00:00:00Z", "last": "2026-12-05T01:00:00Z"}]  # fmt: skip
    [job] = gpt4o["top_jobs"]  # the rows carry no job id
    assert (job["job_id"], job["rows"], job["quantity"]) == ("(no job)", "2", "500000")
    assert job["url"] == "http://tempo:3200/trace/" + "ab" * 16
    assert "priced by docpipe@2026-01 (input)" in gpt4o["basis"]
    worker = next(e for e in explained["lines"] if e["line"]["meter_code"] == "worker_seconds")
    assert worker["totals"][0]["quantity"] == "5000"
    assert [(c["key"], c["quantity"], c["reason"]) for c in worker["corrections"]] == [
        ("OPS-9", "-400", "runaway retry loop, OPS-9")
    ]
    fee = next(e for e in explained["lines"] if e["line"]["kind"] == "fee")
    assert "starter (v3_models)" in fee["basis"]
    one = subprocess.run(
        [sys.executable, "-m", "spanmeter", "invoice", "explain", "--account", "acme", "--period", "2026-12", "--line", "99"],
        capture_output=True, text=True, timeout=120, env={**os.environ, **env},
    )  # fmt: skip
    assert one.returncode == 2 and "--line 99: the invoice has lines 1 to" in one.stderr


def test_invoice_explain_ranks_jobs_over_every_meter_of_a_flat_rate_line_and_leaves_the_session_as_it_was(db):
    from spanmeter.billing.explain import explain_invoice

    _subscribe(db, "acme", pricing="v2_compute")  # one token rate: input and output are one line, "tokens"
    day = DEC.start + timedelta(days=2)

    def run(meter, quantity, job, model, *, later=timedelta(0), trace="ab" * 16):  # a row of a Celery job's model call
        row = _row("acme", meter, quantity, day + later, model=model)
        return (*row[:3], job, *row[4:9], trace, *row[10:])

    _write(db, [
        run("input_tokens", 700, "job-a", "gpt-4o", trace="f1" * 16),
        run("output_tokens", 600, "job-a", "gpt-4o-mini", later=timedelta(hours=1), trace="01" * 16),  # job-a: 1,300
        # over both meters and two models, in two traces; its first row's trace is the one shown
        run("input_tokens", 1000, "job-b", "gpt-4o"),
        *(run("output_tokens", 10 + i, f"job-{i:02d}", "gpt-4o") for i in range(8)),  # 10 ... 17
        _row("acme", "worker_seconds", 50, day),  # a row without a job
    ])  # fmt: skip
    with psycopg.connect(db) as conn:
        settings = (
            "SELECT current_setting('enable_sort'), current_setting('work_mem'), "
            "current_setting('parallel_tuple_cost'), current_setting('max_parallel_workers_per_gather')"
        )
        before = conn.execute(settings).fetchone()
        _, explained = explain_invoice(conn, "acme", DEC)
        assert conn.execute(settings).fetchone() == before  # the explain's plan settings stay its own
    tokens = next(e for e in explained if e.line.get("meter_code") == "tokens")
    assert [(j["job_id"], j["rows"], j["quantity"]) for j in tokens.top_jobs] == [
        ("job-a", "2", "1300"), ("job-b", "1", "1000"), ("job-07", "1", "17"), ("job-06", "1", "16"),
        ("job-05", "1", "15"),
    ]  # fmt: skip
    assert [j["trace_id"] for j in tokens.top_jobs[:2]] == ["f1" * 16, "ab" * 16]
    assert [(t["meter_code"], t["rows"], t["quantity"]) for t in tokens.totals] == [
        ("input_tokens", "2", "1700"),
        ("output_tokens", "9", "708"),
    ]
    worker = next(e for e in explained if e.line.get("meter_code") == "worker_seconds")
    assert [(j["job_id"], j["quantity"]) for j in worker.top_jobs] == [("(no job)", "50")]


def _two_books_two_segments(db):
    """acme moves from v3_models (book docpipe) to a version over book "other" on 11 December; "other" has a
    version from 5 December, so the docpipe lines before the move are read in two price windows. job-x bills
    gpt-4o input tokens on 3 and 9 December, job-y on 13 December (after the move)."""
    from spanmeter.billing.explain import explain_invoice

    _import(db, BOOK, V3, _book(book="other", version="2026-12a", effective_from="2026-12-01T00:00:00Z"),
            _book(book="other", version="2026-12b", effective_from="2026-12-05T00:00:00Z"),
            _v3(code="v3_other", book="other", allowances={"starter": "0", "growth": "0", "scale": "0",
                                                          "platform": "0"}))  # fmt: skip
    _subscribe(db, "acme", plan="starter")
    _subscribe(db, "acme", plan="starter", pricing="v3_other", start=DEC.start + timedelta(days=10))

    def run(quantity, job, day, trace):
        row = _row("acme", "input_tokens", quantity, DEC.start + timedelta(days=day), model="gpt-4o")
        return (*row[:3], job, *row[4:9], trace, *row[10:])

    def work(seconds, job, day):
        row = _row("acme", "worker_seconds", seconds, DEC.start + timedelta(days=day))
        return (*row[:3], job, *row[4:])

    _write(db, [run(300, "job-x", 8, "01" * 16), run(100, "job-x", 2, "f1" * 16), run(50, "job-y", 12, "cc" * 16),
                work(10, "job-w1", 2), work(20, "job-w2", 12)])  # fmt: skip
    with psycopg.connect(db) as conn:
        _, explained = explain_invoice(conn, "acme", DEC)
    [line] = [e for e in explained if (e.line.get("price_book") or "").startswith("docpipe@")
              and e.line.get("dimension") == "gpt-4o" and e.line.get("usage_kind") == "input"]  # fmt: skip
    return line, explained


def test_a_job_split_by_another_books_price_window_shows_its_earliest_rows_trace(db):
    line, _ = _two_books_two_segments(db)
    [job] = [j for j in line.top_jobs if j["job_id"] == "job-x"]
    assert (job["rows"], job["quantity"], job["trace_id"]) == ("2", "400", "f1" * 16)
    assert job["first"].startswith("2026-12-03") and job["last"].startswith("2026-12-09")


def test_a_line_of_a_mid_month_subscription_segment_explains_only_that_segments_rows(db):
    line, explained = _two_books_two_segments(db)
    assert line.window == ("2026-12-01T00:00:00Z", "2026-12-11T00:00:00Z")
    assert [(t["rows"], t["quantity"]) for t in line.totals] == [("2", "400")]
    assert [j["job_id"] for j in line.top_jobs] == ["job-x"]
    # a flat-rate line (worker-seconds) of each segment: that segment's rows and jobs alone
    worker = [e for e in explained if e.line.get("meter_code") == "worker_seconds"]
    assert [(e.window, [(t["rows"], t["quantity"]) for t in e.totals], [j["job_id"] for j in e.top_jobs])
            for e in worker] == [
        (("2026-12-01T00:00:00Z", "2026-12-11T00:00:00Z"), [("1", "10")], ["job-w1"]),
        (("2026-12-11T00:00:00Z", "2027-01-01T00:00:00Z"), [("1", "20")], ["job-w2"]),
    ]  # fmt: skip


def test_margin_sets_the_books_cost_against_revenue_and_month_to_date_carries_cost_and_unpriced(db):
    from spanmeter.billing import quotas
    from spanmeter.billing.component import BillingComponent
    from spanmeter.billing.ledger.database import resolve_database as resolve
    from spanmeter.billing.margin import account_margin, group_rows

    _import(db, BOOK, V3)  # v3 includes no tokens: every token is revenue
    _subscribe(db, "acme", plan="starter")
    day = DEC.start + timedelta(days=2)
    _write(db, [
        _row("acme", "input_tokens", 2_000_000, day, model="gpt-4o"),  # price 5.00/M, cost 2.30/M
        _row("acme", "gpu_seconds", 10_000, day, gpu="h100"),  # price 0.00120/s, cost 0.00085/s
        _row("acme", "output_tokens", 1_000, day, model="unknown-model"),  # unpriced
    ])  # fmt: skip
    with psycopg.connect(db) as conn:
        rows = account_margin(conn, "acme", DEC)
    by_model = {r["model"]: r for r in group_rows(rows, "model")}
    assert by_model["gpt-4o"]["revenue"] == "10.00" and by_model["gpt-4o"]["cost"] == "4.60"
    assert by_model["gpt-4o"]["margin"] == "5.40" and by_model["gpt-4o"]["margin_pct"] == "54.0"
    assert by_model["h100"]["revenue"] == "12.00" and by_model["h100"]["cost"] == "8.50"
    assert by_model["(no model)"]["revenue"] == "49.00"  # the base fee: revenue with no provider cost
    assert "unknown-model" not in by_model  # unpriced: no revenue to set a cost against (listed elsewhere)
    # month to date for the dashboard: provider cost so far and the unpriced pairs, beside the draft
    now = DEC.start + timedelta(days=10)
    with psycopg.connect(db) as conn:
        quotas.refresh_month_to_date(conn, now)
        cost, unpriced, so_far = conn.execute(
            "SELECT cost_so_far, unpriced_items, invoice_so_far FROM account_month_to_date WHERE account_id = 'acme'"
        ).fetchone()
    assert (cost, unpriced) == (D("13.10"), 1)
    assert so_far == D("71.00")  # 49.00 + 10.00 + 12.00
    # serve's billing component exports the month's unpriced pairs (spanmeter_unpriced_usage_items)
    current = Period.containing(datetime.now(UTC))
    _subscribe(db, "globex", plan="growth", start=current.start)
    _write(db, [_row("globex", "input_tokens", 10, datetime.now(UTC).replace(microsecond=0), model="new-model")])
    snapshot = BillingComponent(resolve(db, data_dir=None)).refresh()
    assert snapshot.leader and snapshot.unpriced_items == 1 + (current == DEC)  # acme's too, in December 2026


def test_cached_input_is_priced_once_at_the_cache_price_on_a_real_invoice(db):
    _import(db, BOOK, V3)  # no token allowance in v3: every token is billed
    _subscribe(db, "acme", plan="starter")
    day = DEC.start + timedelta(days=1)
    _write(db, [
        _row("acme", "input_tokens", 1_000_000, day, model="gpt-4o"),  # the span's input count, cache included
        _row("acme", "cache_read_tokens", 800_000, day, model="gpt-4o"),  # of which read from the cache
    ])  # fmt: skip
    lines = {line.usage_kind: line for line in _invoice(db, "acme").lines if line.dimension == "gpt-4o"}
    assert lines["input"].quantity == 200_000 and lines["input"].amount == D("1.00")  # 200k × 5.00/M
    assert lines["cache_read"].quantity == 800_000 and lines["cache_read"].amount == D("2.00")  # 800k × 2.50/M
    # the trap: input price on the whole input count plus the cache price would be 5.00 + 2.00
    assert sum(line.amount for line in lines.values()) == D("3.00")


def test_an_entry_for_a_provider_prices_only_its_rows_and_wins_over_the_any_provider_entry():
    book = parse_book(_book(tokens={"per": 1000000, "models": [
        {"model": "gpt-4o-mini", "price": {"input": "0.30", "output": "1.20"}},
        {"model": "gpt-4o-mini", "provider": "azure", "price": {"input": "0.33", "output": "1.32"}},
        {"pattern": "claude-*", "provider": "anthropic", "price": {"input": "3", "output": "15"}},
    ]}))  # fmt: skip
    assert book.model("gpt-4o-mini", "azure").price.input == D("0.33")
    assert book.model("gpt-4o-mini", "openai").price.input == D("0.30")
    assert book.model("gpt-4o-mini").price.input == D("0.30")  # a span that named no provider
    assert book.model("claude-sonnet-4", "anthropic").price.output == 15
    assert book.model("claude-sonnet-4", "bedrock") is None  # an entry for another provider never matches
    with pytest.raises(PriceBookError, match="for provider azure is priced twice"):
        parse_book(_book(tokens={"per": 1000000, "models": [
            {"model": "m", "provider": "azure", "price": {"input": "1", "output": "1"}},
            {"model": "m", "provider": "azure", "price": {"input": "2", "output": "2"}},
        ]}))  # fmt: skip


def test_migration_0014_recomputes_existing_rollups_with_their_provider_and_goes_back(fresh_db):
    from alembic import command

    from spanmeter.billing.ledger import rollup_store
    from spanmeter.billing.ledger.migrate import _config

    database = resolve_database(fresh_db, data_dir=None)
    migrate.upgrade(database, "0013_month_to_date_cost")
    day = DEC.start + timedelta(days=1)
    _write(fresh_db, [
        _row("acme", "input_tokens", 100, day, model="gpt-4o-mini", provider="openai"),
        _row("acme", "input_tokens", 40, day, model="gpt-4o-mini", provider="azure"),
        _row("acme", "input_tokens", 5, day + timedelta(hours=1), model="gpt-4o-mini", provider="azure"),
    ], _WriterBefore0018)  # fmt: skip
    with psycopg.connect(fresh_db) as conn:  # some folded, one still a pending delta
        conn.execute("SELECT * FROM spanmeter_fold_rollups(1)")
        conn.commit()
    migrate.upgrade(database)
    with psycopg.connect(fresh_db) as conn:
        assert rollup_store.check(conn) == []
        rows = conn.execute(
            "SELECT provider, sum(quantity) FROM usage_rollups_daily_live WHERE account_id = 'acme' GROUP BY 1 ORDER BY 1"
        ).fetchall()
        assert rows == [("azure", D(45)), ("openai", D(100))]
    _write(fresh_db, [_row("acme", "input_tokens", 1, day, model="gpt-4o-mini", provider="azure")])  # the new trigger
    with psycopg.connect(fresh_db) as conn:
        assert rollup_store.fold(conn).deltas == 1 and rollup_store.check(conn) == []
    engine = database.engine()
    with engine.begin() as connection:
        command.downgrade(_config(connection), "0013_month_to_date_cost")
    engine.dispose()
    with psycopg.connect(fresh_db) as conn:
        assert conn.execute("SELECT sum(quantity) FROM usage_rollups_daily WHERE account_id = 'acme'").fetchone() == (
            D(146),
        )
        assert conn.execute("SELECT count(*) FROM usage_rollups_daily").fetchone() == (1,)  # providers summed


# -- found by review ----------------------------------------------------------------------------------------


def test_an_empty_provider_is_refused_rather_than_stored_as_any_provider():
    with pytest.raises(PriceBookError, match="provider: a non-empty string"):
        parse_book(_book(tokens={"per": 1000000, "models": [
            {"model": "x", "provider": "", "price": {"input": "1", "output": "1"}}]}))  # fmt: skip


def test_a_producer_allowed_a_token_meter_may_bill_its_subsets(tmp_path):
    from spanmeter.collector.auth import load_producers

    path = tmp_path / "producers.toml"
    path.write_text(
        '[[producer]]\nname = "llm-gw"\nservices = ["*"]\nmeters = ["input_tokens", "output_tokens"]\n'
        'accounts = ["*"]\ntoken_sha256 = ["' + "0" * 64 + '"]\n'
    )
    producer = load_producers(path).by_name("llm-gw")
    assert producer.allows("svc", ["input_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens"])
    assert not producer.allows("svc", ["worker_seconds"])


def test_diff_tells_the_providers_of_one_model_apart():
    entries = [
        {"model": "gpt-4o", "provider": "openai", "price": {"input": "1", "output": "1"}},
        {"model": "gpt-4o", "provider": "azure", "price": {"input": "2", "output": "2"}},
    ]
    old = parse_book(_book(tokens={"per": 1000000, "models": entries}))
    changed = json.loads(json.dumps(entries))
    changed[0]["price"]["input"] = "9"
    new = parse_book(_book(version="2026-12", tokens={"per": 1000000, "models": changed}))
    changes = diff_books(old, new)
    assert changes[0] == "tokens gpt-4o via openai price.input: 1 -> 9 per 1000000 (+800.0 %)"
    assert all("via openai" in c for c in changes)  # cache prices follow input (no price of their own): 3 lines


def test_a_negative_correction_of_book_priced_tokens_is_credited_and_takes_no_allowance(db):
    from spanmeter.billing import adjustments

    models = book_document(load_file(BOOK))["tokens"]["models"]
    models.append({"default": True, "price": {"input": "5.00", "output": "20.00"}})  # prices usage without a model
    _import(db, _book(version="2026-01b", tokens={"per": 1000000, "models": models}), _v3())
    _subscribe(db, "acme", plan="starter", pricing="v3_allow")  # 250,000 tokens included
    day = DEC.start + timedelta(days=2)
    _write(db, [_row("acme", "input_tokens", 2_000_000, day, model="gpt-4o")])
    with psycopg.connect(db) as conn:
        adjustments.record(conn, idempotency_key="OPS-7", account_id="acme", meter_code="input_tokens",
                           quantity=D(-1_000_000), occurred_at=day, reason="double-reported batch", created_by="f")  # fmt: skip
        conn.commit()
    lines = {
        (line.dimension, line.usage_kind): line for line in _invoice(db, "acme").lines if line.dimension is not None
    }
    credit = lines[("", "input")]  # the correction names no model: the default entry prices it
    assert credit.quantity == -1_000_000 and credit.amount == D("-5.00")
    gpt4o = lines[("gpt-4o", "input")]
    assert gpt4o.quantity == 1_750_000 and gpt4o.amount == D("8.75")  # the whole allowance, once, here


def test_late_usage_of_an_unpriced_model_blocks_the_invoice_that_would_carry_it(db):
    _import(db, BOOK, V3)
    nov = Period(2026, 11)
    _subscribe(db, "acme", plan="starter", start=nov.start)
    _write(db, [_row("acme", "input_tokens", 1000, nov.start + timedelta(days=3), model="gpt-4o")])
    with psycopg.connect(db) as conn:
        invoices.finalize_invoice(conn, "acme", nov, now=DEC.start + timedelta(days=3), finalized_by="t")
        conn.commit()
    _write(db, [_row("acme", "input_tokens", 500, nov.start + timedelta(days=4), model="mystery")])  # late, unpriced
    draft = _invoice(db, "acme")
    assert [(u["model"], u["reference_period"]) for u in draft.unpriced_models] == [("mystery", "2026-11")]
    with psycopg.connect(db) as conn, pytest.raises(invoices.InvoiceError, match="mystery"):
        invoices.finalize_invoice(conn, "acme", DEC, now=DEC.end + timedelta(days=3), finalized_by="t")


def test_margin_keeps_each_segments_cost_when_the_plan_changes_mid_month(db):
    from spanmeter.billing.margin import account_margin

    _import(db, BOOK, V3)
    _subscribe(db, "acme", plan="starter")
    _subscribe(db, "acme", plan="growth", start=DEC.start + timedelta(days=15))
    _write(db, [
        _row("acme", "input_tokens", 1_000_000, DEC.start + timedelta(days=2), model="gpt-4o"),
        _row("acme", "input_tokens", 3_000_000, DEC.start + timedelta(days=20), model="gpt-4o"),
    ])  # fmt: skip
    with psycopg.connect(db) as conn:
        rows = [r for r in account_margin(conn, "acme", DEC) if r.model == "gpt-4o"]
    assert sorted((r.quantity, r.cost) for r in rows) == [(1_000_000, D("2.30")), (3_000_000, D("6.90"))]


def test_a_book_import_waits_while_an_invoice_is_being_finalized(db):
    from spanmeter.billing.ledger import locks

    _import(db, BOOK, V3)
    newer = parse_book(_book(version="2026-12", effective_from="2026-12-01T00:00:00Z"))
    with psycopg.connect(db) as finalizing, psycopg.connect(db) as importing:
        locks.hold_prices(finalizing, exclusive=False)  # what finalize_invoice takes first, until it commits
        importing.execute("SET lock_timeout = '300ms'")
        with pytest.raises(psycopg.errors.LockNotAvailable):
            prices.import_book(importing, newer, imported_by="t", drift_window=timedelta(days=2))
        importing.rollback()
        finalizing.commit()  # the invoice is stored (or not): now the import checks against it
        importing.execute("SET lock_timeout = '3s'")
        assert prices.import_book(importing, newer, imported_by="t", drift_window=timedelta(days=2))


@pytest.mark.parametrize(
    ("document", "names"),
    [
        (
            lambda: _book(
                tokens={
                    "per": 1000000,
                    "models": [{"model": "x", "provider": ["openai"], "price": {"input": "1", "output": "1"}}],
                }
            ),
            "tokens.models[0].provider",
        ),
        (lambda: {**_book(), 7: "seven"}, "keys are names (strings), got 7"),
        (lambda: _book(tokens={"per": 1000000, "models": [{"model": "x", "price": {1: "1"}}]}), "got 1"),
    ],
)
def test_odd_yaml_gives_a_message_naming_the_field_never_a_type_error(document, names):  # fmt: skip
    with pytest.raises(PriceBookError, match=re.escape(names)):
        parse_book(document())
    with pytest.raises(PricingDataError, match="keys are names"):
        parse_pricing_version({**yaml.safe_load(V3.read_text()), 3: "x"})


def test_the_models_dev_importer_skips_odd_costs_and_refuses_an_odd_markup():
    data = {
        "p": {
            "models": {
                "a": {"cost": {"input": None, "output": D(1)}},
                "b": {"cost": {"input": D("0.5"), "output": D(1)}},
            }
        }
    }
    result = book_from_models_dev(data, code="x", version="1", effective_from=DEC.start, markup=D(0))
    assert [e.match.value for e in result.book.tokens] == ["b"]
    assert result.skipped == ("p/a: cost input is not a number ≥ 0",)
    with pytest.raises(PriceBookError, match="--markup must be a number"):
        book_from_models_dev(data, code="x", version="1", effective_from=DEC.start, markup=D("NaN"))
