"""The ``spanmeter webhooks`` commands: endpoints, the delivery log, and delivering by hand.

    spanmeter webhooks add --url URL --events quota.threshold,invoice.finalized [--account ID] [--note TEXT]
    spanmeter webhooks list [--all] [--format table|json]
    spanmeter webhooks remove ID
    spanmeter webhooks deliveries [--event ID] [--status pending|delivered|failed|cancelled] [--limit N] [--format …]
    spanmeter webhooks deliver [--once]

``add`` prints the endpoint's signing secret once (``whsec_…``); how a receiver verifies a request is in
:mod:`spanmeter.billing.webhooks` and the README's "Webhooks" section. ``spanmeter serve`` delivers in the
background; ``deliver`` runs the same dispatcher in the foreground (``--once``: the deliveries due now, then
exit; exit 1 when one of them was retried or failed), safely alongside ``serve`` processes (a delivery is
sent by one dispatcher at a time).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from ._shared import DATABASE, CommandError, config_from, iso, who

__all__ = ["register"]


def register(sub: Any) -> None:
    """Add ``webhooks`` and its sub-commands to the ``spanmeter`` parser's sub-parsers."""
    group = sub.add_parser("webhooks", help="signed webhooks for quota thresholds and finalized invoices")
    wsub = group.add_subparsers(dest="webhooks_command", required=True)

    add = wsub.add_parser("add", help="add an endpoint (prints its signing secret once)", parents=[DATABASE])
    add.add_argument("--url", required=True, help="where to POST events: http:// or https://")
    add.add_argument("--events", required=True, help="comma-separated event types: quota.threshold, invoice.finalized")
    add.add_argument("--account", help="only this account's events (default: every account)")
    add.add_argument("--note", default="", help="a note shown by `webhooks list`")
    add.add_argument("--by", help="who (default: $USER)")
    add.set_defaults(handler=_add)

    ls = wsub.add_parser("list", help="the endpoints (never their secrets)", parents=[DATABASE])
    ls.add_argument("--all", action="store_true", help="removed endpoints too")
    ls.add_argument("--format", choices=("table", "json"), default="table", help="output format (default table)")
    ls.set_defaults(handler=_list)

    remove = wsub.add_parser(
        "remove", help="remove an endpoint; its pending deliveries are cancelled", parents=[DATABASE]
    )
    remove.add_argument("endpoint_id", metavar="ID", help="the endpoint's id (`webhooks list`)")
    remove.add_argument("--by", help="who (default: $USER)")
    remove.set_defaults(handler=_remove)

    deliveries = wsub.add_parser(
        "deliveries", help="the delivery log: deliveries and their attempts", parents=[DATABASE]
    )
    deliveries.add_argument("--event", help="one event's deliveries (its id, evt_…)")
    deliveries.add_argument("--status", help="only deliveries in this state: pending, delivered, failed, cancelled")
    deliveries.add_argument("--limit", type=int, default=50, help="newest first, at most this many (default 50)")
    deliveries.add_argument(
        "--format", choices=("table", "json"), default="table", help="output format (default table)"
    )
    deliveries.set_defaults(handler=_deliveries)

    deliver = wsub.add_parser(
        "deliver", help="deliver due webhooks in the foreground (serve does it in the background)", parents=[DATABASE]
    )
    deliver.add_argument("--once", action="store_true", help="deliver what is due now, then exit")
    deliver.set_defaults(handler=_deliver)


def _database(args: argparse.Namespace) -> Any:
    """The primary, migrated (the embedded one is created when missing)."""
    from spanmeter.billing.ledger import migrate
    from spanmeter.billing.ledger.replica import resolve_databases

    config = config_from(args)
    databases = resolve_databases(config.database_url, None, config.data_dir, create=True)
    migrate.prepare(databases.primary)
    return databases.primary


def _service(args: argparse.Namespace) -> Any:
    from spanmeter.billing.webhook_service import WebhookService

    return WebhookService(_database(args))


def _domain(call: Any) -> Any:
    """Run ``call``; a :class:`WebhookError` becomes a command error (exit 2, one line)."""
    from spanmeter.billing.webhook_service import WebhookError

    try:
        return call()
    except WebhookError as exc:
        raise CommandError(str(exc)) from None


def _add(args: argparse.Namespace) -> int:
    from spanmeter.billing import webhooks

    try:  # checked before the database is opened: a typo costs nothing
        url = webhooks.validate_url(args.url)
    except ValueError as exc:
        raise CommandError(f"--url: {exc}") from None
    try:
        events = webhooks.parse_event_types(args.events)
    except ValueError as exc:
        raise CommandError(f"--events {args.events!r}: {exc}") from None
    if args.account is not None and not args.account.strip():
        raise CommandError("--account '': give an account id, or leave --account out for every account")
    service = _service(args)
    endpoint_id, secret = _domain(
        lambda: service.add(url, events, account_id=args.account, by=who(args.by), note=args.note)
    )
    scope = f"account {args.account}" if args.account else "every account"
    print(f"added webhook endpoint {endpoint_id}: {url} ({', '.join(events)}; {scope})")
    print(f"signing secret (shown once; keep it in the receiver's secret store): {secret}")
    return 0


def _list(args: argparse.Namespace) -> int:
    found = _service(args).endpoints(include_removed=args.all)
    rows = [
        {
            "id": e.endpoint_id,
            "url": e.url,
            "events": list(e.events),
            "account_id": e.account_id,
            "note": e.note,
            "created_at": iso(e.created_at),
            "created_by": e.created_by,
            "removed_at": iso(e.removed_at),
        }
        for e in found
    ]
    if args.format == "json":
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no webhook endpoints (spanmeter webhooks add --url URL --events quota.threshold,invoice.finalized)")
    for r in rows:
        removed = f"  removed {r['removed_at']}" if r["removed_at"] else ""
        print(
            f"{r['id']:>4}  {r['url']}  {','.join(r['events'])}  {r['account_id'] or '(every account)'}  "
            f"added {r['created_at']} by {r['created_by']}{removed}{'  ' + r['note'] if r['note'] else ''}"
        )
    return 0


def _remove(args: argparse.Namespace) -> int:
    try:
        endpoint_id = int(args.endpoint_id)
    except ValueError:
        raise CommandError(f"ID {args.endpoint_id!r}: an endpoint id is a number (`spanmeter webhooks list`)") from None
    service = _service(args)
    cancelled = _domain(lambda: service.remove(endpoint_id, by=who(args.by)))
    print(
        f"removed webhook endpoint {endpoint_id}; {cancelled} pending deliver{'y' if cancelled == 1 else 'ies'} cancelled"
    )
    return 0


def _deliveries(args: argparse.Namespace) -> int:
    from spanmeter.billing.ledger.webhook_store import DELIVERY_STATES

    if args.status is not None and args.status not in DELIVERY_STATES:
        raise CommandError(f"--status {args.status!r}: one of {', '.join(DELIVERY_STATES)}")
    if args.limit < 1:
        raise CommandError(f"--limit {args.limit}: at least 1")
    service = _service(args)
    found = _domain(lambda: service.deliveries(event_id=args.event, state=args.status, limit=args.limit))
    rows = [
        {
            "delivery_id": d.delivery_id,
            "event_id": d.event_id,
            "event_type": d.event_type,
            "account_id": d.account_id,
            "endpoint_id": d.endpoint_id,
            "url": d.url,
            "state": d.state,
            "attempts": d.attempts,
            "next_attempt_at": iso(d.next_attempt_at) if d.state == "pending" else None,
            "last_status": d.last_status,
            "last_error": d.last_error,
            "delivered_at": iso(d.delivered_at),
            "created_at": iso(d.created_at),
            "attempt_log": [
                {
                    "attempt": a.attempt,
                    "at": iso(a.attempted_at),
                    "status_code": a.status_code,
                    "error": a.error,
                    "duration_seconds": round(a.duration_seconds, 3),
                }
                for a in tried
            ],
        }
        for d, tried in found
    ]
    if args.format == "json":
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no webhook deliveries match")
    for r in rows:
        when = r["delivered_at"] or (f"next {r['next_attempt_at']}" if r["next_attempt_at"] else "")
        print(
            f"{r['delivery_id']:>6}  {r['event_id']}  {r['event_type']:<17}  {r['account_id']:<16}  -> {r['endpoint_id']} "
            f"{r['url']}  {r['state']:<9}  {r['attempts']} attempt(s)  {when}"
        )
        for a in r["attempt_log"]:
            outcome = f"HTTP {a['status_code']}" if a["status_code"] is not None else a["error"]
            detail = (
                f" ({a['error']})" if a["status_code"] is not None and a["error"] and "HTTP" not in a["error"] else ""
            )
            print(f"          #{a['attempt']}  {a['at']}  {outcome}{detail}  {a['duration_seconds']} s")
    return 0


def _deliver(args: argparse.Namespace) -> int:
    from spanmeter.collector.webhooks import WebhookConfig, WebhookDispatcher

    settings = WebhookConfig.from_environ(os.environ)
    database = _database(args)
    # in the foreground a poll interval of 0 (serve off) still polls: every 2 s
    dispatcher = WebhookDispatcher(
        database,
        poll_interval_seconds=settings.poll_interval_seconds or 2.0,
        timeout_seconds=settings.timeout_seconds,
        max_attempts=settings.max_attempts,
    )
    if args.once:
        try:
            result = dispatcher.run_once()
        finally:
            dispatcher.shutdown()
        print(f"{result.delivered} delivered, {result.retried} to retry, {result.failed} failed")
        return 1 if result.retried or result.failed else 0
    print("delivering webhooks (Ctrl-C stops)", file=sys.stderr)
    dispatcher.start()
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        dispatcher.shutdown()
    return 0
