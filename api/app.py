"""The HTTP API's routes (FastAPI): what each endpoint reads and which CLI command gives the same figures.

=====================================================  ===========================================================
endpoint                                               the same figures from the CLI
=====================================================  ===========================================================
``GET /v1/accounts/{id}/month-to-date``                ``spanmeter usage --account ID --format json``: its
                                                       ``month_to_date`` (and ``invoice --format json`` total for
                                                       the current month is ``invoice_so_far``)
``GET /v1/accounts/{id}/usage?from=&to=&granularity=`` ``spanmeter usage --account ID --from --to --format json``
                                                       (the series add up to its ``quantity`` per meter)
``GET /v1/accounts/{id}/drivers?period=&by=``          ``spanmeter invoice drivers --account ID --period P --group B``
``GET /v1/accounts/{id}/invoices``                     ``spanmeter invoice --account ID --period P --format json``
                                                       for each period, newest first
``GET /v1/accounts/{id}/invoices/{number}``            ``invoice --format json`` and ``invoice explain --format json``
``GET /v1/accounts/{id}/entitlements``                 ``spanmeter entitlements show --account ID --format json``
=====================================================  ===========================================================

Authentication: ``Authorization: Bearer <token>`` (``spanmeter api token new``); no or a bad token: 401. An
account token asking about another account gets 404, the same answer as for an account with nothing to show.
"""

import base64
import binascii
import logging
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any
from urllib.parse import parse_qs, urlencode

import psycopg
from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from psycopg_pool import PoolTimeout

from spanmeter import __version__
from spanmeter.billing import drivers as billing_drivers
from spanmeter.billing import entitlements as billing_entitlements
from spanmeter.billing import quotas, subscriptions, tokens
from spanmeter.billing.explain import explain_invoice
from spanmeter.billing.invoices import InvoiceError, build_invoice
from spanmeter.billing.invoices.late import finalized_periods
from spanmeter.billing.ledger import drivers_store, partitions
from spanmeter.billing.periods import Period
from spanmeter.billing.rating import BILLABLE_METRICS
from spanmeter.billing.tokens import Principal

from . import page, schemas
from .reads import Reads

__all__ = ["ACCOUNT_ID", "create_app", "iso"]

log = logging.getLogger(__name__)

ACCOUNT_ID = r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$"
MAX_LOGIN_BYTES = 8_192
NOT_FOUND = "no such account, or not one this token may read"
MAX_SERIES_POINTS = 2_000

Account = Annotated[str, Path(pattern=ACCOUNT_ID, description="the account id spans carry as account_id")]


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def money(amount: Decimal, currency: str) -> schemas.Money:
    return schemas.Money(amount=format(amount, "f"), currency=currency)


def _plain(q: Decimal) -> str:
    return format(q, "f")


def _unit(code: str) -> str:
    metric = BILLABLE_METRICS.get(code)
    if metric:
        return metric.unit
    return next((m.unit for m in BILLABLE_METRICS.values() if code in m.meters), "")


def _parse_time(value: str, name: str) -> datetime:
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        if moment.tzinfo is None:
            raise HTTPException(400, f"{name}={value!r}: give a time zone (Z for UTC)")
        moment = moment.astimezone(UTC)
    except (ValueError, OverflowError):
        raise HTTPException(400, f"{name}={value!r}: give an RFC 3339 time, e.g. 2026-12-01T00:00:00Z") from None
    if not 1970 <= moment.year <= 2999:
        raise HTTPException(400, f"{name}={value!r}: give a time from 1970 to 2999")
    return moment


def _period(value: str) -> Period:
    try:
        return Period.parse(value)
    except ValueError:
        raise HTTPException(400, f"period={value!r}: give a month as YYYY-MM (1970 to 2999)") from None


def create_app(
    reads: Reads,
    *,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    trace_url_template: str | None = None,
    secure_cookies: bool = False,
) -> FastAPI:
    """The API over ``reads``; ``clock`` gives "now" (the bench pins it); ``trace_url_template`` (as
    ``SPANMETER_TRACE_URL_TEMPLATE``) links each trace id of an invoice's explanation to a trace viewer;
    ``secure_cookies``: the page's session cookie is ``Secure`` even over plain HTTP (a TLS proxy in front)."""
    app = FastAPI(
        title="spanmeter API",
        version=__version__,
        description=(
            "Usage, month to date, cost drivers, invoices and entitlements of the accounts spanmeter meters. "
            "Amounts are decimal strings with their currency; times are RFC 3339 UTC; every document has `as_of`."
        ),
        openapi_url="/openapi.json",
        docs_url=None,
        redoc_url=None,
    )
    bearer = HTTPBearer(auto_error=False, description="spanmeter api token new --account ID | --operator")
    errors: dict[int | str, dict[str, Any]] = {
        400: {"model": schemas.Error, "description": "a bad parameter (the message names it)"},
        401: {"model": schemas.Error, "description": "no token, or not a valid one"},
        404: {"model": schemas.Error, "description": NOT_FOUND},
    }

    def principal(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> Principal:
        found = reads.principal(credentials.credentials) if credentials else None
        if found is None:
            raise HTTPException(401, "a valid token is needed: Authorization: Bearer <token>",
                                headers={"WWW-Authenticate": "Bearer"})  # fmt: skip
        return found

    def readable(account_id: str, who: Principal) -> None:
        if not who.may_read(account_id):
            raise HTTPException(404, NOT_FOUND)

    Who = Annotated[Principal, Depends(principal)]

    # every route checks the token's account before reading: an error below is about an account it may read
    @app.exception_handler(InvoiceError)
    async def _invoice_error(_request: Request, exc: InvoiceError) -> JSONResponse:
        if "has no subscription" in str(exc):
            return JSONResponse({"detail": NOT_FOUND}, status_code=404)
        return JSONResponse({"detail": str(exc)}, status_code=409)  # e.g. an invoice that cannot be rated

    @app.exception_handler(RequestValidationError)
    async def _bad_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": validation_message(exc)}, status_code=400)

    @app.exception_handler(PoolTimeout)
    @app.exception_handler(psycopg.OperationalError)
    async def _unavailable(_request: Request, exc: Exception) -> JSONResponse:
        # no connection free, the database away, a statement timeout, a standby's recovery conflict: try again
        log.warning("api read failed, answered 503: %s", (str(exc).strip().splitlines() or [type(exc).__name__])[0])
        return JSONResponse({"detail": "the ledger is busy or unreachable: retry shortly"}, status_code=503,
                            headers={"Retry-After": "1"})  # fmt: skip

    @app.exception_handler(Exception)
    async def _internal(_request: Request, exc: Exception) -> JSONResponse:
        log.error("api request failed", exc_info=exc)
        return JSONResponse({"detail": "internal error (the API's log has it)"}, status_code=500)

    @app.get("/v1/accounts/{account_id}/month-to-date", response_model=schemas.MonthToDate, responses=errors,
             summary="Month to date: usage against allowances, invoice so far, projection")  # fmt: skip
    def month_to_date(account_id: Account, who: Who) -> schemas.MonthToDate:
        readable(account_id, who)
        now = clock()
        mtd = reads.read(lambda conn: quotas.month_to_date(conn, account_id, now))
        if mtd is None:
            raise HTTPException(404, NOT_FOUND)
        return month_to_date_document(account_id, mtd)

    @app.get("/v1/accounts/{account_id}/usage", response_model=schemas.Usage, responses=errors,
             response_model_by_alias=True, summary="Usage series per meter, hourly or daily, from the rollups")  # fmt: skip
    def usage(
        account_id: Account,
        who: Who,
        from_: Annotated[str | None, Query(alias="from", description="RFC 3339; default: the month's start")] = None,
        to: Annotated[str | None, Query(description="RFC 3339, exclusive; default: the next month's start")] = None,
        granularity: Annotated[str, Query(pattern="^(hour|day)$")] = "day",
    ) -> schemas.Usage:
        readable(account_id, who)
        now = clock()
        period = Period.containing(now)
        start = _parse_time(from_, "from") if from_ else period.start
        end = _parse_time(to, "to") if to else period.end
        step = timedelta(hours=1) if granularity == "hour" else timedelta(days=1)
        for name, moment in (("from", start), ("to", end)):
            whole = moment.minute == moment.second == moment.microsecond == 0 and (
                granularity == "hour" or moment.hour == 0
            )
            if not whole:
                raise HTTPException(400, f"{name}={iso(moment)}: with granularity={granularity} give a whole UTC "
                                         f"{granularity}")  # fmt: skip
        if end <= start:
            raise HTTPException(400, "to must be after from")
        if (end - start) / step > MAX_SERIES_POINTS:
            raise HTTPException(400, f"at most {MAX_SERIES_POINTS} {granularity}s per request: narrow from/to")
        rows = reads.read(lambda conn: drivers_store.series_rows(conn, account_id, start, end, granularity))
        series: dict[str, list[schemas.SeriesPoint]] = {}
        for bucket, meter, quantity, events in rows:
            series.setdefault(meter, []).append(
                schemas.SeriesPoint(start=iso(bucket), quantity=_plain(Decimal(quantity)), events=int(events))
            )
        return schemas.Usage.model_validate({
            "account_id": account_id, "from": iso(start), "to": iso(end), "granularity": granularity,
            "as_of": iso(now),
            "series": [schemas.Series(meter=m, unit=_unit(m), points=p) for m, p in sorted(series.items())],
        })  # fmt: skip

    @app.get("/v1/accounts/{account_id}/drivers", response_model=schemas.DriverReport, responses=errors,
             summary="Top cost drivers of a month's bill, with their share")  # fmt: skip
    def drivers(
        account_id: Account,
        who: Who,
        period: Annotated[str | None, Query(pattern=r"^[0-9]{4}-[0-9]{2}$", description="YYYY-MM")] = None,
        by: Annotated[str, Query(pattern="^(job|model|service|task)$")] = "job",
        limit: Annotated[int, Query(ge=1, le=100)] = 10,
    ) -> schemas.DriverReport:
        readable(account_id, who)
        now = clock()
        month = _period(period) if period else Period.containing(now)
        report = reads.read(lambda conn: billing_drivers.drivers(conn, account_id, month, by, top=limit))
        return drivers_document(report, now)

    @app.get("/v1/accounts/{account_id}/invoices", response_model=schemas.InvoiceList, responses=errors,
             summary="Invoices, newest first: finalized ones and the drafts of open months")  # fmt: skip
    def invoices(
        account_id: Account,
        who: Who,
        cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
        limit: Annotated[int, Query(ge=1, le=24)] = 6,
    ) -> schemas.InvoiceList:
        readable(account_id, who)
        now = clock()
        before = _cursor(cursor) if cursor else None

        def read(conn: Any) -> schemas.InvoiceList:
            periods = invoice_periods(conn, account_id, now)
            if not periods:
                raise HTTPException(404, NOT_FOUND)
            if before is not None:
                periods = [p for p in periods if p.start < before.start]
            page = periods[:limit]
            items = []
            for p in page:
                invoice = build_invoice(conn, account_id, p)
                items.append(schemas.InvoiceSummary(invoice_number=invoice.invoice_number, period=str(p),
                                                    status=invoice.status, total=money(invoice.total, invoice.currency)))  # fmt: skip
            more = len(periods) > limit
            return schemas.InvoiceList(account_id=account_id, as_of=iso(now), invoices=items,
                                       next_cursor=_encode_cursor(page[-1]) if more and page else None)  # fmt: skip

        return reads.read(read)

    @app.get("/v1/accounts/{account_id}/invoices/{number}", response_model=schemas.Invoice, responses=errors,
             summary="One invoice (INV-… finalized, DRAFT-YYYY-MM-account a draft) and the explanation of each line")  # fmt: skip
    def invoice(account_id: Account, number: Annotated[str, Path(max_length=200)], who: Who) -> schemas.Invoice:
        readable(account_id, who)
        now = clock()

        def read(conn: Any) -> schemas.Invoice:
            period = _period_of(conn, account_id, number)
            found, explained = explain_invoice(conn, account_id, period, trace_url_template=trace_url_template,
                                               archived_to=partitions.coverage(conn).archived_to)  # fmt: skip
            if found.invoice_number != number:
                raise HTTPException(404, NOT_FOUND)
            return schemas.Invoice(
                as_of=iso(now), invoice=found.to_dict(), explanation=[e.to_dict() for e in explained]
            )

        return reads.read(read)

    @app.get("/v1/accounts/{account_id}/entitlements", response_model=schemas.Entitlements, responses=errors,
             summary="Per meter: limit, used, remaining, soft or hard, allowed")  # fmt: skip
    def entitlements(account_id: Account, who: Who) -> schemas.Entitlements:
        readable(account_id, who)
        now = clock()
        found = reads.read(lambda conn: billing_entitlements.for_account(conn, account_id, now))
        if found is None:
            raise HTTPException(404, NOT_FOUND)
        return entitlements_document(account_id, now, *found)

    _billing_page(app, reads, clock, secure_cookies, month_to_date, usage, drivers, invoices)
    _without_422(app)
    return app


def _billing_page(
    app: FastAPI, reads: Reads, clock: Callable[[], datetime], secure_cookies: bool, *routes: Callable[..., Any]
) -> None:
    """The billing page and its sign-in (not in the OpenAPI document): see :mod:`spanmeter.api.page`."""
    month_to_date, usage, drivers, invoices = routes

    def secure(response: HTMLResponse) -> HTMLResponse:
        response.headers["Content-Security-Policy"] = page.CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["Cache-Control"] = "no-store"
        return response

    def optional(route: Callable[..., Any], *args: Any) -> Any:
        try:
            return route(*args)
        except HTTPException as exc:
            if exc.status_code == 404:
                return None
            raise

    @app.get("/accounts/{account_id}", include_in_schema=False)
    def billing_page(account_id: str, request: Request) -> Response:
        header = request.headers.get("authorization", "")
        if header.lower().startswith("bearer "):
            who = reads.principal(header[7:].strip())
        else:
            who = reads.session(request.cookies.get(page.COOKIE, ""))
        if who is None:
            return RedirectResponse("/login?" + urlencode({"next": f"/accounts/{account_id}"}), status_code=303)
        if not re.fullmatch(ACCOUNT_ID, account_id) or not who.may_read(account_id):
            return secure(HTMLResponse(page.render_message("Not found", NOT_FOUND), status_code=404))
        now = clock()
        month = Period.containing(now)
        mtd = optional(month_to_date, account_id, who)
        series = usage(account_id, who, None, None, "day")
        found_drivers = optional(drivers, account_id, who, None, "job", 5) if mtd is not None else None
        found_invoices = optional(invoices, account_id, who, None, 6)
        if mtd is None and not series.series and found_invoices is None:
            return secure(HTMLResponse(page.render_message("Not found", NOT_FOUND), status_code=404))
        days = []
        day = month.start
        while day < month.end:
            days.append(iso(day))
            day += timedelta(days=1)
        body = page.render_page(mtd, series, days, found_drivers, found_invoices, account_id)
        return secure(HTMLResponse(body))

    @app.get("/login", include_in_schema=False)
    def login_form(next: str = "") -> Response:
        return secure(HTMLResponse(page.render_login(next_path=next)))

    def same_origin(request: Request) -> bool:
        """A form posted by this site's own page (login CSRF: another site must not post a token here)."""
        site = request.headers.get("sec-fetch-site")
        if site is not None:
            return site in ("same-origin", "none")
        origin = request.headers.get("origin")
        return origin is None or origin.split("://", 1)[-1] == request.headers.get("host", "")

    @app.post("/login", include_in_schema=False)
    async def login(request: Request) -> Response:
        if not same_origin(request):
            return secure(
                HTMLResponse(page.render_message("Refused", "sign in from this site's page"), status_code=403)
            )
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_LOGIN_BYTES:
                return secure(HTMLResponse(page.render_login("That form is too large."), status_code=413))
        form = parse_qs(body.decode("utf-8", "replace"), max_num_fields=8)
        token = (form.get("token") or [""])[0].strip()
        wanted = (form.get("account") or [""])[0].strip()
        next_path = (form.get("next") or [""])[0]
        signing = await run_in_threadpool(reads.token_digest, token)  # the database: never on the event loop
        who = await run_in_threadpool(reads.principal, token) if signing is not None else None
        if who is None or signing is None:
            return secure(HTMLResponse(page.render_login("That token is not valid (or was revoked).", next_path),
                                       status_code=401))  # fmt: skip
        account = who.account_id or wanted or next_path.removeprefix("/accounts/")
        if not account or not re.fullmatch(ACCOUNT_ID, account):
            return secure(HTMLResponse(page.render_login("An operator token needs an account.", next_path),
                                       status_code=400))  # fmt: skip
        expires = int(time.time()) + page.SESSION_SECONDS
        response = RedirectResponse(f"/accounts/{account}", status_code=303)
        response.set_cookie(page.COOKIE, tokens.session(signing[0], signing[1], expires), max_age=page.SESSION_SECONDS,
                            httponly=True, samesite="strict", secure=secure_cookies or request.url.scheme == "https",
                            path="/")  # fmt: skip
        return response

    @app.post("/logout", include_in_schema=False)
    def logout(request: Request) -> Response:
        if not same_origin(request):
            return secure(
                HTMLResponse(page.render_message("Refused", "sign out from this site's page"), status_code=403)
            )
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(page.COOKIE, path="/")
        return response


def month_to_date_document(account_id: str, mtd: quotas.MonthToDate) -> schemas.MonthToDate:
    included = {q.metric: q.included for q in mtd.quotas}
    used = {q.metric: q.used for q in mtd.quotas}
    meters = []
    for metric in BILLABLE_METRICS:
        if metric not in mtd.usage and metric not in included:
            continue
        quantity = mtd.usage.get(metric, Decimal(0))  # the whole month, as the invoice bills it
        allowance = included.get(metric, Decimal(0))
        # the allowance is the current subscription segment's: so is the usage that draws on it
        quantity_in_segment = used.get(metric, quantity)
        meters.append(schemas.MeterToDate(meter=metric, unit=_unit(metric), quantity=_plain(quantity),
                                          included=_plain(allowance), remaining=_plain(max(allowance - quantity_in_segment, Decimal(0))),
                                          overage=_plain(max(quantity_in_segment - allowance, Decimal(0)))))  # fmt: skip
    return schemas.MonthToDate(
        account_id=account_id,
        period=str(mtd.period),
        as_of=iso(mtd.as_of),
        plan_code=mtd.plan_code,
        pricing_version=mtd.pricing_version,
        currency=mtd.currency,
        in_force=mtd.in_force,
        meters=meters,
        invoice_so_far=money(mtd.invoice_so_far, mtd.currency),
        projected_total=money(mtd.projected_total, mtd.currency),
    )


def drivers_document(report: billing_drivers.DriverReport, now: datetime) -> schemas.DriverReport:
    invoice = report.invoice
    return schemas.DriverReport(
        account_id=invoice.account_id,
        period=invoice.period,
        by=report.by,
        as_of=iso(now),
        invoice_number=invoice.invoice_number,
        status=invoice.status,
        total=money(invoice.total, invoice.currency),
        unattributed=money(report.unattributed, invoice.currency),
        drivers=[
            schemas.Driver(key=d.key, amount=money(d.amount, invoice.currency), share=_plain(d.share),
                           quantities={m: _plain(q) for m, q in d.quantities.items()})
            for d in report.drivers
        ],
    )  # fmt: skip


def entitlements_document(
    account_id: str, now: datetime, mtd: quotas.MonthToDate, found: list[billing_entitlements.Entitlement]
) -> schemas.Entitlements:
    return schemas.Entitlements(
        account_id=account_id,
        as_of=iso(now),
        period=str(mtd.period),
        plan_code=mtd.plan_code,
        entitlements=[
            schemas.Entitlement(meter=e.metric, unit=e.unit, used=_plain(e.used), included=_plain(e.included),
                                limit=None if e.limit is None else _plain(e.limit), kind=e.kind,
                                remaining=None if e.remaining is None else _plain(e.remaining), allowed=e.allowed,
                                max_concurrency=e.max_concurrency, fail_policy=e.fail_policy)
            for e in found
        ],
    )  # fmt: skip


def invoice_periods(conn: Any, account_id: str, now: datetime) -> list[Period]:
    """The months the account has an invoice for, newest first: finalized ones, and every month from its
    first subscription to the current one (drafts)."""
    months = {p for p, _ in finalized_periods(conn, account_id)}
    rows = subscriptions.history(conn, account_id)
    if rows:
        month = Period.containing(min(r.valid_from for r in rows))
        current = Period.containing(now)
        while month.start <= current.start:
            if subscriptions.resolve_segments(rows, month.start, month.end):
                months.add(month)
            month = Period.containing(month.end)
    return sorted(months, key=lambda p: p.start, reverse=True)


def _encode_cursor(period: Period) -> str:
    return base64.urlsafe_b64encode(f"before:{period}".encode()).decode().rstrip("=")


def _cursor(value: str) -> Period:
    try:
        text = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).decode()
        kind, _, month = text.partition(":")
        if kind != "before":
            raise ValueError(text)
        return Period.parse(month)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise HTTPException(400, "cursor: pass next_cursor from the previous page unchanged") from None


def validation_message(exc: RequestValidationError) -> str:
    """One line naming each bad parameter and what it takes (FastAPI's own list is for programs)."""
    parts = []
    for error in exc.errors()[:3]:
        where = [str(p) for p in error.get("loc", ()) if p not in ("query", "path", "body")]
        value = error.get("input")
        shown = repr(value) if isinstance(value, str | int) and len(str(value)) <= 40 else "the value given"
        parts.append(f"{'.'.join(where) or 'request'}={shown}: {error.get('msg', 'not valid')}")
    return "; ".join(parts)


def _without_422(app: FastAPI) -> None:
    """The OpenAPI document as the app answers: bad parameters are 400 (documented), never FastAPI's 422."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = build()
            for item in document.get("paths", {}).values():
                for operation in item.values():
                    operation.get("responses", {}).pop("422", None)
            for name in ("HTTPValidationError", "ValidationError"):
                document.get("components", {}).get("schemas", {}).pop(name, None)
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _period_of(conn: Any, account_id: str, number: str) -> Period:
    """The period an invoice number names: INV-YYYY-MM-NNNN or DRAFT-YYYY-MM-<account>."""
    parts = number.split("-")
    if len(parts) >= 4 and parts[0] in ("INV", "DRAFT"):
        try:
            period = Period.parse(f"{parts[1]}-{parts[2]}")
            if number in (f"DRAFT-{period}-{account_id}",) or parts[0] == "INV":
                return period
        except ValueError:
            pass
    raise HTTPException(404, NOT_FOUND)
