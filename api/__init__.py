"""``spanmeter api``: what customers and applications call. An HTTP API, a billing page, tokens.

    spanmeter api token new --account acme          # prints spm_… once; only its SHA-256 is stored
    spanmeter api --listen 127.0.0.1:8080           # OpenAPI 3.1 at /openapi.json, the page at /accounts/acme
    curl -H "Authorization: Bearer spm_…" http://127.0.0.1:8080/v1/accounts/acme/month-to-date

The contract (the README's "API" section has it in full, and :mod:`spanmeter.api.app` names the CLI command each
endpoint equals):

- JSON endpoints under ``/v1/accounts/{account_id}/``: ``month-to-date``, ``usage``, ``drivers``, ``invoices``,
  ``invoices/{number}``, ``entitlements``. Amounts are decimal strings with a currency, times RFC 3339 UTC,
  lists paginated by an opaque cursor, every document has ``as_of``.
- ``Authorization: Bearer <token>``: an account token reads its account only (another account: 404, the same
  answer as for an account with nothing to show, so a token learns nothing about other accounts); an operator
  token reads every account; no token or a bad one: 401.
- The billing page ``/accounts/{account_id}`` (:mod:`spanmeter.api.page`): server-rendered, no JavaScript.
- Reads go to the read replica when ``SPANMETER_READ_DATABASE_URL`` is set (:mod:`spanmeter.api.reads`).

The OpenAPI document is committed as ``api/openapi.json``; a test keeps it equal to what the app serves
(``spanmeter api openapi > api/openapi.json`` after changing a route).

Needs the ``api`` extra (FastAPI, psycopg-pool): ``pip install 'spanmeter[api]'``. Customer processes never
import this package: :mod:`spanmeter.instrumentation.entitlements` calls it over HTTP.
"""

from __future__ import annotations

from typing import Any

__all__ = ["openapi_document"]


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document the app serves (no database needed)."""
    from .app import create_app

    return create_app(None).openapi()  # type: ignore[arg-type]
