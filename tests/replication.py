"""A primary and a streaming hot standby built with the PostgreSQL 16 binaries of the pgserver wheel.

Never the system's PostgreSQL: a machine's ``/usr/bin/pg_basebackup`` may be another major version (15
refuses a 16 server), and the tests must not depend on what the host has. A binary missing from the wheel
fails the test that needs it, naming the path.

Both servers listen on Unix sockets only, in one short directory, told apart by port number; the primary
has ``wal_level = replica`` and a ``spanmeter_replication`` role that only ``pg_hba.conf``'s replication line
admits; the standby is ``pg_basebackup -R -X stream`` of it, started as a hot standby. As root (CI),
PostgreSQL runs as the ``pgserver`` user, as the embedded ledger does.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg
from psycopg.conninfo import make_conninfo

from spanmeter.billing.ledger.embedded import EmbeddedPostgres

__all__ = ["REPLICATION_ROLE", "Server", "StreamingPair", "pg_tool"]

REPLICATION_ROLE = "spanmeter_replication"
RUN_AS = "pgserver" if os.geteuid() == 0 else None  # PostgreSQL refuses to run as root


def pg_tool(name: str) -> Path:
    """A binary of the pgserver wheel's PostgreSQL; fails loudly when the wheel lacks it."""
    path = EmbeddedPostgres._bin(name)
    if not path.is_file():
        raise AssertionError(
            f"pgserver's {name} is missing at {path}: reinstall the pgserver wheel (./scripts/bootstrap.sh)"
        )
    return path


def _run(name: str, *args: str, timeout: float = 120) -> str:
    # files, not pipes: a postmaster started by pg_ctl would hold a pipe open and hang the wait
    with tempfile.TemporaryFile("w+") as out:
        result = subprocess.run(
            [str(pg_tool(name)), *args], stdout=out, stderr=subprocess.STDOUT, text=True, timeout=timeout, user=RUN_AS
        )
        out.seek(0)
        output = out.read()
    if result.returncode != 0:
        raise AssertionError(f"{name} {' '.join(args)} failed ({result.returncode}):\n{output}")
    return output


def _own(path: Path) -> None:
    """Make ``path`` (a directory) the PostgreSQL user's, reachable through its parents."""
    path.mkdir(parents=True, exist_ok=True)
    if RUN_AS is None:
        return
    user = pwd.getpwnam(RUN_AS)
    os.chown(path, user.pw_uid, user.pw_gid)
    for parent in path.parents:
        parent.chmod(parent.stat().st_mode | 0o055)  # r-x for group and others, to traverse


class Server:
    def __init__(self, name: str, pgdata: Path, socket_dir: Path, port: int) -> None:
        self.name = name
        self.pgdata = pgdata
        self.socket_dir = socket_dir
        self.port = port
        self.log = pgdata.parent / f"{name}.log"

    def conninfo(self, dbname: str = "spanmeter", user: str = "postgres") -> str:
        return make_conninfo(host=str(self.socket_dir), port=str(self.port), dbname=dbname, user=user)

    def start(self) -> None:
        if RUN_AS is not None and not self.log.exists():
            self.log.touch()
            shutil.chown(self.log, RUN_AS, RUN_AS)
        _run("pg_ctl", "-D", str(self.pgdata), "-l", str(self.log), "-o", f"-p {self.port}", "-w", "-t", "120", "start")

    def pid(self) -> int | None:
        try:
            return int((self.pgdata / "postmaster.pid").read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            return None

    def running(self) -> bool:
        pid = self.pid()
        if pid is None:
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True

    def stop(self) -> None:
        """Fast shutdown; kill the postmaster if that fails. Safe when not running."""
        if not self.running():
            return
        try:
            _run("pg_ctl", "-D", str(self.pgdata), "-m", "fast", "-w", "-t", "60", "stop")
        except (AssertionError, subprocess.TimeoutExpired):
            pid = self.pid()
            if pid is not None:
                os.kill(pid, signal.SIGQUIT)  # immediate shutdown: the postmaster takes its children along
                deadline = time.monotonic() + 30
                while self.running() and time.monotonic() < deadline:
                    time.sleep(0.1)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text().splitlines()[-lines:])
        except OSError:
            return "(no log)"


class StreamingPair:
    """``start()`` builds and starts both; ``stop()`` stops whatever runs (call it in a ``finally``)."""

    def __init__(self, base: Path) -> None:
        _own(base)
        self.base = base
        self.socket_dir = Path(tempfile.mkdtemp(prefix="smrepl-", dir="/tmp"))  # short: socket paths are <108 bytes
        self.socket_dir.chmod(0o777)
        self.primary = Server("primary", base / "primary", self.socket_dir, 54301)
        self.standby = Server("standby", base / "standby", self.socket_dir, 54302)

    def start(self) -> StreamingPair:
        _run("initdb", "-D", str(self.primary.pgdata), "-U", "postgres", "--auth=trust", "--encoding=UTF8", "--no-sync")
        with (self.primary.pgdata / "postgresql.conf").open("a") as conf:
            conf.write(
                "\n# spanmeter test: a primary with one streaming standby\n"
                "listen_addresses = ''\n"
                f"unix_socket_directories = '{self.socket_dir}'\n"
                "wal_level = replica\n"
                "max_wal_senders = 4\n"
                "wal_keep_size = '256MB'\n"
                "hot_standby = on\n"
                # replay waits this long for a conflicting standby query, then cancels it: a short query never
                # meets it, a transaction that holds its snapshot across a primary's vacuum does
                "max_standby_streaming_delay = '1s'\n"
                "fsync = off\n"
                "full_page_writes = off\n"
            )
        (self.primary.pgdata / "pg_hba.conf").write_text(
            f"local replication {REPLICATION_ROLE} trust\nlocal all all trust\n"
        )
        self.primary.start()
        with psycopg.connect(self.primary.conninfo("postgres"), autocommit=True) as conn:
            conn.execute(f"CREATE ROLE {REPLICATION_ROLE} WITH REPLICATION LOGIN")
            conn.execute("CREATE DATABASE spanmeter")
        _run(
            "pg_basebackup",
            "-D", str(self.standby.pgdata),
            "-h", str(self.socket_dir), "-p", str(self.primary.port), "-U", REPLICATION_ROLE,
            "-R", "-X", "stream", "-c", "fast", "--no-sync",
        )  # fmt: skip
        self.standby.start()
        return self

    def stop(self) -> None:
        for server in (self.standby, self.primary):
            server.stop()
        shutil.rmtree(self.socket_dir, ignore_errors=True)

    # -- replication state ---------------------------------------------------------------------------
    def primary_lsn(self) -> str:
        with psycopg.connect(self.primary.conninfo(), autocommit=True) as conn:
            return conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0]

    def standby_value(self, query: str, params: tuple = ()):
        """One value read on the standby, read again when replay cancels the query (a recovery conflict can
        cancel even a query of no table while the standby catches up)."""
        for attempt in range(20):
            try:
                with psycopg.connect(self.standby.conninfo(), autocommit=True) as conn:
                    return conn.execute(query, params).fetchone()[0]
            except psycopg.errors.SerializationFailure:
                if attempt == 19:
                    raise
                time.sleep(0.05)
        raise AssertionError("unreachable")

    def replayed(self, lsn: str) -> bool:
        return self.standby_value("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (lsn,))

    def wait_for_replay(self, timeout: float = 60) -> None:
        """Until the standby has replayed everything the primary had written when this was called."""
        target = self.primary_lsn()
        deadline = time.monotonic() + timeout
        while not self.replayed(target):
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"the standby did not replay up to {target} in {timeout:g} s:\n{self.standby.log_tail()}"
                )
            time.sleep(0.05)

    def pause_replay(self) -> None:
        with psycopg.connect(self.standby.conninfo(), autocommit=True) as conn:
            conn.execute("SELECT pg_wal_replay_pause()")
            deadline = time.monotonic() + 30
            while conn.execute("SELECT pg_get_wal_replay_pause_state()").fetchone()[0] != "paused":
                if time.monotonic() > deadline:
                    raise AssertionError("replay did not pause")
                time.sleep(0.05)

    def resume_replay(self) -> None:
        # replay was paused until this call: once resumed, its first conflict may cancel this very query
        with (
            psycopg.connect(self.standby.conninfo(), autocommit=True) as conn,
            contextlib.suppress(psycopg.errors.SerializationFailure),
        ):
            conn.execute("SELECT pg_wal_replay_resume()")
        assert self.standby_value("SELECT pg_get_wal_replay_pause_state()") == "not paused"
