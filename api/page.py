"""The billing page: ``/accounts/{account_id}``, server-rendered HTML with an inline SVG chart (no JavaScript).

What a customer sees for their account: month to date (invoice so far, the projection, per meter usage against
the allowance), a daily chart per meter for the month, the top cost drivers (by job) and the invoices. The
figures are the API's (the same functions fill both).

Signing in: ``/login`` takes an API token (``spanmeter api token new --account ID``) in a form and keeps it in
an ``HttpOnly``, ``SameSite=Strict`` cookie (``Secure`` over HTTPS) for :data:`SESSION_SECONDS`; a request with
``Authorization: Bearer`` works too. The page of another account answers 404, like the API. Every page is sent
with a Content-Security-Policy that allows no script at all.

:func:`render_page` is pure: documents in, HTML out (every value escaped).
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from decimal import Decimal

from . import schemas

__all__ = ["COOKIE", "CSP", "SESSION_SECONDS", "render_login", "render_message", "render_page", "svg_chart"]

COOKIE = "spanmeter_token"
SESSION_SECONDS = 8 * 3600
CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
COLOURS = ("#3366cc", "#dc3912", "#ff9900", "#109618", "#990099", "#0099c6")
_STYLE = """
body{font-family:system-ui,sans-serif;margin:2rem auto;max-width:64rem;color:#222;padding:0 1rem}
h1{font-size:1.4rem}h2{font-size:1.1rem;margin-top:2rem}table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:.3rem .6rem;border-bottom:1px solid #ddd}td.n,th.n{text-align:right}
.figures{display:flex;gap:2rem}.figure{border:1px solid #ddd;border-radius:6px;padding:.8rem 1.2rem}
.figure b{display:block;font-size:1.5rem}.muted{color:#777;font-size:.85rem}svg{display:block;margin:.5rem 0}
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _document(title: str, body: str) -> str:
    return (f"<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{_e(title)}</title>"
            f"<meta name=\"viewport\" content=\"width=device-width\"><style>{_STYLE}</style></head>"
            f"<body>{body}</body></html>")  # fmt: skip


def _grouped(amount: str) -> str:
    return f"{Decimal(amount):,.2f}"


def svg_chart(series: schemas.Series, days: Sequence[str], colour: str, width: int = 900, height: int = 120) -> str:
    """Daily bars of one meter over ``days`` (RFC 3339 starts), with its peak labelled (pure)."""
    values = {p.start: Decimal(p.quantity) for p in series.points}
    peak = max(values.values(), default=Decimal(0))
    step = width / max(len(days), 1)
    bars = []
    for i, day in enumerate(days):
        value = values.get(day, Decimal(0))
        h = 0 if peak == 0 else float(value / peak) * (height - 20)
        bars.append(f'<rect x="{i * step + 1:.1f}" y="{height - h:.1f}" width="{max(step - 2, 1):.1f}" '
                    f'height="{h:.1f}" fill="{colour}"><title>{_e(day[:10])}: {_e(value)} {_e(series.unit)}'
                    "</title></rect>")  # fmt: skip
    return (f'<svg role="img" aria-label="{_e(series.meter)} per day" data-meter="{_e(series.meter)}" '
            f'width="{width}" height="{height}" viewBox="0 0 {width} {height}">'
            f'<text x="0" y="12" font-size="12">{_e(series.meter)} per day, peak {_e(peak)} {_e(series.unit)}</text>'
            + "".join(bars) + "</svg>")  # fmt: skip


def render_page(
    mtd: schemas.MonthToDate | None,
    usage: schemas.Usage,
    days: Sequence[str],
    drivers: schemas.DriverReport | None,
    invoices: schemas.InvoiceList | None,
    account_id: str,
) -> str:
    parts = [f'<h1>Billing for <span id="account">{_e(account_id)}</span></h1>']
    if mtd is not None:
        parts.append(
            f"<p class=\"muted\">{_e(mtd.period)}, plan {_e(mtd.plan_code)} ({_e(mtd.pricing_version)}), "
            f"as of {_e(mtd.as_of)}</p><div class=\"figures\">"
            f"<div class=\"figure\" id=\"invoice-so-far\">Invoice so far<b>{_grouped(mtd.invoice_so_far.amount)} "
            f"{_e(mtd.currency)}</b></div><div class=\"figure\" id=\"projected\">Projected month"
            f"<b>{_grouped(mtd.projected_total.amount)} {_e(mtd.currency)}</b><span class=\"muted\">linear "
            "estimate</span></div></div><h2>Month to date</h2><table id=\"meters\"><tr><th>Meter</th>"
            "<th class=\"n\">Used</th><th class=\"n\">Included</th><th class=\"n\">Remaining</th>"
            "<th class=\"n\">Overage</th><th>Unit</th></tr>"
            + "".join(f"<tr data-meter=\"{_e(m.meter)}\"><td>{_e(m.meter)}</td><td class=\"n\">{_e(m.quantity)}</td>"
                      f"<td class=\"n\">{_e(m.included)}</td><td class=\"n\">{_e(m.remaining)}</td>"
                      f"<td class=\"n\">{_e(m.overage)}</td><td>{_e(m.unit)}</td></tr>" for m in mtd.meters)
            + "</table>"
        )  # fmt: skip
    else:
        parts.append("<p>No subscription this month.</p>")
    parts.append('<h2>Usage per day</h2><div id="chart">')
    if usage.series:
        parts += [svg_chart(s, days, COLOURS[i % len(COLOURS)]) for i, s in enumerate(usage.series)]
    else:
        parts.append("<p>No usage this month yet.</p>")
    parts.append("</div>")
    if drivers is not None and drivers.drivers:
        parts.append(
            f"<h2>Top cost drivers ({_e(drivers.by)}s, {_e(drivers.period)})</h2><table id=\"drivers\"><tr>"
            "<th>Job</th><th class=\"n\">Amount</th><th class=\"n\">Share</th></tr>"
            + "".join(f"<tr><td>{_e(d.key or '(none)')}</td><td class=\"n\">{_grouped(d.amount.amount)} "
                      f"{_e(d.amount.currency)}</td><td class=\"n\">{Decimal(d.share) * 100:.1f}%</td></tr>"
                      for d in drivers.drivers)
            + "</table>"
        )  # fmt: skip
    if invoices is not None:
        parts.append(
            "<h2>Invoices</h2><table id=\"invoices\"><tr><th>Number</th><th>Period</th><th>Status</th>"
            "<th class=\"n\">Total</th></tr>"
            + "".join(f"<tr><td>{_e(i.invoice_number)}</td><td>{_e(i.period)}</td><td>{_e(i.status)}</td>"
                      f"<td class=\"n\">{_grouped(i.total.amount)} {_e(i.total.currency)}</td></tr>"
                      for i in invoices.invoices)
            + "</table>"
        )  # fmt: skip
    parts.append('<form method="post" action="/logout"><button>Sign out</button></form>')
    return _document(f"Billing: {account_id}", "".join(parts))


def render_login(message: str = "", next_path: str = "") -> str:
    note = f'<p role="alert">{_e(message)}</p>' if message else ""
    return _document(
        "Sign in: spanmeter billing",
        f'<h1>Sign in</h1>{note}<form method="post" action="/login">'
        f'<input type="hidden" name="next" value="{_e(next_path)}">'
        '<label>API token <input name="token" type="password" autocomplete="off" size="60" required></label> '
        '<label>Account (operator tokens) <input name="account" size="24"></label> '
        '<button type="submit">Sign in</button></form>'
        '<p class="muted">A token comes from <code>spanmeter api token new --account ID</code>.</p>',
    )


def render_message(title: str, message: str) -> str:
    return _document(title, f'<h1>{_e(title)}</h1><p>{_e(message)}</p><p><a href="/login">Sign in</a></p>')
