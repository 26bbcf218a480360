"""The ``spanmeter`` command line.

    spanmeter serve [--otlp-endpoint HOST:PORT] [--metrics-port N] [--database-url URL] [--data-dir DIR]
    spanmeter demo [--documents N] [--broker URL]      (the main job: a metered Django + Celery pipeline)
    spanmeter db upgrade | url | stop
    spanmeter usage --account ID [--from DATE] [--to DATE] [--format table|json|csv] [--read-database-url URL]
    spanmeter dead-letter list | show ID | replay --reason R | resolve ID --decision D --why TEXT
    spanmeter subscription | rollups | ledger adjust | invoice | reconcile | export   (billing: see billing_cli)

Every command reads the same ``SPANMETER_*`` variables (see :mod:`spanmeter.collector.config`); flags win.
Bad configuration exits with status 2 and one message naming every bad setting. ``usage``, invoice drafts
and ``export`` read the replica of ``--read-database-url`` when one is configured; everything else reads
and writes the primary (see :mod:`spanmeter.billing.ledger.replica`).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import signal
import sys
import threading
import traceback
from datetime import UTC, datetime, timedelta
from typing import Any

from spanmeter import __version__, ledger_cli

__all__ = ["main"]


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--database-url", help="PostgreSQL URL (default: the embedded database)")
    parser.add_argument("--data-dir", help="embedded database directory (default: ./.spanmeter)")


def _read_replica(parser: argparse.ArgumentParser) -> None:
    """For commands whose reads may lag: they read this hot standby instead of the primary."""
    parser.add_argument(
        "--read-database-url",
        help="a hot standby of the ledger to read instead of the primary (env SPANMETER_READ_DATABASE_URL; "
        "'' reads the primary)",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spanmeter", description="Usage metering from OpenTelemetry spans.")
    parser.add_argument("--version", action="version", version=f"spanmeter {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the OTLP/gRPC and OTLP/HTTP receiver that writes the usage ledger")
    serve.add_argument("--otlp-endpoint", help="HOST:PORT for OTLP/gRPC (default 127.0.0.1:4317)")
    serve.add_argument(
        "--otlp-http-endpoint",
        help="HOST:PORT for OTLP/HTTP, POST /v1/traces (default 127.0.0.1:4318; none: off); "
        "env SPANMETER_OTLP_HTTP_ENDPOINT",
    )
    serve.add_argument("--metrics-port", type=str, help="port for /metrics, /healthz, /readyz (default 9464)")
    serve.add_argument(
        "--processes",
        type=str,
        help="receiver processes sharing the OTLP port, one per core (default 1; env SPANMETER_PROCESSES)",
    )
    serve.add_argument(
        "--insecure-listen",
        action="store_true",
        default=None,
        help="allow a non-loopback address without producer authentication (behind a private network only)",
    )
    serve.add_argument(
        "--allow-owner",
        action="store_true",
        default=None,
        help="serve with a superuser or the ledger tables' owner (it could disable the append-only triggers); "
        "env SPANMETER_ALLOW_OWNER",
    )
    serve.add_argument(
        "--read-database-url",
        help="the ledger's read replica, to export its lag as spanmeter_read_replica_* (serve itself reads the "
        "primary); env SPANMETER_READ_DATABASE_URL",
    )
    _common(serve)

    db = sub.add_parser("db", help="manage the ledger database")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    for name, text in (
        ("upgrade", "apply schema migrations"),
        ("url", "print a URL psql and psycopg accept (starts the embedded server if needed)"),
        ("stop", "stop the embedded server"),
    ):
        _common(db_sub.add_parser(name, help=text))
    ledger_cli.add_commands(db_sub, _common)

    auth = sub.add_parser("auth", help="producer tokens for SPANMETER_AUTH_FILE")
    auth_sub = auth.add_subparsers(dest="auth_command", required=True)
    auth_sub.add_parser("new-token", help="print a new random token and the sha256 line for the producers file")
    auth_sub.add_parser("hash-token", help="read a token on standard input, print its sha256 for the producers file")

    demo = sub.add_parser("demo", help="the main job: a Django + Celery pipeline metered end to end (about a minute)")
    demo.add_argument("--documents", type=int, default=5, help="documents per account (default 5)")
    demo.add_argument(
        "--broker", help="Celery broker URL (default: kombu's SQLAlchemy transport on the ledger's PostgreSQL)"
    )
    _common(demo)

    usage = sub.add_parser("usage", help="usage totals per meter for one account, from the ledger")
    usage.add_argument("--account", required=True, help="account_id")
    usage.add_argument(
        "--from", dest="start", help="start, inclusive: YYYY-MM-DD or ISO time (default: month start, UTC)"
    )
    usage.add_argument("--to", dest="end", help="end, exclusive: YYYY-MM-DD or ISO time (default: next month start)")
    usage.add_argument(
        "--format", choices=("table", "json", "csv"), default="table", help="output format (default table)"
    )
    _common(usage)
    _read_replica(usage)

    ingest = sub.add_parser("ingest", help="backfill OTLP trace files into the ledger (idempotent, safe to re-run)")
    ingest.add_argument(
        "--otlp-file", required=True, nargs="+", help="OTLP JSON lines or length-prefixed protobuf, gzip ok"
    )
    ingest.add_argument(
        "--format", choices=("auto", "json", "proto"), default="auto", help="file format (default: detected)"
    )
    _common(ingest)

    dead = sub.add_parser("dead-letter", help="inspect and replay rejected spans")
    dead_sub = dead.add_subparsers(dest="dead_command", required=True)
    listing = dead_sub.add_parser("list", help="rejected spans, oldest first, with their replay status")
    listing.add_argument("--reason", help="only this reject reason")
    listing.add_argument("--since", help="rejected at or after: YYYY-MM-DD or ISO time")
    listing.add_argument("--limit", type=int, default=1000, help="at most this many (default 1000)")
    listing.add_argument("--format", choices=("table", "json"), default="table", help="output format (default table)")
    _common(listing)
    show = dead_sub.add_parser("show", help="one rejected span, decoded")
    show.add_argument("id", help="rejection key (from `dead-letter list`)")
    _common(show)
    rerun = dead_sub.add_parser("replay", help="re-meter rejected spans into the ledger, exactly once")
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
    _common(rerun)
    decide = dead_sub.add_parser(
        "resolve", help="record a decision on a rejected span that is not replayed (key_conflict, or dismiss)"
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
    _common(decide)

    from spanmeter import billing_cli, ops_cli

    billing_cli.register(sub)
    ops_cli.register(sub)
    return parser


def _config(args: argparse.Namespace, **extra: Any) -> Any:
    from spanmeter.collector.config import load_config

    overrides = {
        "database_url": args.database_url,
        "data_dir": args.data_dir,
        "read_database_url": getattr(args, "read_database_url", None),
        **extra,
    }
    return load_config(os.environ, overrides)


def _read_databases(config: Any, create: bool = False) -> Any:
    """The primary and the configured replica, each ready for reading: the embedded primary migrated, a
    configured one checked; a replica only checked (its schema is the primary's as replayed)."""
    from spanmeter.billing.ledger import migrate
    from spanmeter.billing.ledger.replica import check_replica_schema, resolve_databases

    databases = resolve_databases(config.database_url, config.read_database_url, config.data_dir, create=create)
    if databases.replica is None:
        migrate.prepare(databases.primary)
    else:
        check_replica_schema(databases)
    return databases


def _note_staleness(databases: Any, config: Any) -> None:
    """After a read of the replica: one line on stderr when its figures may miss recent usage."""
    if databases.replica is None:
        return
    from spanmeter.billing.ledger.replica import measure_lag

    try:
        note = measure_lag(databases.primary, databases.replica).stale_note(config.read_stale_after_seconds)
    except Exception as exc:  # the primary away: the replica's answer still stands, say what it is
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        note = f"could not compare the read replica with the primary ({first}): figures as of its last replay"
    if note:
        print(f"spanmeter: note: {note}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from spanmeter.collector.config import ConfigError

    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "db":
            return _db(args)
        if args.command == "demo":
            return _demo(args)
        if args.command == "usage":
            return _usage(args)
        if args.command == "ingest":
            return _ingest(args)
        if args.command == "dead-letter":
            return _dead_letter(args)
        if args.command == "auth":
            return _auth(args)
        from spanmeter import billing_cli, ops_cli

        if args.command in billing_cli.COMMANDS:
            return billing_cli.run(args)
        if args.command in ops_cli.COMMANDS:
            return ops_cli.run(args)
    except (ConfigError, UsageError) as exc:
        return _fail(str(exc))
    except Exception as exc:  # every user-facing failure: one or two lines naming the fix, no traceback
        return _explain(exc)
    return 1


def _fail(message: str, status: int = 2) -> int:
    if os.environ.get("SPANMETER_DEBUG") == "1":
        traceback.print_exc()
    print(f"spanmeter: {message}", file=sys.stderr)
    return status


def _explain(exc: Exception) -> int:
    """The one message (exit 2) for a failure a person can act on; anything else exit 1, still no traceback
    unless SPANMETER_DEBUG=1."""
    import psycopg
    import sqlalchemy.exc

    from spanmeter.billing.ledger.database import NoLedgerHere
    from spanmeter.billing.ledger.migrate import SchemaNotCurrent
    from spanmeter.billing.ledger.replica import ReadReplicaError, ReplicaConflict

    cause = exc.orig if isinstance(exc, sqlalchemy.exc.DBAPIError) and exc.orig is not None else exc
    first = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
    if isinstance(exc, ReplicaConflict):  # transient: retrying may well work
        return _fail(str(exc), 1)
    if isinstance(exc, (NoLedgerHere, SchemaNotCurrent, ReadReplicaError)):
        return _fail(str(exc))
    if isinstance(cause, psycopg.errors.UndefinedTable):
        return _fail(f"the ledger has no spanmeter schema ({first}): run `spanmeter db upgrade` as its owner")
    if isinstance(cause, psycopg.errors.InsufficientPrivilege):
        return _fail(f"the database refused ({first}): this command needs the ledger owner's credential")
    sqlstate = getattr(cause, "sqlstate", None) or ""
    if isinstance(cause, psycopg.OperationalError) and (not sqlstate or sqlstate[:2] in ("08", "28", "3D")):
        return _fail(
            f"cannot use the ledger database ({first}): check --database-url / SPANMETER_DATABASE_URL, that "
            "PostgreSQL is running and reachable, and the user and password"
        )
    if isinstance(cause, psycopg.Error):  # the database answered, and refused this (a timeout, a full disk, …)
        return _fail(f"the ledger database refused the command ({first}); retry, or see its log", 1)
    if isinstance(exc, ModuleNotFoundError) and exc.name and exc.name.split(".")[0] in _DEMO_MODULES:
        return _fail(f"this needs the demo extra ({exc.name} is not installed): pip install 'spanmeter[demo]'")
    if isinstance(exc, OSError):
        return _fail(first if str(exc) else f"{type(exc).__name__}")
    return _fail(f"unexpected error: {type(exc).__name__}: {first} (SPANMETER_DEBUG=1 shows the traceback)", 1)


_DEMO_MODULES = frozenset({"django", "celery", "kombu", "redis", "amqp", "billiard", "vine"})


class UsageError(ValueError):
    pass


def _serve(args: argparse.Namespace) -> int:
    from spanmeter.collector.auth import AuthConfigError
    from spanmeter.collector.config import listen_problem
    from spanmeter.collector.schema import PrivilegedCredential
    from spanmeter.collector.server import CollectorServer
    from spanmeter.logs import configure_logging

    config = _config(
        args,
        otlp_endpoint=args.otlp_endpoint,
        otlp_http_endpoint=args.otlp_http_endpoint,
        metrics_port=args.metrics_port,
        insecure_listen=args.insecure_listen,
        allow_owner=args.allow_owner,
        processes=args.processes,
    )
    problem = listen_problem(config)
    if problem:
        raise UsageError(problem)
    configure_logging(config.log_level, config.log_format)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    if config.processes > 1:
        from spanmeter.collector.supervisor import Supervisor

        server = Supervisor(config)
    else:
        server = CollectorServer(config)

    def reload_producers(*_: object) -> None:
        try:
            server.reload_auth()
        except Exception:  # a signal handler must never take the process down
            logging.getLogger("spanmeter").exception("reloading the producers file failed")

    signal.signal(signal.SIGHUP, reload_producers)
    try:
        addresses = server.start()
    except PrivilegedCredential as exc:
        print(f"spanmeter: {exc}", file=sys.stderr)
        server.shutdown(0)
        return 2
    except (OSError, AuthConfigError) as exc:  # a port in use, an unusable data directory, a bad producers file
        print(f"spanmeter: {exc}", file=sys.stderr)
        server.shutdown(0)
        return 2
    print(f"spanmeter {__version__} serving", flush=True)
    print(f"  OTLP/gRPC  {addresses.otlp}  (TraceService/Export, compression gzip or none)", flush=True)
    if addresses.otlp_http:
        print(
            f"  OTLP/HTTP  http{'s' if config.tls_cert_file else ''}://{addresses.otlp_http}/v1/traces"
            "  (protobuf or JSON, gzip or none)",
            flush=True,
        )
    if addresses.metrics:
        print(f"  metrics    http://{addresses.metrics}/metrics  (/healthz, /readyz)", flush=True)
    print(f"  ledger     {addresses.database}", flush=True)
    if config.read_database_url:
        from spanmeter.billing.ledger.replica import replica_database

        replica = replica_database(config.read_database_url).description
        print(f"  replica    {replica}: lag as spanmeter_read_replica_* (serve reads the primary)", flush=True)
    print(f"  security   {addresses.security}", flush=True)
    from spanmeter.collector.processors.native import metering_mode

    if metering_mode() == "native":
        print("  metering   native (the compiled Rust core; Python for what it hands back)", flush=True)
    else:
        print(
            "  metering   python (no compiled core: install a Rust toolchain and rerun ./scripts/bootstrap.sh,"
            " or SPANMETER_NATIVE=0 is set)",
            flush=True,
        )
    print(
        f"listening otlp={addresses.otlp} metrics={addresses.metrics or '-'} otlp_http={addresses.otlp_http or '-'}",
        flush=True,
    )
    while not stop.wait(3600):
        pass
    print("spanmeter: stopping: no new requests; committing in-flight ones", flush=True)
    server.shutdown()
    print("spanmeter: stopped", flush=True)
    return 0


def _demo(args: argparse.Namespace) -> int:
    try:
        from spanmeter.demo.runner import DemoOptions, run_demo
    except ImportError as exc:
        raise UsageError(f"the demo needs Django and Celery: pip install 'spanmeter[demo]' ({exc})") from exc
    if not 1 <= args.documents <= 200:
        raise UsageError("--documents must be between 1 and 200")
    config = _config(args)
    options = DemoOptions(
        data_dir=config.data_dir,
        database_url=config.database_url,
        broker_url=args.broker,
        documents_per_account=args.documents,
    )
    return run_demo(options)


def _db(args: argparse.Namespace) -> int:
    from spanmeter.billing.ledger import migrate
    from spanmeter.billing.ledger.database import resolve_database
    from spanmeter.billing.ledger.embedded import EmbeddedPostgres

    config = _config(args)
    if args.db_command == "stop":
        if config.database_url:
            raise UsageError("`db stop` stops the embedded database; a configured server is not spanmeter's to stop")
        stopped = EmbeddedPostgres(config.data_dir).stop()
        print("embedded PostgreSQL stopped" if stopped else "embedded PostgreSQL was not running")
        return 0
    database = resolve_database(config.database_url, config.data_dir)
    if args.db_command in ("partitions", "archive", "restore"):
        migrate.prepare(database)
        return ledger_cli.run(args, config, database, UsageError)
    if args.db_command == "upgrade":
        before, after = migrate.upgrade(database)
        print(
            f"ledger schema: {before or 'empty'} -> {after}" if before != after else f"ledger schema current: {after}"
        )
        return 0
    print(f"# {database.description}")
    print(database.conninfo)
    return 0


def _iso(moment: datetime | None) -> str | None:
    """A UTC time as ISO 8601 with a Z."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z") if moment is not None else None


def _parse_time(text: str, flag: str) -> datetime:
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(
            f"{flag} {text!r}: write YYYY-MM-DD or an ISO 8601 time such as 2026-11-01T00:00:00Z"
        ) from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _usage(args: argparse.Namespace) -> int:
    from spanmeter.billing.ledger.replica import read_connection
    from spanmeter.billing.quotas import month_to_date
    from spanmeter.billing.usage import archived_before, usage_totals

    config = _config(args)
    now = datetime.now(UTC)
    month_start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    start = _parse_time(args.start, "--from") if args.start else month_start
    end = _parse_time(args.end, "--to") if args.end else (month_start + timedelta(days=32)).replace(day=1)
    if end <= start:
        raise UsageError(f"--to ({end.isoformat()}) must be after --from ({start.isoformat()})")
    databases = _read_databases(config)

    def read(database: Any) -> tuple[Any, Any, Any]:  # the replica when configured: usage may lag
        engine = database.engine()
        try:
            totals = usage_totals(engine, args.account, start, end)
            archived = archived_before(engine)
        finally:
            engine.dispose()
        if args.start or args.end:
            return totals, None, archived
        with read_connection(database) as conn:  # month to date when the account has a subscription
            return totals, month_to_date(conn, args.account, now), archived

    totals, mtd, archived = databases.read(read)
    _note_staleness(databases, config)
    if archived is not None and start < archived:  # raw rows of archived months are in their files only
        print(
            f"spanmeter: note: usage before {archived:%Y-%m-%d} was archived (spanmeter db archive): these totals "
            "leave it out; its invoices and rollups stay, and `spanmeter db restore` brings the rows back",
            file=sys.stderr,
        )
    if args.format == "json":
        doc = {
            "account_id": args.account,
            "from": _iso(start),
            "to": _iso(end),
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
                "as_of": _iso(mtd.as_of),
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
            row = [args.account, _iso(start), _iso(end), t.meter_code, t.unit, t.quantity, t.events]
            writer.writerow([*row, t.adjustments, t.adjusted])
    else:
        print(f"account {args.account}: usage from {_iso(start)} to {_iso(end)} (end exclusive)")
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
            print(f"\nmonth to date ({mtd.period}, {mtd.plan_code} on {mtd.pricing_version}), as of {_iso(mtd.as_of)}:")
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

    config = _config(args)
    files = [Path(f) for f in args.otlp_file]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise UsageError(f"no such file: {', '.join(missing)}")
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


def _who(given: str | None) -> str:
    """Who runs a recorded operation: --by, else the login name."""
    return given or os.environ.get("USER") or os.environ.get("LOGNAME") or "unknown"


def _dead_letter(args: argparse.Namespace) -> int:
    from spanmeter.billing.deadletters import get_dead_letter, list_dead_letters
    from spanmeter.billing.ledger import migrate
    from spanmeter.billing.ledger.database import resolve_database
    from spanmeter.collector.replay import ReplayError, replay

    config = _config(args)
    database = resolve_database(config.database_url, config.data_dir, create=False)
    migrate.prepare(database)
    if args.dead_command == "resolve":
        from spanmeter.collector.replay import resolve

        by = _who(args.by)
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
            raise UsageError(str(exc)) from None
        print(done.line())
        return 0
    if args.dead_command == "replay":
        patch = {}
        for item in args.patch:
            key, sep, value = item.partition("=")
            if not sep or not key.strip() or not value:
                raise UsageError(f"--patch {item!r}: write KEY=VALUE, e.g. --patch account_id=acme")
            patch[key.strip()] = value
        by = _who(args.by)
        producers = None
        if config.auth_file is not None:  # the producers file as it is now: replay re-checks each span's producer
            from spanmeter.collector.auth import AuthConfigError, load_producers

            try:
                producers = load_producers(config.auth_file)
            except AuthConfigError as exc:
                raise UsageError(f"SPANMETER_AUTH_FILE: {exc}") from None
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
            raise UsageError(str(exc)) from None
        print(report.line())
        return 0
    engine = database.engine()
    try:
        if args.dead_command == "show":
            found = get_dead_letter(engine, args.id)
            if found is None:
                raise UsageError(f"no rejected span with id {args.id!r} (ids come from `spanmeter dead-letter list`)")
            print(json.dumps(_dead_letter_document(found, with_span=True), indent=2))
            return 0
        since = _parse_time(args.since, "--since") if args.since else None
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
        "rejected_at": _iso(r.rejected_at),
        "reason": r.reason,
        "message": r.error_message,
        "status": r.status,
        "service_name": r.service_name,
        "producer": r.producer,
        "account_id": r.account_id,
        "meters": r.meter_codes,
        "trace_id": r.trace_id,
        "span_id": r.span_id,
        "span_ended_at": _iso(r.span_ended_at),
    }
    if r.replayed_at:
        doc["replay"] = {
            "at": _iso(r.replayed_at),
            "by": r.replayed_by,
            "why": r.replay_reason,
            "patch": r.replay_patch,
            "authorization": r.replay_authorization,
        }
    if r.resolved_at:
        doc["resolution"] = {
            "at": _iso(r.resolved_at),
            "by": r.resolved_by,
            "decision": r.resolution,
            "why": r.resolution_reason,
            "corrections": r.adjustment_keys,
        }
    if with_span and r.payload is not None:
        from spanmeter.collector.otlp_json import resource_spans_to_json

        doc["span"] = resource_spans_to_json(r.payload)
    return doc


def _auth(args: argparse.Namespace) -> int:
    import secrets

    from spanmeter.collector.auth import hash_token

    if args.auth_command == "new-token":
        token = secrets.token_urlsafe(32)
        print(f"token (give it to the producer; it is not stored anywhere): {token}")
        print(f'token_sha256 = ["{hash_token(token)}"]')
        return 0
    token = sys.stdin.readline().strip()
    if not token:
        raise UsageError('no token on standard input: echo "$TOKEN" | spanmeter auth hash-token')
    print(hash_token(token))
    return 0
