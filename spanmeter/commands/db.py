"""``spanmeter db``: the ledger database.

- ``db upgrade``: apply schema migrations (as the owner); ``db url``: a URL for psql; ``db stop``: stop the
  embedded server.

- ``db partitions``: the attached partitions (bounds, estimated rows, size), what the ledger covers and what was
  archived; ``--create`` first creates the current month and the next ``--months-ahead`` (default 2).
  Older usage (a backfill) needs no month of its own: it lands in the partition that holds everything before
  the ledger's first month.
- ``db archive --before YYYY-MM --to DIR``: export each closed month before YYYY-MM to a checksummed file,
  then detach it (see :mod:`spanmeter.billing.ledger.archive` for what "closed" means).
- ``db restore MANIFEST``: bring an archived month back from its files.

All three run as the ledger's owner: creating, detaching and attaching partitions needs the parent's owner.
"""

from __future__ import annotations

import argparse
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ._shared import DATABASE, CommandError, config_from

__all__ = ["register"]


def register(sub: Any) -> None:
    db = sub.add_parser("db", help="manage the ledger database")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    for name, text in (
        ("upgrade", "apply schema migrations"),
        ("url", "print a URL psql and psycopg accept (starts the embedded server if needed)"),
        ("stop", "stop the embedded server"),
    ):
        db_sub.add_parser(name, help=text, parents=[DATABASE])

    db.set_defaults(handler=_db)

    parts = db_sub.add_parser(
        "partitions", help="the ledger's monthly partitions; --create makes the missing ones", parents=[DATABASE]
    )
    parts.add_argument("--create", action="store_true", help="create the current month and the next ones first")
    parts.add_argument("--months-ahead", default="2", help="with --create: months after the current one (default 2)")
    arch = db_sub.add_parser(
        "archive", help="export closed months to checksummed files, then detach them", parents=[DATABASE]
    )
    arch.add_argument("--before", required=True, metavar="YYYY-MM", help="archive the months before this one")
    arch.add_argument("--to", required=True, metavar="DIR", help="directory for the .copy.gz and .json files")
    arch.add_argument("--by", default=None, help="who archives (default: $USER)")
    rest = db_sub.add_parser("restore", help="bring an archived month back from its files", parents=[DATABASE])
    rest.add_argument("manifest", help="the archive's .json manifest (or its .copy.gz)")
    for leaf in (parts, arch, rest):
        leaf.set_defaults(handler=_partitions)


def _db(args: argparse.Namespace) -> int:
    from spanmeter.billing.ledger import migrate
    from spanmeter.billing.ledger.database import resolve_database
    from spanmeter.billing.ledger.embedded import EmbeddedPostgres

    config = config_from(args)
    if args.db_command == "stop":
        if config.database_url:
            raise CommandError("`db stop` stops the embedded database; a configured server is not spanmeter's to stop")
        stopped = EmbeddedPostgres(config.data_dir).stop()
        print("embedded PostgreSQL stopped" if stopped else "embedded PostgreSQL was not running")
        return 0
    database = resolve_database(config.database_url, config.data_dir)
    if args.db_command == "upgrade":
        before, after = migrate.upgrade(database)
        print(
            f"ledger schema: {before or 'empty'} -> {after}" if before != after else f"ledger schema current: {after}"
        )
        return 0
    print(f"# {database.description}")
    print(database.conninfo)
    return 0


_MONTH = re.compile(r"^(\d{4})-(\d{2})$")


def _month(text: str | None, flag: str) -> datetime | None:
    if text is None:
        return None
    match = _MONTH.match(text)
    if not match or not 1 <= int(match.group(2)) <= 12:
        raise ValueError(f"{flag} {text!r}: write a UTC month as YYYY-MM, e.g. 2026-11")
    return datetime(int(match.group(1)), int(match.group(2)), 1, tzinfo=UTC)


def _size(size: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return str(size)


def _partitions(args: argparse.Namespace) -> int:
    """db partitions | archive | restore, as the ledger's owner."""
    from spanmeter.billing.ledger import migrate
    from spanmeter.billing.ledger.database import resolve_database

    config = config_from(args)
    database = resolve_database(config.database_url, config.data_dir)
    migrate.prepare(database)
    import psycopg

    from spanmeter.billing.ledger import archive, partitions

    try:
        before = _month(getattr(args, "before", None), "--before")
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    with database.connect(connect_timeout=10) as conn:
        conn.execute("SET TimeZone = 'UTC'")  # months and dates are UTC's, whatever the server's default
        conn.commit()
        if args.db_command == "partitions":
            if not args.months_ahead.isdigit() or not 0 <= int(args.months_ahead) <= 24:
                raise CommandError(f"--months-ahead {args.months_ahead!r}: a whole number of months from 0 to 24")
            if args.create:
                try:
                    created = partitions.ensure(conn, months_ahead=int(args.months_ahead))
                except psycopg.errors.ObjectNotInPrerequisiteState as exc:  # a ledger without its bookkeeping
                    raise CommandError(str(exc).splitlines()[0]) from None
                conn.commit()
                print(f"created {', '.join(created)}" if created else "every month asked for exists already")
            cover = partitions.coverage(conn)
            print(f"{'partition':32} {'from':10} {'to':10} {'rows (est.)':>12} {'size':>10}")
            for p in partitions.list_partitions(conn):
                start = f"{p.from_at:%Y-%m-%d}" if p.from_at else "MINVALUE"
                print(f"{p.name:32} {start:10} {p.to_at:%Y-%m-%d} {p.rows_estimate:>12,} {_size(p.total_bytes):>10}")
            if cover.to_at is not None:
                days = cover.horizon_seconds(datetime.now(UTC)) / 86400
                print(f"spans are taken up to {cover.to_at:%Y-%m-%d} ({days:.0f} days ahead)")
            if cover.archived_to is not None:
                print(
                    f"archived before {cover.archived_to:%Y-%m-%d}: spans of those months are kept as archived_period"
                )
            return 0
        if args.db_command == "archive":
            try:
                done = archive.archive(
                    conn,
                    before,
                    Path(args.to),
                    max_span_age_seconds=config.max_span_age_seconds,
                    max_clock_skew_seconds=config.max_clock_skew_seconds,
                    by=args.by,
                )
            except archive.ArchiveError as exc:
                raise CommandError(str(exc)) from None
            for a in done:
                print(f"archived {a.partition}: {a.rows:,} rows, sha256 {a.sha256}, {a.data_file}; detached")
            if not done:
                print(f"no partition ends on or before {before:%Y-%m}: nothing archived")
            return 0
        try:
            restored = archive.restore(conn, Path(args.manifest))
        except archive.ArchiveError as exc:
            raise CommandError(str(exc)) from None
        print(f"restored {restored.partition}: {restored.rows:,} rows, sha256 {restored.sha256}; attached")
        return 0
