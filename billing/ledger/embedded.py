"""The embedded default: a real PostgreSQL from the ``pgserver`` wheel, no system install.

With no database configured, spanmeter keeps its ledger in ``$SPANMETER_DATA_DIR/postgres`` (default
``./.spanmeter/postgres``). ``start()`` initialises the cluster on first use, starts the server if it is not
running (several spanmeter processes share one server; pgserver serialises start-up with a file lock),
creates the ``spanmeter`` database, and returns a URL that psql and psycopg accept. The server keeps
running after the process exits so ``spanmeter db url`` can hand it to psql; ``spanmeter db stop`` stops it.

The server listens on a Unix socket only (no TCP port), inside the data directory when the path is short
enough. When spanmeter runs as root, pgserver runs PostgreSQL as a system user named ``pgserver``.
"""

from __future__ import annotations

import logging
import os
import subprocess
import warnings
from pathlib import Path

import psycopg
from psycopg import sql

__all__ = ["DATABASE_NAME", "EmbeddedPostgres"]

DATABASE_NAME = "spanmeter"
log = logging.getLogger(__name__)


class EmbeddedPostgres:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir).expanduser().resolve()
        self.pgdata = self.data_dir / "postgres"

    def start(self) -> str:
        """Start (or reuse) the server; return the conninfo of the spanmeter database."""
        os.environ.setdefault("XDG_RUNTIME_DIR", str(self.data_dir / "run"))
        self.data_dir.mkdir(parents=True, exist_ok=True)
        (self.data_dir / "run").mkdir(exist_ok=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import pgserver

            server = pgserver.get_server(self.pgdata, cleanup_mode=None)
            if not self.is_running():  # pgserver caches handles per directory: restart a stopped server
                with server._lock:
                    server.ensure_postgres_running()
        admin_uri = server.get_uri()
        self._ensure_database(admin_uri)
        return server.get_uri(DATABASE_NAME)

    def is_running(self) -> bool:
        pid_file = self.pgdata / "postmaster.pid"
        if not pid_file.exists():
            return False
        try:
            pid = int(pid_file.read_text().splitlines()[0])
            os.kill(pid, 0)
        except (ValueError, IndexError, ProcessLookupError, PermissionError):
            return False
        return True

    def stop(self) -> bool:
        """Stop the server if it runs; True when it was running."""
        if not self.is_running():
            return False
        pg_ctl = self._bin("pg_ctl")
        cmd = [str(pg_ctl), "-D", str(self.pgdata), "-m", "fast", "-w", "stop"]
        if os.geteuid() == 0:
            cmd = ["su", "pgserver", "-s", "/bin/sh", "-c", " ".join(cmd)]
        subprocess.run(cmd, check=True, capture_output=True, timeout=60)
        return True

    @staticmethod
    def _bin(name: str) -> Path:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from pgserver._commands import POSTGRES_BIN_PATH
        return Path(POSTGRES_BIN_PATH) / name

    @staticmethod
    def _ensure_database(admin_uri: str) -> None:
        with psycopg.connect(admin_uri, autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE_NAME,)).fetchone()
            if exists:
                return
            try:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DATABASE_NAME)))
                log.info("created database %s in the embedded server", DATABASE_NAME)
            except (psycopg.errors.DuplicateDatabase, psycopg.errors.UniqueViolation):
                pass  # another process created it first
