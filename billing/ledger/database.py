"""Where the ledger lives: a configured PostgreSQL server, or the embedded one.

``resolve_database(database_url, data_dir)`` returns a :class:`Database` whatever the input form:

- ``None``: start (or reuse) the embedded PostgreSQL under ``data_dir`` (see :mod:`.embedded`).
- a libpq URI (``postgresql://user@host:5432/db``, ``postgres://…``) or key/value conninfo
  (``host=… dbname=…``);
- a SQLAlchemy URL (``postgresql+psycopg://…``, ``postgresql+psycopg2://…``): the driver part is dropped,
  spanmeter always drives PostgreSQL with psycopg 3.

``Database.conninfo`` is what psql and psycopg accept; ``Database.engine()`` is a SQLAlchemy engine on it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from sqlalchemy import Engine, create_engine

__all__ = ["Database", "DatabaseUrlError", "NoLedgerHere", "normalize_database_url", "resolve_database"]

_DRIVER = re.compile(r"^(postgres(?:ql)?)\+[a-z0-9_]+://", re.IGNORECASE)


class DatabaseUrlError(ValueError):
    pass


def normalize_database_url(url: str) -> str:
    """A libpq conninfo for ``url``; raises DatabaseUrlError with the reason when libpq would refuse it."""
    url = url.strip()
    if not url:
        raise DatabaseUrlError("the database URL is empty")
    url = _DRIVER.sub(lambda m: m.group(1) + "://", url)
    if "://" in url and not url.lower().startswith(("postgresql://", "postgres://")):
        raise DatabaseUrlError(f"unsupported scheme in {url.split('://')[0]!r}: use postgresql://")
    try:
        conninfo_to_dict(url)
    except psycopg.ProgrammingError as exc:
        raise DatabaseUrlError(str(exc).strip()) from exc
    return url


@dataclass(frozen=True)
class Database:
    conninfo: str
    embedded: bool
    description: str  # human-readable, without a password

    def engine(self, **kwargs: object) -> Engine:
        conninfo = self.conninfo
        return create_engine(
            "postgresql+psycopg://",
            creator=lambda: psycopg.connect(conninfo, connect_timeout=10),
            **kwargs,  # type: ignore[arg-type]
        )

    def connect(self, **kwargs: object) -> psycopg.Connection:
        return psycopg.connect(self.conninfo, **kwargs)  # type: ignore[arg-type]

    def as_user(self, user: str) -> Database:
        """The same server and database under another role (no password: the embedded server trusts its
        socket). ``spanmeter serve`` uses it to write as ``spanmeter_writer`` on the embedded database."""
        params = conninfo_to_dict(self.conninfo)
        params.pop("password", None)
        params["user"] = user
        conninfo = make_conninfo(**params)
        description = self.description if self.embedded else describe(conninfo)
        return Database(conninfo=conninfo, embedded=self.embedded, description=f"{description} as {user}")


def describe(conninfo: str) -> str:
    params = conninfo_to_dict(conninfo)
    host = params.get("host") or "localhost"
    port = params.get("port") or "5432"
    where = host if str(host).startswith("/") else f"{host}:{port}"
    return f"postgresql://{params.get('user') or ''}@{where}/{params.get('dbname') or ''}"


class NoLedgerHere(LookupError):
    """A command that only reads found no embedded ledger where it looked (it never creates one)."""


def resolve_database(database_url: str | None, data_dir: Path, create: bool = True) -> Database:
    """The configured server, else the embedded one in ``data_dir`` (started if stopped). ``create=False``
    (commands that only read): an embedded cluster that does not exist yet is :class:`NoLedgerHere`, not
    a new empty one left running."""
    if database_url:
        conninfo = normalize_database_url(database_url)
        return Database(conninfo=conninfo, embedded=False, description=describe(conninfo))
    from .embedded import EmbeddedPostgres

    server = EmbeddedPostgres(data_dir)
    if not create and not (server.pgdata / "PG_VERSION").is_file():
        raise NoLedgerHere(
            f"no ledger here: no --database-url (SPANMETER_DATABASE_URL) and no embedded database in {server.data_dir} "
            "(SPANMETER_DATA_DIR). Run this where `spanmeter serve` or `spanmeter demo` ran, or pass --data-dir "
            "or --database-url"
        )
    try:
        conninfo = server.start()
    except OSError as exc:
        raise OSError(
            f"cannot use the data directory {server.data_dir} (SPANMETER_DATA_DIR, --data-dir): "
            f"{exc.strerror or exc}; pick a directory you can write, or pass --database-url"
        ) from None
    return Database(conninfo=conninfo, embedded=True, description=f"embedded PostgreSQL in {server.data_dir}")
