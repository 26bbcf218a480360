"""``spanmeter usage`` (an account's usage from the ledger), ``spanmeter ingest`` (backfill OTLP files) and
``spanmeter dead-letter`` (rejected spans: list, show, replay, resolve)."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

from ._shared import (
    DATABASE,
    READ_REPLICA,
    CommandError,
    config_from,
    iso,
    note_staleness,
    parse_time,
    read_databases,
    who,
)

__all__ = ["register"]


def register(sub: Any) -> None:
    usage = sub.add_parser(
        "usage", help="usage totals per meter for one account, from the ledger", parents=[DATABASE, READ_REPLICA]
    )
    usage.add_argument("--account", required=True, help="account_id")
    usage.add_argument(
        "--from", dest="start", help="start, inclusive: YYYY-MM-DD or ISO time (default: month start, UTC)"
    )
    usage.add_argument("--to", dest="end", help="end, exclusive: YYYY-MM-DD or ISO time (default: next month start)")
    usage.set_defaults(handler=_usage)
    usage.add_argument(
        "--format", choices=("table", "json", "csv"), default="table", help="output format (default table)"
    )

    ingest = sub.add_parser(
        "ingest", help="backfill OTLP trace files into the ledger (idempotent, safe to re-run)", parents=[DATABASE]
    )
    ingest.add_argument(
        "--otlp-file", required=True, nargs="+", help="OTLP JSON lines or length-prefixed protobuf, gzip ok"
    )
    ingest.add_argument(
        "--format", choices=("auto", "json", "proto"), default="auto", help="file format (default: detected)"
    )

    dead = sub.add_parser("dead-letter", help="inspect and replay rejected spans")
    dead_sub = dead.add_subparsers(dest="dead_command", required=True)
    listing = dead_sub.add_parser(
        "list", help="rejected spans, oldest first, with their replay status", parents=[DATABASE]
    )
    listing.add_argument("--reason", help="only this reject reason")
    listing.add_argument("--since", help="rejected at or after: YYYY-MM-DD or ISO time")
    listing.add_argument("--limit", type=int, default=1000, help="at most this many (default 1000)")
    listing.add_argument("--format", choices=("table", "json"), default="table", help="output format (default table)")
    show = dead_sub.add_parser("show", help="one rejected span, decoded", parents=[DATABASE])
    show.add_argument("id", help="rejection key (from `dead-letter list`)")
    rerun = dead_sub.add_parser(
        "replay", help="re-meter rejected spans into the ledger, exactly once", parents=[DATABASE]
    )
    which = rerun.add_mutually_exclusive_group(required=True)
    which.add_argument("--reason", help="every pending span rejected for this reason")
    which.add_argument("--id", help="one rejected span")
    rerun.add_argument(
        "--patch",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="supply attribution the span lacked (account_id, job_id, plan_code); repeatable",
    )
    rerun.add_argument("--by", default=None, help="who is replaying (default: $USER)")
    rerun.add_argument(
        "--why",
        default="",
        help="why; required with --patch and --override-authorization; recorded with the usage rows",
    )
    rerun.add_argument(
        "--override-authorization",
        action="store_true",
        help="bill spans whose producer cannot be checked against SPANMETER_AUTH_FILE (or may not bill them) "
        "without the check; needs --why; recorded as an override",
    )
    decide = dead_sub.add_parser(
        "resolve",
        help="record a decision on a rejected span that is not replayed (key_conflict, or dismiss)",
        parents=[DATABASE],
    )
    decide.add_argument("id", help="rejection key (from `dead-letter list`)")
    decide.add_argument(
        "--decision",
        required=True,
        choices=("keep-ledger", "bill-span", "dismiss"),
        help="key_conflict: keep-ledger (the ledger's row is right) or bill-span (move the usage to the span's "
        "account, as two corrections); any reason: dismiss (never billed, never replayed)",
    )
    decide.add_argument("--by", default=None, help="who decides (default: $USER)")
    decide.add_argument("--why", required=True, help="why; recorded with the decision and its corrections")

    ingest.set_defaults(handler=_ingest)
    dead.set_defaults(handler=_dead_letter)


def _usage(args: argparse.Namespace) -> int:
    from spanmeter.billing.service import BillingService

    config = config_from(args)
    now = datetime.now(UTC)
    month_start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    start = parse_time(args.start, "--from") if args.start else month_start
    end = parse_time(args.end, "--to") if args.end else (month_start + timedelta(days=32)).replace(day=1)
    if end <= start:
        raise CommandError(f"--to ({end.isoformat()}) must be after --from ({start.isoformat()})")
    databases = read_databases(config)
    billing = BillingService(databases)  # reads the replica when configured: usage may lag
    totals = billing.usage(args.account, start, end)
    archived = billing.archived_before()
    # month to date when the account has a subscription and no window was asked for
    mtd = None if args.start or args.end else billing.month_to_date(args.account, now)
    note_staleness(databases, config)
    if archived is not None and start < archived:  # raw rows of archived months are in their files only
        print(
            f"spanmeter: note: usage before {archived:%Y-%m-%d} was archived (spanmeter db archive): these totals "
            "leave it out; its invoices and rollups stay, and `spanmeter db restore` brings the rows back",
            file=sys.stderr,
        )
    if args.format == "json":
        doc = {
            "account_id": args.account,
            "from": iso(start),
            "to": iso(end),
            "meters": [
                {
                    "meter_code": t.meter_code,
                    "unit": t.unit,
                    "quantity": str(t.quantity),
                    "events": t.events,
                    "adjustments": str(t.adjustments),
                    "adjusted": str(t.adjusted),
                }
                for t in totals
            ],
        }
        if mtd is not None:
            doc["month_to_date"] = {
                "period": str(mtd.period),
                "as_of": iso(mtd.as_of),
                "plan_code": mtd.plan_code,
                "pricing_version": mtd.pricing_version,
                "currency": mtd.currency,
                "usage": {metric: str(q) for metric, q in mtd.usage.items()},
                "quotas": [
                    {"metric": q.metric, "used": str(q.used), "included": str(q.included), "ratio": str(q.ratio)}
                    for q in mtd.quotas
                ],
                "invoice_so_far": str(mtd.invoice_so_far),
                "projected_total": str(mtd.projected_total),
            }
        print(json.dumps(doc, indent=2))
    elif args.format == "csv":
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(
            ["account_id", "from", "to", "meter_code", "unit", "quantity", "events", "adjustments", "adjusted"]
        )
        for t in totals:
            row = [args.account, iso(start), iso(end), t.meter_code, t.unit, t.quantity, t.events]
            writer.writerow([*row, t.adjustments, t.adjusted])
    else:
        print(f"account {args.account}: usage from {iso(start)} to {iso(end)} (end exclusive)")
        if not totals:
            print("  no usage in this period")
        else:
            print(f"  {'meter':<16} {'quantity':>16} {'adjustments':>14} {'adjusted':>16}  {'unit':<10} {'events':>8}")
            for t in totals:
                print(
                    f"  {t.meter_code:<16} {t.quantity!s:>16} {t.adjustments!s:>14} {t.adjusted!s:>16}"
                    f"  {t.unit:<10} {t.events:>8}"
                )
            if any(t.adjustment_count for t in totals):
                corrections = sum(t.adjustment_count for t in totals)
                print(
                    f"  quantity: the usage rows; adjustments: {corrections} correction(s) dated in this window "
                    "(spanmeter ledger adjust); adjusted: what invoices bill"
                )
        if mtd is not None:
            print(f"\nmonth to date ({mtd.period}, {mtd.plan_code} on {mtd.pricing_version}), as of {iso(mtd.as_of)}:")
            for q in mtd.quotas:
                share = f"{q.ratio * 100:.1f}%" if q.ratio is not None else "-"
                print(f"  {q.metric:<16} used {q.used:>16,f} of {q.included:>14,f} included  {share:>7}")
            print(f"  invoice so far   {mtd.invoice_so_far:>16,.2f} {mtd.currency}")
            print(f"  projected month  {mtd.projected_total:>16,.2f} {mtd.currency} (linear estimate)")
    return 0


def _ingest(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    from spanmeter.billing.ledger import migrate
    from spanmeter.billing.ledger.database import resolve_database
    from spanmeter.collector.backfill import ingest_file
    from spanmeter.collector.otlp_files import OtlpFileError

    config = config_from(args)
    files = [Path(f) for f in args.otlp_file]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise CommandError(f"no such file: {', '.join(missing)}")
    database = resolve_database(config.database_url, config.data_dir)
    migrate.prepare(database, migrate_configured=True)  # a backfill into a new ledger, as its owner
    last_print = 0.0

    def progress(totals) -> None:
        nonlocal last_print
        now = time.monotonic()
        if now - last_print >= 1.0:
            last_print = now
            print(f"  ... {path}: {totals.progress()}", file=sys.stderr, flush=True)

    status = 0
    for path in files:
        try:
            totals = ingest_file(database, path, config.limits, args.format, progress)
        except OtlpFileError as exc:
            print(
                f"spanmeter: {exc} (messages before it are committed; fix the file and re-run: nothing is doubled)",
                file=sys.stderr,
            )
            status = 1
            continue
        print(f"{path}: {totals.line()}")
        for reason, count in sorted(totals.rejected.items()):
            print(f"  rejected {reason}: {count} (see `spanmeter dead-letter list --reason {reason}`)")
    return status


def _dead_letter(args: argparse.Namespace) -> int:
    from spanmeter.billing.ledger import migrate
    from spanmeter.billing.ledger.database import resolve_database
    from spanmeter.billing.ledger.deadletters import get_dead_letter, list_dead_letters
    from spanmeter.collector.replay import ReplayError, replay

    config = config_from(args)
    database = resolve_database(config.database_url, config.data_dir, create=False)
    migrate.prepare(database)
    if args.dead_command == "resolve":
        from spanmeter.collector.replay import resolve

        by = who(args.by)
        try:
            done = resolve(
                database,
                rejection_key=args.id,
                decision=args.decision.replace("-", "_"),
                resolved_by=by,
                why=args.why,
                limits=config.limits,
            )
        except ReplayError as exc:
            raise CommandError(str(exc)) from None
        print(done.line())
        return 0
    if args.dead_command == "replay":
        patch = {}
        for item in args.patch:
            key, sep, value = item.partition("=")
            if not sep or not key.strip() or not value:
                raise CommandError(f"--patch {item!r}: write KEY=VALUE, e.g. --patch account_id=acme")
            patch[key.strip()] = value
        by = who(args.by)
        producers = None
        if config.auth_file is not None:  # the producers file as it is now: replay re-checks each span's producer
            from spanmeter.collector.auth import AuthConfigError, load_producers

            try:
                producers = load_producers(config.auth_file)
            except AuthConfigError as exc:
                raise CommandError(f"SPANMETER_AUTH_FILE: {exc}") from None
        try:
            report = replay(
                database,
                reason=args.reason,
                rejection_key=args.id,
                patch=patch,
                replayed_by=by,
                why=args.why,
                limits=config.limits,
                producers=producers,
                override_authorization=args.override_authorization,
            )
        except ReplayError as exc:
            raise CommandError(str(exc)) from None
        print(report.line())
        return 0
    engine = database.engine()
    try:
        if args.dead_command == "show":
            found = get_dead_letter(engine, args.id)
            if found is None:
                raise CommandError(f"no rejected span with id {args.id!r} (ids come from `spanmeter dead-letter list`)")
            print(json.dumps(_dead_letter_document(found, with_span=True), indent=2))
            return 0
        since = parse_time(args.since, "--since") if args.since else None
        rows = list_dead_letters(engine, reason=args.reason, since=since, limit=args.limit)
    finally:
        engine.dispose()
    if args.format == "json":
        print(json.dumps([_dead_letter_document(r, with_span=False) for r in rows], indent=2))
        return 0
    if not rows:
        print("no rejected spans" + (f" with reason {args.reason}" if args.reason else ""))
        return 0
    print(
        f"{'id':<36}  {'rejected_at (UTC)':<19}  {'reason':<18}  {'status':<8}  {'service':<16}  {'account':<12}  meters"
    )
    for r in rows:
        print(
            f"{r.rejection_key:<36}  {r.rejected_at.astimezone(UTC):%Y-%m-%d %H:%M:%S}  {r.reason:<18}  "
            f"{r.status:<8}  {(r.service_name or '-')[:16]:<16}  {(r.account_id or '-')[:12]:<12}  "
            f"{','.join(r.meter_codes)}"
        )
    return 0


def _dead_letter_document(r, with_span: bool) -> dict:
    doc = {
        "id": r.rejection_key,
        "rejected_at": iso(r.rejected_at),
        "reason": r.reason,
        "message": r.error_message,
        "status": r.status,
        "service_name": r.service_name,
        "producer": r.producer,
        "account_id": r.account_id,
        "meters": r.meter_codes,
        "trace_id": r.trace_id,
        "span_id": r.span_id,
        "span_ended_at": iso(r.span_ended_at),
    }
    if r.replayed_at:
        doc["replay"] = {
            "at": iso(r.replayed_at),
            "by": r.replayed_by,
            "why": r.replay_reason,
            "patch": r.replay_patch,
            "authorization": r.replay_authorization,
        }
    if r.resolved_at:
        doc["resolution"] = {
            "at": iso(r.resolved_at),
            "by": r.resolved_by,
            "decision": r.resolution,
            "why": r.resolution_reason,
            "corrections": r.adjustment_keys,
        }
    if with_span and r.payload is not None:
        from spanmeter.collector.otlp_json import resource_spans_to_json

        doc["span"] = resource_spans_to_json(r.payload)
    return doc
