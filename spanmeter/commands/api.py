"""The ``spanmeter api`` and ``spanmeter entitlements`` commands (see :mod:`spanmeter.api`).

spanmeter api [--listen HOST:PORT] [--database-url URL] [--read-database-url URL] [--tls-cert F --tls-key F]
              [--insecure-listen]                             # serve the HTTP API and the billing page
spanmeter api token new --account ID | --operator [--note TEXT] [--by WHO]   # prints the token once
spanmeter api token revoke TOKEN_ID [--by WHO]
spanmeter api token list [--account ID]
spanmeter api openapi                                         # the OpenAPI 3.1 document, as committed
spanmeter entitlements set --plan P --metric M [--hard-limit Q] [--max-concurrency N] [--fail open|closed]
                           [--from TIME] [--by WHO]
spanmeter entitlements show --account ID [--format table|json]
spanmeter entitlements list [--plan P]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from ._shared import DATABASE, READ_REPLICA, CommandError, config_from, iso, parse_time, read_databases, who

__all__ = ["register"]

DEFAULT_LISTEN = "127.0.0.1:8080"


def register(sub: Any) -> None:
    api = sub.add_parser(
        "api", help="the HTTP API and billing page for customers and applications", parents=[DATABASE, READ_REPLICA]
    )
    api.add_argument("--listen", default=None, help=f"HOST:PORT (default: SPANMETER_API_LISTEN, else {DEFAULT_LISTEN})")
    api.add_argument("--tls-cert", type=Path, help="PEM certificate chain: serve HTTPS")
    api.add_argument("--tls-key", type=Path, help="PEM private key of --tls-cert")
    api.add_argument("--insecure-listen", action="store_true",
                     help="allow a non-loopback --listen without TLS (a TLS proxy in front)")  # fmt: skip
    asub = api.add_subparsers(dest="api_command", required=False, metavar="{token,openapi}")
    token = asub.add_parser("token", help="API tokens: new, revoke, list")
    tsub = token.add_subparsers(dest="token_command", required=True)
    new = tsub.add_parser("new", help="make a token (printed once; only its SHA-256 is stored)", parents=[DATABASE])
    scope = new.add_mutually_exclusive_group(required=True)
    scope.add_argument("--account", help="the one account the token may read")
    scope.add_argument("--operator", action="store_true", help="a token that reads every account")
    new.add_argument("--note", default="", help="what the token is for (shown by list)")
    new.add_argument("--by", help="who (default: $USER)")
    new.set_defaults(handler=_token_new)
    revoke = tsub.add_parser("revoke", help="revoke a token by its id (tok_…)", parents=[DATABASE])
    revoke.add_argument("token_id", help="the id (tok_…) that `spanmeter api token list` shows")
    revoke.add_argument("--by", help="who (default: $USER)")
    revoke.set_defaults(handler=_token_revoke)
    listing = tsub.add_parser("list", help="tokens (ids, scopes, revoked or not; never the tokens)", parents=[DATABASE])
    listing.add_argument("--account", help="one account's tokens")
    listing.set_defaults(handler=_token_list)
    openapi = asub.add_parser("openapi", help="print the OpenAPI 3.1 document")
    openapi.set_defaults(handler=_openapi)
    api.set_defaults(handler=_serve)

    ent = sub.add_parser("entitlements", help="plan limits: hard limits, concurrency caps, fail policy")
    esub = ent.add_subparsers(dest="entitlements_command", required=True)
    put = esub.add_parser("set", help="record a plan's limit for a metric (append-only, effective-dated)",
                          parents=[DATABASE])  # fmt: skip
    put.add_argument("--plan", required=True, help="plan code, e.g. starter")
    put.add_argument("--metric", required=True, help="worker_seconds, gpu_seconds, tokens or api_requests")
    put.add_argument("--hard-limit", help="the month's usage past which work is refused (default: none)")
    put.add_argument("--max-concurrency", type=int, help="tasks of this metric running at once per account")
    put.add_argument("--fail", default="open", help="open or closed: check()'s answer when the API is unreachable")
    put.add_argument("--from", dest="effective_from", help="effective from (default: now)")
    put.add_argument("--by", help="who (default: $USER)")
    put.set_defaults(handler=_entitlements_set)
    show = esub.add_parser("show", help="an account's entitlements now", parents=[DATABASE, READ_REPLICA])
    show.add_argument("--account", required=True, help="the account")
    show.add_argument("--format", choices=("table", "json"), default="table", help="output format (default table)")
    show.set_defaults(handler=_entitlements_show)
    hist = esub.add_parser("list", help="every recorded plan limit", parents=[DATABASE])
    hist.add_argument("--plan", help="one plan's limits")
    hist.set_defaults(handler=_entitlements_list)


def _primary(args: argparse.Namespace) -> Any:
    from spanmeter.billing.ledger import migrate
    from spanmeter.billing.ledger.database import resolve_database

    config = config_from(args)
    database = resolve_database(config.database_url, config.data_dir, create=True)
    migrate.prepare(database)
    return database


def _serve(args: argparse.Namespace) -> int:
    from spanmeter.api import server

    try:
        from spanmeter.api.app import create_app
        from spanmeter.api.reads import Reads
    except ImportError as exc:
        raise CommandError(
            f"spanmeter api needs its extra ({exc.name} is missing): pip install 'spanmeter[api]'"
        ) from None
    listen = args.listen or os.environ.get("SPANMETER_API_LISTEN") or DEFAULT_LISTEN
    insecure = args.insecure_listen or os.environ.get("SPANMETER_INSECURE_LISTEN", "").lower() in ("1", "true", "yes")
    try:
        host, port = server.parse_listen(listen)
        settings = server.ServerSettings(host, port, args.tls_cert, args.tls_key, insecure)
        server.check_listen(settings)
    except server.ListenError as exc:
        raise CommandError(str(exc)) from None
    config = config_from(args)
    databases = read_databases(config, create=True)
    reads = Reads(databases.reader().conninfo, databases.primary.conninfo)
    reads.open()
    scheme = "https" if settings.tls_cert else "http"
    print(f"spanmeter api: listening on {scheme}://{listen} (OpenAPI at /openapi.json, billing page at "
          f"/accounts/ID; reads {'the replica' if databases.replica else 'the primary'})", file=sys.stderr)  # fmt: skip
    try:
        server.run(
            create_app(reads, trace_url_template=os.environ.get("SPANMETER_TRACE_URL_TEMPLATE") or None), settings
        )
    finally:
        reads.close()
    return 0


def _openapi(args: argparse.Namespace) -> int:
    from spanmeter.api import openapi_document

    print(json.dumps(openapi_document(), indent=2, sort_keys=True))
    return 0


def _token_new(args: argparse.Namespace) -> int:
    from spanmeter.billing import tokens

    database = _primary(args)
    with database.connect() as conn:
        try:
            token_id, token = tokens.issue(conn, account_id=args.account, note=args.note, created_by=who(args.by))
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        conn.commit()
    scope = f"account {args.account}" if args.account else "every account (operator)"
    print(f"{token_id}: a token for {scope}. It is shown once; store it now:", file=sys.stderr)
    print(token)
    return 0


def _token_revoke(args: argparse.Namespace) -> int:
    from spanmeter.billing import tokens

    database = _primary(args)
    with database.connect() as conn:
        done = tokens.revoke(conn, args.token_id, who(args.by))
        conn.commit()
    if done is None:
        raise CommandError(f"no token {args.token_id!r}: `spanmeter api token list` shows the ids")
    print(f"{args.token_id} revoked" if done else f"{args.token_id} was already revoked", file=sys.stderr)
    return 0


def _token_list(args: argparse.Namespace) -> int:
    from spanmeter.billing import tokens

    database = _primary(args)
    with database.connect() as conn:
        found = tokens.list_tokens(conn, args.account)
    print(f"{'token id':<18} {'scope':<24} {'created':<21} {'by':<12} {'revoked':<21} note")
    for t in found:
        scope = f"account {t.account_id}" if t.account_id else "operator"
        print(f"{t.token_id:<18} {scope:<24} {iso(t.created_at):<21} {t.created_by:<12} "
              f"{iso(t.revoked_at) or '-':<21} {t.note}")  # fmt: skip
    return 0


def _entitlements_set(args: argparse.Namespace) -> int:
    from spanmeter.billing import entitlements

    try:
        hard = Decimal(args.hard_limit) if args.hard_limit is not None else None
    except InvalidOperation:
        raise CommandError(f"--hard-limit {args.hard_limit!r}: give a number, e.g. 36000") from None
    if hard is not None and not hard.is_finite():
        raise CommandError(f"--hard-limit {args.hard_limit!r}: give a finite number")
    effective = parse_time(args.effective_from, "--from") if args.effective_from else datetime.now(UTC)
    database = _primary(args)
    with database.connect() as conn:
        try:
            entitlements.set_limit(conn, plan_code=args.plan, metric=args.metric, hard_limit=hard,
                                   max_concurrency=args.max_concurrency, fail_policy=args.fail,
                                   effective_from=effective, recorded_by=who(args.by))  # fmt: skip
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        conn.commit()
    print(f"plan {args.plan}: {args.metric} limits recorded, effective from {iso(effective)}", file=sys.stderr)
    return 0


def _entitlements_show(args: argparse.Namespace) -> int:
    from spanmeter.api.app import entitlements_document
    from spanmeter.billing.service import BillingService

    config = config_from(args)
    now = datetime.now(UTC)
    found = BillingService(read_databases(config)).entitlements(args.account, now)
    if found is None:
        raise CommandError(f"{args.account} has no subscription this month: `spanmeter subscription show`")
    document = entitlements_document(args.account, now, *found)
    if args.format == "json":
        print(document.model_dump_json(indent=2))
        return 0
    print(f"{args.account}: plan {document.plan_code}, {document.period}, as of {document.as_of}")
    print(f"  {'meter':<16} {'kind':<5} {'used':>16} {'limit':>16} {'remaining':>16} {'allowed':<8} {'conc.':>5} fail")
    for e in document.entitlements:
        print(f"  {e.meter:<16} {e.kind:<5} {e.used:>16} {e.limit or '-':>16} {e.remaining or '-':>16} "
              f"{'yes' if e.allowed else 'NO':<8} {e.max_concurrency or '-':>5} {e.fail_policy or '-'}")  # fmt: skip
    return 0


def _entitlements_list(args: argparse.Namespace) -> int:
    from spanmeter.billing import entitlements

    database = _primary(args)
    with database.connect() as conn:
        rows = entitlements.history(conn, args.plan)
    print(f"{'plan':<12} {'metric':<16} {'hard limit':>14} {'conc.':>5} {'fail':<6} {'from':<21} by")
    for plan, metric, hard, conc, fail, effective, _recorded, by in rows:
        print(f"{plan:<12} {metric:<16} {hard if hard is not None else '-':>14} {conc or '-':>5} {fail:<6} "
              f"{iso(effective):<21} {by}")  # fmt: skip
    return 0
