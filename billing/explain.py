"""Every invoice line explains itself: ``spanmeter invoice explain --account A --period P [--line N]``.

For each line (or line ``N``) of the account's invoice for the period (the stored one when finalized, else the
draft), this shows what it was computed from, as finance or a customer asks months later:

- **usage lines**: the meters summed into the line's metric, and for a line priced per model the model or GPU
  model, the token kind and the price book version (``docpipe@2026-12``) with its effective window; the raw
  ledger rows behind it (count, quantity, first and last), the top jobs by quantity, each with the trace id of
  its first row (a link each when ``SPANMETER_TRACE_URL_TEMPLATE`` is set, e.g.
  ``http://tempo:3200/trace/{trace_id}`` or ``http://jaeger:16686/trace/{trace_id}``), and the corrections
  (``ledger adjust``) dated in the window with their reasons;
- **adjustment lines**: the earlier period and invoice whose late usage they carry;
- **fees, commitments, minimums**: the plan and subscription they come from.

The raw rows are read from the ledger (bounded by account and time: only the window's partitions), so the
numbers a line shows can be recomputed by anyone: the rows' quantities add up to the line's usage (before the
allowance). Archived months (``spanmeter db archive``) have no raw rows left; the explanation says so.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

import psycopg

from . import adjustments
from .invoices import Invoice, InvoiceError, build_invoice
from .invoices.pricing import window_label
from .invoices.usage import BOOK_METERS
from .ledger import explain_store
from .periods import Period
from .pricebook.rate import TOKEN_METERS
from .prices import Catalog, load_catalog
from .rating import BILLABLE_METRICS, Line

__all__ = ["LineExplanation", "explain_invoice", "trace_url"]


@dataclass(frozen=True)
class LineExplanation:
    line_no: int
    line: dict[str, Any]
    basis: str  # one sentence: what the line is computed from
    window: tuple[str, str] | None = None  # the rows' [from, to) when the line is backed by ledger rows
    meters: tuple[str, ...] = ()
    dimension: str | None = None
    totals: list[dict[str, str]] = field(default_factory=list)  # per meter: rows, quantity, first, last
    top_jobs: list[dict[str, str]] = field(default_factory=list)  # by quantity, each with a trace id (and link)
    corrections: list[dict[str, str]] = field(default_factory=list)
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v not in (None, (), [])}


def trace_url(template: str | None, trace_id: str, span_id: str | None = None) -> str | None:
    """``template`` with ``{trace_id}`` (and ``{span_id}``) filled in; None without a template."""
    if not template:
        return None
    return template.replace("{trace_id}", trace_id).replace("{span_id}", span_id or "")


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def meters_of(line: Line) -> tuple[str, ...]:
    if line.usage_kind == "gpu":
        return ("gpu_seconds",)
    if line.usage_kind:
        return (next(m for m, kind in TOKEN_METERS.items() if kind == line.usage_kind),)
    metric = BILLABLE_METRICS.get(line.meter_code or "")
    return metric.meters if metric else ()


def _segments(invoice: Invoice, period: Period, catalog: Catalog) -> list[tuple[str, datetime, datetime]]:
    """Each subscription segment of the invoice with the label its lines' descriptions start with."""
    out = []
    for s in invoice.subscriptions:
        start, end = datetime.fromisoformat(s["from"]), datetime.fromisoformat(s["to"])
        version = catalog.version(s["pricing_version"])
        plan = version.plans.get(s["plan_code"]) if version is not None else None
        out.append((window_label(start, end, period, plan.name if plan else s["plan_code"]), start, end))
    return out


def _window(
    line: Line,
    period: Period,
    catalog: Catalog,
    segments: Sequence[tuple[str, datetime, datetime]] = (),
) -> tuple[datetime, datetime]:
    """The stretch of the period a usage line covers: its subscription segment (found by the label its
    description starts with; the whole period when it has none), and for a book-priced line its book version's
    effective window within that."""
    start, end = period.start, period.end
    mine = [(a, b) for label, a, b in segments if label and line.description.startswith(label)]
    if mine:  # (labels name days: two segments of one plan within one day share one, and their union is taken)
        start, end = max(start, min(a for a, _ in mine)), min(end, max(b for _, b in mine))
    if line.price_book:
        code, _, version = line.price_book.partition("@")
        versions = sorted(catalog.book_versions(code), key=lambda b: b.effective_from)
        for i, book in enumerate(versions):
            if book.version == version:
                start = max(start, book.effective_from)
                later = [b.effective_from for b in versions[i + 1 :] if b.effective_from > book.effective_from]
                end = min([end, *later])
    return start, end


def _top(items: list[dict[str, Any]], key: str, top: int) -> list[dict[str, Any]]:
    return sorted(items, key=lambda item: (-Decimal(item["quantity"]), item.get(key, "")))[:top]


@dataclass(frozen=True)
class _Rows:
    """The summary of the invoice's rows, indexed for the lines."""

    cuts: list[datetime]
    totals: list[explain_store.SummaryRow]
    jobs: list[explain_store.SummaryRow]
    flat_cuts: list[datetime] = field(default_factory=list)
    book_meters: frozenset[str] = frozenset()
    segments: list[tuple[str, datetime, datetime]] = field(default_factory=list)

    def buckets(self, start: datetime, end: datetime, meter: str | None = None) -> range:
        """The windows ``w`` of [start, end): of a book meter's rows, or (``meter`` not a book meter, None for
        the per-metric job rows, which only flat meters have) of a flat meter's."""
        cuts = self.cuts if meter in self.book_meters else self.flat_cuts
        return range(bisect.bisect_right(cuts, start), bisect.bisect_left(cuts, end) + 1)


def _explain(
    account_id: str,
    period: Period,
    invoice: Invoice,
    line_no: int,
    line: Line,
    catalog: Catalog,
    rows: _Rows,
    corrections_all: list[adjustments.Adjustment],
    template: str | None,
    archived_to: datetime | None,
    top: int = 5,
) -> LineExplanation:
    document = line.to_dict()
    if line.kind == "adjustment":
        ref = next((item for item in invoice.late_usage if item["reference_period"] == line.reference_period
                    and item["meter_code"] == line.meter_code), None)  # fmt: skip
        basis = f"late usage of {line.reference_period} that arrived after its invoice was finalized"
        if ref:
            basis += f" ({ref['reference_invoice']}: {ref['quantity']} more {line.meter_code}, re-rated)"
        basis += f"; explain it with: spanmeter invoice explain --account {account_id} --period {line.reference_period}"
        return LineExplanation(line_no, document, basis)
    if line.kind != "usage":
        plans = ", ".join(
            f"{s['plan_code']} ({s['pricing_version']}) {s['from']}–{s['to']}" for s in invoice.subscriptions
        )
        return LineExplanation(line_no, document, f"{line.kind} of the subscription(s): {plans}")
    meters = meters_of(line)
    start, end = _window(line, period, catalog, rows.segments)
    by_book = line.dimension is not None
    buckets = rows.buckets(start, end, meters[0] if by_book else None)
    provider = line.provider or ""

    def ours(row: explain_store.SummaryRow) -> bool:
        if by_book:
            return row[1] in meters and row[3] == line.dimension and row[4] == provider and row[5] in buckets
        # a flat-rate line: every model and provider of its meters in its segment
        return row[1] in meters and row[5] in rows.buckets(start, end, row[1])

    totals: dict[str, list[Any]] = {}
    for _, meter, _, _, _, _, _, _, n, q, first, last in filter(ours, rows.totals):
        assert meter is not None
        held = totals.setdefault(meter, [0, Decimal(0), first, last])
        held[0] += n
        held[1] += q
        held[2], held[3] = min(held[2], first), max(held[3], last)
    jobs: dict[str, list[Any]] = {}
    job_rows = (
        filter(ours, rows.jobs)
        if by_book
        else (r for r in rows.jobs if r[1] is None and r[2] == line.meter_code and r[5] in rows.buckets(start, end))
    )
    for *_, job, trace, n, q, first, last in job_rows:
        held = jobs.setdefault(job or "", [0, Decimal(0), trace or "", first, last])
        held[0] += n
        held[1] += q
        if (first, trace or "") < (held[3], held[2]):  # a job over several parts: the trace of its first row
            held[2] = trace or ""
        held[3], held[4] = min(held[3], first), max(held[4], last)
    top_jobs = []
    for job, (n, q, trace, first, last) in jobs.items():
        item = {"job_id": job, "rows": str(n), "quantity": format(q, "f"), "trace_id": trace, "first": _iso(first),
                "last": _iso(last)}  # fmt: skip
        if url := trace_url(template, trace):
            item["url"] = url
        top_jobs.append(item)
    corrections = [
        {
            "key": c.idempotency_key,
            "meter_code": c.meter_code,
            "quantity": format(c.quantity, "f"),
            "occurred_at": _iso(c.occurred_at),
            "reason": c.reason,
            "by": c.created_by,
        }
        for c in corrections_all
        if c.meter_code in meters
        and start <= c.occurred_at < end
        and (line.dimension in (None, "") or c.meter_code not in BOOK_METERS)
    ]
    what = f"{', '.join(meters)} of {account_id} in [{_iso(start)}, {_iso(end)})"
    if by_book:
        what += f", model {line.dimension or '(none)'}" + (f" via {provider}" if provider else "")
    basis = f"the ledger rows of {what}"
    if line.price_book:
        basis += f", priced by {line.price_book} ({line.usage_kind})"
        if line.usage_kind in ("input", "output"):
            subsets = "cache reads and writes" if line.usage_kind == "input" else "reasoning tokens"
            basis += f"; the {subsets} among them are priced on their own lines (each token once)"
    note = None
    if archived_to is not None and start < archived_to:
        note = f"rows before {_iso(archived_to)} are archived (spanmeter db restore brings them back)"
    return LineExplanation(
        line_no,
        document,
        basis,
        (_iso(start), _iso(end)),
        meters,
        line.dimension,
        [{"meter_code": m, "rows": str(n), "quantity": format(q, "f"), "first": _iso(a), "last": _iso(b)}
         for m, (n, q, a, b) in sorted(totals.items())],
        _top(top_jobs, "job_id", top),
        corrections,
        note,
    )  # fmt: skip


def explain_invoice(
    conn: psycopg.Connection,
    account_id: str,
    period: Period,
    *,
    line_no: int | None = None,
    trace_url_template: str | None = None,
    archived_to: datetime | None = None,
) -> tuple[Invoice, list[LineExplanation]]:
    """The invoice and an explanation per line (or of line ``line_no``, counted from 1), from one read of the
    account's rows of the period."""
    catalog = load_catalog(conn)
    invoice = build_invoice(conn, account_id, period, catalog=catalog)
    if line_no is not None and not 1 <= line_no <= len(invoice.lines):
        raise InvoiceError(f"--line {line_no}: the invoice has lines 1 to {len(invoice.lines)}")
    chosen = [(i, line) for i, line in enumerate(invoice.lines, start=1) if line_no in (None, i)]
    metric_of = {
        meter: line.meter_code or "" for _, line in chosen if line.kind == "usage" for meter in meters_of(line)
    }
    books = {line.price_book.partition("@")[0] for _, line in chosen if line.price_book}
    segments = _segments(invoice, period, catalog)
    # a line's window is its segment (and its book version's window within it): both kinds of bound cut the
    # book meters' rows, the segments' alone the flat meters' rows, so every line is a whole number of windows
    flat_cuts = sorted({t for _, a, b in segments for t in (a, b) if period.start < t < period.end})
    cuts = sorted({b.effective_from for code in books for b in catalog.book_versions(code)
                   if period.start < b.effective_from < period.end} | set(flat_cuts))  # fmt: skip
    book_meters = {meter for _, line in chosen if line.kind == "usage" and line.dimension is not None
                   for meter in meters_of(line)}  # fmt: skip
    summary = (
        explain_store.summary(
            conn, account_id, metric_of, period.start, period.end, cuts, book_meters, flat_cuts=flat_cuts
        )
        if metric_of
        else []
    )
    rows = _Rows(
        cuts,
        [r for r in summary if r[0] == "total"],
        [r for r in summary if r[0] == "job"],
        flat_cuts,
        frozenset(book_meters),
        segments,
    )
    corrections = adjustments.for_account(conn, account_id, period.start, period.end)
    return invoice, [
        _explain(account_id, period, invoice, i, line, catalog, rows, corrections, trace_url_template, archived_to)
        for i, line in chosen
    ]
