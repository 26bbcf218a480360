"""What every ``spanmeter`` command shares: the shared flags (argparse parents), configuration, time parsing,
the read replica, who runs a recorded operation, and the one error policy.

Exit codes, for every command:

- ``0``: done.
- ``1``: a check that found problems (``alerts render --check``, ``rollups check``, …), a transient failure
  worth retrying (a replica recovery conflict, the database refused this statement), or an unexpected error.
- ``2``: bad input or configuration: one line naming the flag or setting and the fix, never a traceback
  (``SPANMETER_DEBUG=1`` prints it).

A command raises :class:`CommandError` for bad input; :func:`run` turns it, configuration errors and the
billing domain's input errors into exit 2, and explains database failures (:func:`explain`). This module
imports no other ``spanmeter.commands`` module, and the commands import only this one: no cycle.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

__all__ = [
    "DATABASE",
    "READ_REPLICA",
    "CommandError",
    "config_from",
    "explain",
    "fail",
    "iso",
    "note_staleness",
    "parse_time",
    "read_databases",
    "run",
    "who",
]


class CommandError(ValueError):
    """Bad input to a command: its message names the flag or setting and the fix (exit 2)."""


def _database_flags() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument(
        "--database-url", help="PostgreSQL URL (default: SPANMETER_DATABASE_URL, else the embedded database)"
    )
    parser.add_argument(
        "--data-dir", help="embedded database directory (default: SPANMETER_DATA_DIR, else ./.spanmeter)"
    )
    return parser


def _read_replica_flags() -> argparse.ArgumentParser:
    """For commands whose reads may lag: they read this hot standby instead of the primary."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument(
        "--read-database-url",
        help="a hot standby of the ledger to read instead of the primary (env SPANMETER_READ_DATABASE_URL; "
        "'' reads the primary)",
    )
    return parser


# parents= for every sub-command that opens the ledger, and for those that may read a replica
DATABASE = _database_flags()
READ_REPLICA = _read_replica_flags()


def run(handler: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run one command under the error policy above."""
    from spanmeter.collector.config import ConfigError

    try:
        return handler(args)
    except (ConfigError, CommandError) as exc:
        return fail(str(exc))
    except Exception as exc:  # every user-facing failure: one or two lines naming the fix, no traceback
        return explain(exc)


def who(given: str | None) -> str:
    """Who runs a recorded operation: --by, else the login name."""
    return given or os.environ.get("USER") or os.environ.get("LOGNAME") or getpass.getuser()


def config_from(args: argparse.Namespace, **extra: Any) -> Any:
    """The ``SPANMETER_*`` configuration with this command's flags (and ``extra``) on top: flags win."""
    from spanmeter.collector.config import load_config

    overrides = {
        "database_url": args.database_url,
        "data_dir": args.data_dir,
        "read_database_url": getattr(args, "read_database_url", None),
        **extra,
    }
    return load_config(os.environ, overrides)


def read_databases(config: Any, create: bool = False) -> Any:
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


def note_staleness(databases: Any, config: Any) -> None:
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


def iso(moment: datetime | None) -> str | None:
    """A UTC time as ISO 8601 with a Z."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z") if moment is not None else None


def parse_time(text: str, flag: str) -> datetime:
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise CommandError(
            f"{flag} {text!r}: write YYYY-MM-DD or an ISO 8601 time such as 2026-11-01T00:00:00Z"
        ) from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def fail(message: str, status: int = 2) -> int:
    if os.environ.get("SPANMETER_DEBUG") == "1":
        traceback.print_exc()
    print(f"spanmeter: {message}", file=sys.stderr)
    return status


def explain(exc: Exception) -> int:
    """The one message (exit 2) for a failure a person can act on; anything else exit 1, still no traceback
    unless SPANMETER_DEBUG=1."""
    import psycopg
    import sqlalchemy.exc

    from spanmeter.billing.adjustments import AdjustmentError
    from spanmeter.billing.invoices import InvoiceError
    from spanmeter.billing.ledger.database import NoLedgerHere
    from spanmeter.billing.ledger.migrate import SchemaNotCurrent
    from spanmeter.billing.ledger.replica import ReadReplicaError, ReplicaConflict
    from spanmeter.billing.pricebook import PriceBookError
    from spanmeter.billing.prices import PricesError
    from spanmeter.billing.rating.plan_data import PricingDataError
    from spanmeter.billing.subscriptions import SubscriptionError

    cause = exc.orig if isinstance(exc, sqlalchemy.exc.DBAPIError) and exc.orig is not None else exc
    first = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
    if isinstance(exc, ReplicaConflict):  # transient: retrying may well work
        return fail(str(exc), 1)
    if isinstance(
        exc,
        (
            NoLedgerHere,
            SchemaNotCurrent,
            ReadReplicaError,
            SubscriptionError,
            AdjustmentError,
            InvoiceError,
            PriceBookError,
            PricingDataError,
            PricesError,
        ),
    ):
        return fail(str(exc))
    if isinstance(cause, psycopg.errors.UndefinedTable):
        return fail(f"the ledger has no spanmeter schema ({first}): run `spanmeter db upgrade` as its owner")
    if isinstance(cause, psycopg.errors.InsufficientPrivilege):
        return fail(f"the database refused ({first}): this command needs the ledger owner's credential")
    sqlstate = getattr(cause, "sqlstate", None) or ""
    if isinstance(cause, psycopg.OperationalError) and (not sqlstate or sqlstate[:2] in ("08", "28", "3D")):
        return fail(
            f"cannot use the ledger database ({first}): check --database-url / SPANMETER_DATABASE_URL, that "
            "PostgreSQL is running and reachable, and the user and password"
        )
    if isinstance(cause, psycopg.Error):  # the database answered, and refused this (a timeout, a full disk, …)
        return fail(f"the ledger database refused the command ({first}); retry, or see its log", 1)
    if isinstance(exc, ModuleNotFoundError) and exc.name and exc.name.split(".")[0] in _DEMO_MODULES:
        return fail(f"this needs the demo extra ({exc.name} is not installed): pip install 'spanmeter[demo]'")
    if isinstance(exc, OSError):
        return fail(first if str(exc) else f"{type(exc).__name__}")
    return fail(f"unexpected error: {type(exc).__name__}: {first} (SPANMETER_DEBUG=1 shows the traceback)", 1)


_DEMO_MODULES = frozenset({"django", "celery", "kombu", "redis", "amqp", "billiard", "vine"})
