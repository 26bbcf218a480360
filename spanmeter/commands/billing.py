"""The billing commands of ``spanmeter``: subscriptions, rollups, corrections, invoices, reconciliation, exports.

    spanmeter subscription set --account ID --plan PLAN --pricing VERSION --from TIME [--to TIME] [--currency EUR]
    spanmeter subscription show [--account ID] [--format table|json]
    spanmeter rollups rebuild | check [--period YYYY-MM]
    spanmeter ledger adjust --account ID --meter METER --quantity Q --at TIME --reason TEXT --key KEY
    spanmeter invoice --account ID --period YYYY-MM [--pricing V] [--shadow V] [--finalize] [--format table|json|csv]
    spanmeter invoice shadow-report --period YYYY-MM --shadow V [--format table|json]
    spanmeter reconcile --period YYYY-MM
    spanmeter export usage|invoices|focus --period YYYY-MM [--account ID] [--format json|csv]

Every command migrates the schema first (idempotent) and exits with status 2 and a message on bad input.
Invoice drafts (``invoice`` without ``--finalize``, ``shadow-report``) and ``export`` read the replica of
``--read-database-url`` / ``SPANMETER_READ_DATABASE_URL`` when one is configured; ``invoice --finalize``,
``reconcile`` and every other command read the primary, always (see :mod:`spanmeter.billing.ledger.replica`).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from ._shared import DATABASE, READ_REPLICA, CommandError, config_from, note_staleness, parse_time, who

__all__ = ["register"]


def register(sub: Any) -> None:
    """Add the billing sub-commands to the ``spanmeter`` parser's sub-parsers."""
    subscription = sub.add_parser("subscription", help="which plan and pricing version an account is on")
    ssub = subscription.add_subparsers(dest="subscription_command", required=True)
    setp = ssub.add_parser("set", help="add an effective-dated subscription (append-only)", parents=[DATABASE])
    setp.add_argument("--account", required=True, help="the account (account_id) to subscribe")
    setp.add_argument("--plan", required=True, help="plan code, e.g. starter, growth, scale, platform")
    setp.add_argument("--pricing", required=True, help="pricing version, e.g. v2_compute")
    setp.add_argument("--from", dest="valid_from", required=True, help="YYYY-MM-DD or ISO time on a whole UTC hour")
    setp.add_argument("--to", dest="valid_to", help="end, exclusive (default: open-ended)")
    setp.add_argument("--currency", help="default: the plan's currency")
    setp.add_argument("--note", help="free text kept with the subscription (why, ticket)")
    setp.add_argument("--by", help="who (default: $USER)")
    showp = ssub.add_parser("show", help="subscription history", parents=[DATABASE])
    showp.add_argument("--account", help="one account (default: every account)")
    showp.add_argument("--format", choices=("table", "json"), default="table", help="output format (default table)")

    rollups = sub.add_parser("rollups", help="usage rollups: rebuild from the raw ledger, or check them against it")
    rsub = rollups.add_subparsers(dest="rollups_command", required=True)
    rsub.add_parser(
        "rebuild", help="recompute every rollup from the raw ledger (blocks ingest meanwhile)", parents=[DATABASE]
    )
    checkp = rsub.add_parser(
        "check", help="list differences between the rollups and the raw ledger", parents=[DATABASE]
    )
    checkp.add_argument("--period", help="YYYY-MM (default: everything)")

    ledger = sub.add_parser("ledger", help="ledger corrections")
    lsub = ledger.add_subparsers(dest="ledger_command", required=True)
    adjust = lsub.add_parser(
        "adjust", help="record a usage correction (append-only, idempotent by --key)", parents=[DATABASE]
    )
    adjust.add_argument("--account", required=True, help="the account the correction is for")
    adjust.add_argument("--meter", required=True, help="meter code, e.g. worker_seconds")
    adjust.add_argument("--quantity", required=True, help="signed decimal: negative removes usage")
    adjust.add_argument("--at", required=True, help="when the corrected usage occurred (decides its period)")
    adjust.add_argument("--reason", required=True, help="why (kept with the correction for finance)")
    adjust.add_argument("--key", required=True, help="idempotency key: the same key records the correction once")
    adjust.add_argument("--reference", help="a trace id, ticket or invoice number")
    adjust.add_argument("--by", help="who (default: $USER)")

    invoice = sub.add_parser(
        "invoice",
        help="an account's invoice for a UTC month (or: invoice shadow-report)",
        parents=[DATABASE, READ_REPLICA],
    )
    invoice.add_argument(
        "action",
        nargs="?",
        choices=("shadow-report", "explain", "drivers"),
        help="shadow-report: every account against --shadow; explain: the ledger rows behind each line; "
        "drivers: the top cost drivers of the bill (--group)",
    )
    invoice.add_argument("--account", help="the account to invoice")
    invoice.add_argument("--period", required=True, help="YYYY-MM (UTC calendar month)")
    invoice.add_argument("--pricing", help="rate under this pricing version instead of the subscription's")
    invoice.add_argument("--shadow", help="also rate under this version and explain the difference")
    invoice.add_argument(
        "--transition",
        metavar="POLICY",
        help="with --shadow: cap[:RATIO[:UNTIL_YYYY-MM]] (default cap:0.10) or credit:AMOUNT, shown as a line",
    )
    invoice.add_argument("--finalize", action="store_true", help="store the invoice immutably (after the drift window)")
    invoice.add_argument(
        "--format", choices=("table", "json", "csv"), default="table", help="output format (default table)"
    )
    invoice.add_argument("--by", help="who finalizes (default: $USER)")
    invoice.add_argument("--line", type=int, help="with explain: only line N (as numbered by explain, from 1)")
    invoice.add_argument(
        "--group",
        choices=("job", "model", "service", "task"),
        default="job",
        help="with drivers: what a driver is (default job); the API's ?by=",
    )
    invoice.add_argument("--top", type=int, default=10, help="with drivers: how many (default 10)")
    invoice.add_argument(
        "--trace-url",
        help="with explain: a trace viewer link per trace id, e.g. http://tempo:3200/trace/{trace_id} "
        "(default: $SPANMETER_TRACE_URL_TEMPLATE)",
    )

    reconcile = sub.add_parser(
        "reconcile", help="compare raw ledger, rollups and invoices for a period; store the result", parents=[DATABASE]
    )
    reconcile.add_argument("--period", required=True, help="YYYY-MM (UTC calendar month)")
    reconcile.add_argument("--format", choices=("table", "json"), default="table", help="output format (default table)")

    export = sub.add_parser(
        "export", help="usage, invoices or a FOCUS cost export for a period", parents=[DATABASE, READ_REPLICA]
    )
    export.add_argument(
        "what", choices=("usage", "invoices", "focus"), help="usage per meter, invoice lines, or FOCUS 1.0 cost rows"
    )
    export.add_argument("--period", required=True, help="YYYY-MM (UTC calendar month)")
    export.add_argument("--account", help="one account (default: every account with a subscription)")
    export.add_argument("--format", choices=("json", "csv"), default="csv", help="output format (default csv)")
    export.add_argument("--provider", default="spanmeter", help="focus: ProviderName (and ServiceName)")
    export.add_argument("--publisher", help="focus: PublisherName (default: the provider)")
    export.add_argument("--invoice-issuer", help="focus: InvoiceIssuerName (default: the provider)")
    subscription.set_defaults(handler=_subscription)
    rollups.set_defaults(handler=_rollups)
    ledger.set_defaults(handler=_ledger)
    invoice.set_defaults(handler=_invoice)
    reconcile.set_defaults(handler=_reconcile)
    export.set_defaults(handler=_export)


def _service(args: argparse.Namespace) -> tuple[Any, Any, Any]:
    """The billing service over the primary (migrated when embedded, else checked) and the read replica when
    one is configured (checked); with the databases and configuration, to say when a read may be stale."""
    from spanmeter.billing.ledger import migrate
    from spanmeter.billing.ledger.replica import check_replica_schema, resolve_databases
    from spanmeter.billing.service import BillingService

    config = config_from(args)
    databases = resolve_databases(
        config.database_url, config.read_database_url, config.data_dir, create=not _reads_only(args)
    )
    lagging = args.command == "export" or (args.command == "invoice" and not getattr(args, "finalize", False))
    if databases.replica is None or not lagging:  # what reads the replica never needs the primary
        migrate.prepare(databases.primary)
    if databases.replica is not None and lagging:  # the rest never reads the replica
        check_replica_schema(databases)
    return BillingService(databases), databases, config


def _reads_only(args: argparse.Namespace) -> bool:
    """Commands that write (a subscription, a correction, a finalized invoice, a rebuild, a reconciliation
    run) may start on a new ledger; the others only read one."""
    return (
        (args.command == "subscription" and args.subscription_command == "show")
        or (args.command == "rollups" and args.rollups_command == "check")
        or (args.command == "invoice" and not getattr(args, "finalize", False))
        or args.command == "export"
    )


def _period(text: str) -> Any:
    from spanmeter.billing.periods import Period

    try:
        return Period.parse(text)
    except ValueError as exc:
        raise CommandError(str(exc)) from None


def _drift_window() -> timedelta:
    raw = os.environ.get("SPANMETER_INVOICE_DRIFT_WINDOW_SECONDS", "172800")
    try:
        seconds = int(raw)
        if seconds < 0:
            raise ValueError
    except ValueError:
        raise CommandError(f"SPANMETER_INVOICE_DRIFT_WINDOW_SECONDS={raw!r}: a whole number of seconds >= 0") from None
    return timedelta(seconds=seconds)


def _rows(count: str) -> str:
    return f"{count} row" if count == "1" else f"{count} rows"


def _print_json(document: Any) -> None:
    print(json.dumps(document, indent=2, sort_keys=False))


def _subscription(args: argparse.Namespace) -> int:
    billing = _service(args)[0]
    if args.subscription_command == "set":
        row = billing.subscribe(
            account_id=args.account,
            plan_code=args.plan,
            pricing_version=args.pricing,
            valid_from=parse_time(args.valid_from, "--from"),
            valid_to=parse_time(args.valid_to, "--to") if args.valid_to else None,
            currency=args.currency,
            by=who(args.by),
            note=args.note,
        )
        until = row.valid_to.isoformat() if row.valid_to else "open-ended"
        print(
            f"subscription {row.subscription_id}: {row.account_id} on {row.plan_code} ({row.pricing_version}, "
            f"{row.currency}) from {row.valid_from.isoformat()} ({until})"
        )
        return 0
    rows = billing.subscription_history(args.account)
    if args.format == "json":
        _print_json(
            [
                {
                    "subscription_id": r.subscription_id,
                    "account_id": r.account_id,
                    "plan_code": r.plan_code,
                    "pricing_version": r.pricing_version,
                    "currency": r.currency,
                    "valid_from": r.valid_from.isoformat(),
                    "valid_to": r.valid_to.isoformat() if r.valid_to else None,
                    "created_at": r.created_at.isoformat(),
                    "created_by": r.created_by,
                    "note": r.note,
                }
                for r in rows
            ]
        )
        return 0
    if not rows:
        print("no subscriptions")
    for r in rows:
        until = r.valid_to.isoformat() if r.valid_to else "(until superseded)"
        print(
            f"{r.subscription_id:>5}  {r.account_id:<16} {r.plan_code:<10} {r.pricing_version:<12} {r.currency}  "
            f"from {r.valid_from.isoformat()}  to {until}  by {r.created_by}"
        )
    return 0


def _rollups(args: argparse.Namespace) -> int:
    billing = _service(args)[0]
    if args.rollups_command == "rebuild":
        counts = billing.rebuild_rollups()
        print("rebuilt from the raw ledger: " + ", ".join(f"{t} {n} rows" for t, n in counts.items()))
        return 0
    period = _period(args.period) if args.period else None
    differences = billing.check_rollups(period)
    if not differences:
        print("rollups match the raw ledger" + (f" for {period}" if period else ""))
        return 0
    for d in differences:
        print(f"{d.table}: {' '.join(d.key)}: maintained {d.maintained}, raw ledger {d.recomputed}")
    print(f"{len(differences)} difference(s): run `spanmeter rollups rebuild`", file=sys.stderr)
    return 1


def _ledger(args: argparse.Namespace) -> int:
    try:
        quantity = Decimal(args.quantity)
    except InvalidOperation:
        raise CommandError(f"--quantity {args.quantity!r} is not a decimal number") from None
    row, created = _service(args)[0].adjust(
        idempotency_key=args.key,
        account_id=args.account,
        meter_code=args.meter,
        quantity=quantity,
        occurred_at=parse_time(args.at, "--at"),
        reason=args.reason,
        by=who(args.by),
        reference=args.reference,
    )
    verb = "recorded" if created else "already recorded (same key, same correction): nothing changed"
    print(
        f"correction {row.idempotency_key} {verb}: {row.account_id} {row.meter_code} {row.quantity:+f} at {row.occurred_at.isoformat()}"
    )
    return 0


def _money(amount: Decimal) -> str:
    return f"{amount:,.2f}"


def _invoice_table(document: dict[str, Any]) -> str:
    out = io.StringIO()
    w = out.write
    w(
        f"{document['invoice_number']}  ({document['status']})  account {document['account_id']}  period {document['period']}\n"
    )
    w(
        f"pricing {document['pricing_version']}  currency {document['currency']}  meter versions {document['meter_versions']}\n"
    )
    for s in document["subscriptions"]:
        w(f"  subscription: {s['plan_code']} ({s['pricing_version']}) {s['from']} .. {s['to']}\n")
    w(f"\n  {'description':<62} {'quantity':>14} {'included':>12} {'unit price':>12} {'amount':>12}\n")
    for line in document["lines"]:
        w(
            f"  {line['description'][:62]:<62} {line['quantity']:>14} {line['included_quantity']:>12} "
            f"{line['unit_price']:>12} {line['amount']:>12}\n"
        )
    w(f"  {'TOTAL ' + document['currency']:<62} {'':>14} {'':>12} {'':>12} {document['total']:>12}\n")
    for m in document["plan_mismatches"]:
        w(
            f"  note: {m['quantity']} units carried plan_code {m['span_plan_code']!r} but the subscription is "
            f"{m['subscription_plan_code']!r} (rated by the subscription)\n"
        )
    for metric, q in document["unrated_usage"].items():
        w(f"  note: {q} {metric} occurred while no subscription was in force: not rated\n")
    return out.getvalue()


def _invoice_csv(documents: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    columns = [
        "invoice_number",
        "account_id",
        "period",
        "currency",
        "pricing_version",
        "line_no",
        "kind",
        "meter_code",
        "description",
        "quantity",
        "included_quantity",
        "overage_quantity",
        "unit_price",
        "amount",
        "reference_period",
    ]
    writer.writerow(columns)
    for doc in documents:
        for i, line in enumerate(doc["lines"], start=1):
            writer.writerow(
                [doc["invoice_number"], doc["account_id"], doc["period"], doc["currency"], doc["pricing_version"], i]
                + [line[c] for c in columns[6:]]
            )
    return out.getvalue()


def _transition(text: str | None) -> Any:
    if not text:
        return None
    from spanmeter.billing.rating import TransitionPolicy

    kind, *rest = text.split(":")
    try:
        if kind == "cap" and len(rest) <= 2:
            ratio = Decimal(rest[0]) if rest and rest[0] else Decimal("0.10")
            return TransitionPolicy("cap", cap_ratio=ratio, until_period=rest[1] if len(rest) > 1 else None)
        if kind == "credit" and len(rest) == 1:
            return TransitionPolicy("credit", credit_amount=Decimal(rest[0]))
    except (InvalidOperation, ValueError) as exc:
        raise CommandError(f"--transition {text!r}: {exc}") from None
    raise CommandError(f"--transition {text!r}: write cap[:RATIO[:UNTIL_YYYY-MM]] or credit:AMOUNT")


def _invoice(args: argparse.Namespace) -> int:
    period = _period(args.period)
    transition = _transition(args.transition)
    if transition is not None and not args.shadow:
        raise CommandError("--transition applies to the shadow invoice: add --shadow VERSION")
    billing, databases, config = _service(args)
    if args.action == "shadow-report":
        if not args.shadow:
            raise CommandError("shadow-report needs --shadow VERSION")
        reports = billing.shadow_report(period, args.shadow, pricing=args.pricing, transition=transition)
        note_staleness(databases, config)
        if args.format == "json":
            _print_json([r.to_dict() for r in reports])
            return 0
        total_primary = sum((r.primary.total for r in reports), Decimal(0))
        total_shadow = sum((r.shadow.total for r in reports), Decimal(0))
        print(f"shadow report {period}: {len(reports)} account(s), shadow pricing {args.shadow}")
        for r in reports:
            print(
                f"\n{r.primary.account_id}: {r.primary.pricing_version} {_money(r.primary.total)} {r.primary.currency}, "
                f"{args.shadow} {_money(r.shadow.total)}, difference {r.difference:+,.2f}\n  {r.explanation}"
            )
        print(
            f"\nall accounts: {_money(total_primary)} now, {_money(total_shadow)} under {args.shadow} "
            f"(difference {total_shadow - total_primary:+,.2f})"
        )
        return 0
    if not args.account:
        raise CommandError("invoice needs --account (or use `invoice shadow-report`)")
    if args.action == "explain":
        return _explain(args, billing, period, databases, config)
    if args.action == "drivers":
        return _drivers(args, billing, period, databases, config)
    if args.finalize:
        if args.pricing:
            raise CommandError("--finalize rates by the subscription; drop --pricing")
        # the primary, always: the invoice is built from what is committed there and stored in the same
        # transaction (under the period's advisory lock); a replica's figures may be behind
        invoice, created = billing.finalize(
            args.account, period, now=datetime.now(UTC), by=who(args.by), drift_window=_drift_window()
        )
        print(
            f"{invoice.invoice_number} finalized" if created else f"{invoice.invoice_number} was already finalized",
            file=sys.stderr,
        )
        comparison = None
        if args.shadow:
            comparison = billing.invoice_and_shadow(
                args.account, period, shadow=args.shadow, transition=transition, exact=True
            )[1]
    else:  # a draft: the read replica when configured
        invoice, comparison = billing.invoice_and_shadow(
            args.account, period, pricing_override=args.pricing, shadow=args.shadow, transition=transition
        )
        note_staleness(databases, config)
    document = invoice.to_dict()
    if args.format == "json":
        if comparison is not None:
            document["shadow"] = comparison.to_dict()
        _print_json(document)
    elif args.format == "csv":
        sys.stdout.write(_invoice_csv([document]))
    else:
        sys.stdout.write(_invoice_table(document))
        if comparison is not None:
            c = comparison.to_dict()
            print(
                f"\nshadow: {c['shadow']['pricing_version']} total {c['shadow']['total']} vs "
                f"{c['primary']['pricing_version']} total {c['primary']['total']}: difference {c['difference']}\n"
                f"  {c['explanation']}"
            )
    return 0


def _explain(args: argparse.Namespace, billing: Any, period: Any, databases: Any, config: Any) -> int:
    template = args.trace_url or os.environ.get("SPANMETER_TRACE_URL_TEMPLATE") or None
    invoice, explanations = billing.explain(args.account, period, line_no=args.line, trace_url_template=template)
    note_staleness(databases, config)
    if args.format == "json":
        _print_json({"invoice_number": invoice.invoice_number, "status": invoice.status, "total": invoice.to_dict()["total"],
                     "currency": invoice.currency, "lines": [e.to_dict() for e in explanations]})  # fmt: skip
        return 0
    print(f"{invoice.invoice_number} ({invoice.status}) {invoice.account_id} {invoice.period}: "
          f"{invoice.to_dict()['total']} {invoice.currency}")  # fmt: skip
    for e in explanations:
        line = e.line
        print(f"\nline {e.line_no}: {line['description']}  =  {line['quantity']} × {line['unit_price']} = "
              f"{line['amount']} {line['currency']}")  # fmt: skip
        print(f"  from {e.basis}")
        for t in e.totals:
            print(f"  {t['meter_code']}: {_rows(t['rows'])}, {t['quantity']} in total, {t['first']} … {t['last']}")
        for j in e.top_jobs:
            print(f"  job {j['job_id']}: {j['quantity']} in {_rows(j['rows'])}, {j['first']} … {j['last']}, trace "
                  f"{j['trace_id']}" + (f"  {j['url']}" if "url" in j else ""))  # fmt: skip
        for c in e.corrections:
            print(
                f"  correction {c['key']}: {c['meter_code']} {c['quantity']} at {c['occurred_at']} by {c['by']}: {c['reason']}"
            )
        if e.note:
            print(f"  note: {e.note}")
    return 0


def _drivers(args: argparse.Namespace, billing: Any, period: Any, databases: Any, config: Any) -> int:
    if not 1 <= args.top <= 100:
        raise CommandError("--top: give 1 to 100")
    report = billing.drivers(args.account, period, args.group, args.top)
    note_staleness(databases, config)
    invoice = report.invoice
    if args.format == "json":
        _print_json(
            {
                "account_id": invoice.account_id,
                "period": invoice.period,
                "by": report.by,
                "invoice_number": invoice.invoice_number,
                "status": invoice.status,
                "total": {"amount": format(invoice.total, "f"), "currency": invoice.currency},
                "unattributed": {"amount": format(report.unattributed, "f"), "currency": invoice.currency},
                "drivers": [
                    {
                        "key": d.key,
                        "amount": {"amount": format(d.amount, "f"), "currency": invoice.currency},
                        "share": format(d.share, "f"),
                        "quantities": {m: format(q, "f") for m, q in d.quantities.items()},
                    }
                    for d in report.drivers
                ],
            }
        )
        return 0
    print(f"{invoice.invoice_number} ({invoice.status}) {invoice.account_id} {invoice.period}: "
          f"{_money(invoice.total)} {invoice.currency}; top {len(report.drivers)} {report.by}s")  # fmt: skip
    for d in report.drivers:
        used = ", ".join(f"{q:,f} {m}" for m, q in d.quantities.items())
        print(f"  {d.key or '(none)':<40} {_money(d.amount):>14} {invoice.currency} {d.share * 100:6.2f}%  {used}")
    print(f"  {'fees, commitments, adjustments':<40} {_money(report.unattributed):>14} {invoice.currency}")
    return 0


def _reconcile(args: argparse.Namespace) -> int:
    period = _period(args.period)
    result = _service(args)[0].reconcile(period)
    if args.format == "json":
        _print_json(result.to_dict())
    else:
        print(result.summary())
    return 0 if result.delta == 0 else 1


def _export(args: argparse.Namespace) -> int:
    from spanmeter.billing import exports

    period = _period(args.period)
    parties = exports.FocusParties(args.provider, args.publisher, args.invoice_issuer)
    billing, databases, config = _service(args)
    rows = billing.export(args.what, period, args.account, parties)  # the read replica when configured: may lag
    note_staleness(databases, config)
    if args.format == "json":
        _print_json(rows)
    else:
        sys.stdout.write(exports.to_csv(rows))
    return 0
