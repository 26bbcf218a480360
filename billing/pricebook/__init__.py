"""Price books: what each LLM model and GPU model costs, as versioned, effective-dated data.

A price book is a file (YAML or JSON) imported into the ledger with ``spanmeter prices import``; an invoice
prices model and GPU usage with the version in force when the usage occurred. An example:
``demo/pricing/docpipe-2026-01.yaml`` (the demo's book; more in ``examples/prices/``)::

    book: docpipe                      # the book's code; plans name it (price_book: docpipe)
    version: "2026-12"                 # unique within the book; quote it
    effective_from: 2026-12-01T00:00:00Z   # a whole UTC hour
    currency: EUR                      # every price in the book; plans priced from it must match
    tokens:
      per: 1000000                     # prices per million tokens (a power of ten: unit prices stay exact)
      models:
        - model: docpipe-extractor-large            # 1. the exact model name (the response model, as stored)
          provider: openai
          price: {input: "3.00", output: "15.00", cache_read: "0.30", cache_write: "3.75", reasoning: "15.00"}
          cost:  {input: "2.50", output: "10.00", cache_read: "0.25", cache_write: "3.125"}
        - pattern: "docpipe-extractor-large-20*"   # 2. a pattern: the dated snapshots of one model
          price: {input: "3.00", output: "15.00"}
        - default: true                             # 3. anything else (leave it out to list unknown models)
          price: {input: "5.00", output: "20.00"}
    gpus:
      per: 1                           # prices per GPU-second
      models:
        - {model: H100, price: "0.0012", cost: "0.0008"}
        - {model: T4, price: "0.0002", cost: "0.0001"}

**Matching** (:meth:`.book.PriceBook.model`): the exact name, then the first matching pattern, then the
default; at each step an entry naming the row's provider (``gen_ai.provider.name``) before one for any provider,
and an entry naming another provider never matches. A model none of them matches is *unpriced*: listed on the invoice and by ``spanmeter prices
unpriced``, never billed at zero, and its invoice cannot be finalized until a book version prices it.

**Token kinds and the GenAI semantic-convention trap.** ``gen_ai.usage.input_tokens`` already *includes*
the cache reads and cache writes (``gen_ai.usage.cache_read.input_tokens``,
``gen_ai.usage.cache_creation.input_tokens``), and ``output_tokens`` includes the reasoning tokens. Adding the
cache price on top of the input price charges cached tokens twice. spanmeter takes the subsets out of their
parent count and prices each token once (:func:`.rate.split_tokens`). A kind without its own price is charged
as its parent (cache at the input price, reasoning at the output price).

**Versions are immutable.** A book version, once imported, is never edited; a price change is a new version
with a later ``effective_from``. It may not take effect inside a period already finalized (or within the
drift window after it): invoices already issued never change. ``spanmeter prices diff docpipe@2026-11
docpipe@2026-12`` shows what changed.

**Price and cost.** ``price`` is what the customer pays; ``cost`` (optional) is what the provider charges you,
in the same currency. The margin report (``spanmeter prices margin``) sets one against the other, only where
both exist.

Modules: :mod:`.book` (the values), :mod:`.parse` (the file format, with errors naming the field),
:mod:`.rate` (pricing usage per model, pure), :mod:`.diff`, :mod:`.models_dev` (importing a public price list).
"""

from ..rating.book_lines import Group, book_lines
from .book import TOKEN_KINDS, GpuEntry, Match, ModelEntry, PriceBook, TokenPrices
from .diff import diff_books
from .parse import PriceBookError, book_document, load_file, parse_book
from .rate import BookWindow, book_windows, group_usage, split_tokens

__all__ = [
    "TOKEN_KINDS",
    "BookWindow",
    "GpuEntry",
    "Group",
    "Match",
    "ModelEntry",
    "PriceBook",
    "PriceBookError",
    "TokenPrices",
    "book_document",
    "book_lines",
    "book_windows",
    "diff_books",
    "group_usage",
    "load_file",
    "parse_book",
    "split_tokens",
]
