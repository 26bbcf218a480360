"""The ledger schema gate: ``serve`` starts, and keeps answering, while its database is down; and it writes
only with a credential that cannot change rows.

A collector that exits because its database is unreachable at start leaves no receiver at all during an
outage: exporters then see connection refused instead of UNAVAILABLE with a RetryInfo, and a restart loop
hides the cause. So ``serve`` starts regardless: it listens, answers every Export that has usage to write
with UNAVAILABLE + RetryInfo (counted as ``spanmeter_ledger_write_errors_total{kind="database"}``, so
``SpanmeterLedgerWriteErrors`` fires), ``/readyz`` says 503 with the reason, and this gate keeps trying in
the background. When the database answers, the gate brings the schema to the head migration (if this
process migrates) or waits until it is there, checks the credential, then opens: ledger writes begin.

Who migrates and who writes (:func:`ledger_access`):

- the embedded database (no ``--database-url``): serve owns the cluster, so it migrates as the superuser
  and writes as ``spanmeter_writer`` (migration 0006; the embedded server trusts its socket);
- ``--database-url`` with a non-privileged role (``spanmeter_writer``, the recommended setup): serve
  writes with it and waits for the schema; ``spanmeter db upgrade`` runs as the owner;
- ``--database-url`` with a superuser or the tables' owner: refused (exit 2), because that credential
  could disable the append-only triggers, unless ``--allow-owner`` (``SPANMETER_ALLOW_OWNER=true``) is
  given: then serve migrates and writes with it, as before.

``LedgerSchema(access).start()`` tries once at once (so a healthy start is unchanged), then every
``retry_seconds`` until it succeeds or ``shutdown()``. ``ready`` is the event writers wait on.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from spanmeter.billing.ledger import migrate
from spanmeter.billing.ledger.database import Database
from spanmeter.billing.ledger.roles import WRITER_ROLE, privileged

__all__ = ["LedgerAccess", "LedgerSchema", "PrivilegedCredential", "ledger_access"]


class PrivilegedCredential(RuntimeError):
    """serve was given a credential that could change ledger rows, without ``--allow-owner``."""


@dataclass(frozen=True)
class LedgerAccess:
    writer: Database  # what serve connects as at run time
    migrator: Database | None  # who brings the schema to head (None: someone else; wait for it)
    refuse_privileged: bool  # refuse to open while ``writer`` could change rows


def ledger_access(database: Database, allow_owner: bool) -> LedgerAccess:
    """Who migrates and who writes, for ``serve`` given ``database`` (see the module docstring)."""
    if database.embedded:
        return LedgerAccess(writer=database.as_user(WRITER_ROLE), migrator=database, refuse_privileged=True)
    if allow_owner:
        return LedgerAccess(writer=database, migrator=database, refuse_privileged=False)
    return LedgerAccess(writer=database, migrator=None, refuse_privileged=True)


log = logging.getLogger(__name__)


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


class LedgerSchema:
    def __init__(self, access: LedgerAccess, retry_seconds: float = 2.0) -> None:
        self._access = access
        self.refused: str | None = None  # the credential is privileged: why (set by an attempt)
        self._retry_seconds = retry_seconds
        self.ready = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_problem: str | None = None

    def start(self) -> bool:
        """Try now; if the ledger is not usable yet, keep trying in the background. True when ready now."""
        if self._attempt():
            return True
        self._thread = threading.Thread(target=self._run, name="ledger-schema", daemon=True)
        self._thread.start()
        return False

    def shutdown(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    @property
    def problem(self) -> str | None:
        """Why the ledger is not usable yet (None once it is)."""
        return None if self.ready.is_set() else self._last_problem

    def _run(self) -> None:
        while not self._stop.wait(self._retry_seconds):
            if self._attempt():
                return

    def _attempt(self) -> bool:
        access = self._access
        try:
            if access.migrator is not None:
                before, after = migrate.upgrade(access.migrator)
                if before != after:
                    log.info("ledger schema migrated from %s to %s", before or "empty", after)
            with access.writer.connect(connect_timeout=5) as conn:
                problem = privileged(conn) if access.refuse_privileged else None
                if problem is not None:
                    self.refused = (
                        f"refusing to write the ledger as {problem}: it could change or remove billed rows. "
                        f"Connect as {WRITER_ROLE} (README: least privilege), or pass --allow-owner "
                        "(SPANMETER_ALLOW_OWNER=true) to accept that risk"
                    )
                    raise PrivilegedCredential(self.refused)
                self.refused = None
                current = None
                if conn.execute("SELECT to_regclass('alembic_version') IS NOT NULL").fetchone()[0]:
                    row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
                    current = row[0] if row else None
            head = migrate.head_revision()
            if current != head:
                raise RuntimeError(f"schema at {current or 'empty'}, waiting for {head} (`spanmeter db upgrade`)")
        except Exception as exc:  # unreachable, refused credentials, a migration that failed: keep trying
            problem = _first_line(exc)
            if problem != self._last_problem:  # once per distinct cause, not every retry
                log.error(
                    "ledger not usable yet (%s): answering UNAVAILABLE and retrying every %g s",
                    problem,
                    self._retry_seconds,
                )
            self._last_problem = problem
            return False
        if self._last_problem is not None:
            log.warning("ledger usable again: writes begin")
        self._last_problem = None
        self.ready.set()
        return True
