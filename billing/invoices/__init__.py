"""Invoices: usage from the rollups, priced by the subscription in force, explained line by line.

    spanmeter invoice --account acme --period 2026-11                       # draft, table
    spanmeter invoice --account acme --period 2026-11 --format json
    spanmeter invoice --account acme --period 2026-11 --shadow v1_request   # and what v1_request would charge
    spanmeter invoice --account acme --period 2026-11 --finalize            # immutable from now on
    spanmeter invoice shadow-report --period 2026-11 --shadow v1_request    # every account

How an invoice for account A and period P (a UTC calendar month) is made:

1. **Subscriptions** (:mod:`spanmeter.billing.subscriptions`) split P into segments, each under one plan of one pricing version.
   A plan change mid-month gives two segments; each is rated with its base fee, included quantities,
   commitment and minimum prorated by its share of the month (exact seconds).
2. **Usage** per segment comes from the rollups (:mod:`spanmeter.billing.rollups`, never the raw events), plus
   the corrections (:mod:`spanmeter.billing.adjustments`) dated in the segment, summed into billable metrics.
3. **Rating** (:mod:`spanmeter.billing.rating`, pure) turns usage and plan into lines; the total is the exact sum of lines.
4. **Late usage**: for every earlier period of A whose invoice is finalized and whose next open period is
   P, the period is re-rated with what the ledger holds now; any difference from what was billed (the
   finalized invoice plus adjustment lines already finalized on later invoices) becomes an ``adjustment``
   line here, one per metric, referencing the original period. Nothing is dropped, nothing billed twice.
5. **Reported, not re-priced**: usage whose spans carried a plan code other than the subscription's
   (``plan_mismatches``), and usage in time no subscription covers (``unrated_usage``).

Periods stay open for a **drift window** after they end (``SPANMETER_INVOICE_DRIFT_WINDOW_SECONDS``,
default 172,800 s = 2 days) so that late spans land on their own invoice; ``--finalize`` is refused until
the window has passed. Finalizing stores the document and its lines append-only with a number
``INV-YYYY-MM-NNNN`` (sequential per period); from then on the invoice is read back, never recomputed.
A draft's number is ``DRAFT-YYYY-MM-<account>``.

One module per job; each reads through ``billing/ledger`` (no SQL here) and keeps its arithmetic in pure
functions that tests call without a database:

- :mod:`.usage`: a period's usage per subscription segment (:func:`period_usage`; pure :func:`.usage.billable_usage`).
- :mod:`.pricing`: rating the segments (pure).
- :mod:`.late`: late usage onto the next open invoice (pure :func:`.late.late_adjustments`).
- :mod:`.draft`: :func:`build_invoice` (pure :func:`.draft.assemble`).
- :mod:`.finalize`: :func:`finalize_invoice`, the drift window, numbering.
- :mod:`.shadow`: :func:`shadow_comparison`.
- :mod:`.document`: :class:`Invoice`, stored and read back.
"""

from .document import Invoice, InvoiceError
from .draft import build_invoice
from .finalize import DEFAULT_DRIFT_WINDOW, finalize_invoice
from .late import finalized_invoice, finalized_periods, late_usage_lines
from .pricing import Rated, rate_segments
from .shadow import ShadowComparison, shadow_comparison
from .usage import SegmentUsage, period_usage, uncovered_windows, window_usage

__all__ = [
    "DEFAULT_DRIFT_WINDOW",
    "Invoice",
    "InvoiceError",
    "Rated",
    "SegmentUsage",
    "ShadowComparison",
    "build_invoice",
    "finalize_invoice",
    "finalized_invoice",
    "finalized_periods",
    "late_usage_lines",
    "period_usage",
    "rate_segments",
    "shadow_comparison",
    "uncovered_windows",
    "window_usage",
]
