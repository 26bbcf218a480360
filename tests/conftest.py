"""Fixtures: a real PostgreSQL started by the tests (the pgserver wheel), a fresh database per module,
and `spanmeter serve` processes. Nothing here needs a system PostgreSQL.

Two tiers, marked at collection (`pytest -m unit`, `pytest -m integration`; plain `pytest` runs both):

- ``integration``: a test that uses a fixture starting PostgreSQL or a server (:data:`INTEGRATION_FIXTURES`,
  directly or through another fixture), is marked ``slow``, or is marked ``integration`` by hand (a test
  that starts a subprocess or a server itself).
- ``unit``: everything else, and it is held to it: while a unit test runs, starting a subprocess, opening or
  binding a socket, connecting to PostgreSQL or creating a gRPC server or channel raises
  :class:`TierViolation`, so a test in the wrong tier fails in every run instead of slowing the fast one.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from spanmeter.billing.ledger.embedded import EmbeddedPostgres
from support import Collector

INTEGRATION_FIXTURES = frozenset({"postgres", "postgres_admin", "module_db", "fresh_db", "collector", "make_collector"})


class TierViolation(AssertionError):
    """A test marked ``unit`` reached for a process, a socket, a database or a server."""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("integration") is None and item.get_closest_marker("unit") is None:
            heavy = INTEGRATION_FIXTURES & set(getattr(item, "fixturenames", ()))
            item.add_marker(pytest.mark.integration if heavy or item.get_closest_marker("slow") else pytest.mark.unit)


@pytest.fixture(autouse=True)
def _unit_tier_guard(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """A unit test touches no process, socket, database or server (see the module docstring)."""
    if request.node.get_closest_marker("unit") is None:
        return
    import socket
    import subprocess

    import grpc

    def refuse(what: str):
        def refused(*_args: object, **_kwargs: object):
            raise TierViolation(f"a unit test may not {what}: mark it integration (pytest.mark.integration)")

        return refused

    monkeypatch.setattr(subprocess.Popen, "__init__", refuse("start a subprocess"))
    monkeypatch.setattr(os, "fork", refuse("fork"))
    monkeypatch.setattr(socket.socket, "connect", refuse("open a connection"))
    monkeypatch.setattr(socket.socket, "connect_ex", refuse("open a connection"))
    monkeypatch.setattr(socket.socket, "bind", refuse("bind a socket"))
    monkeypatch.setattr(psycopg.Connection, "connect", refuse("connect to PostgreSQL"))
    monkeypatch.setattr(psycopg, "connect", refuse("connect to PostgreSQL"))
    for name in ("server", "insecure_channel", "secure_channel"):
        monkeypatch.setattr(grpc, name, refuse(f"use grpc.{name}"))


# every `spanmeter serve` a test starts takes an ephemeral OTLP/HTTP port (the default, 4318, is one per host)
os.environ.setdefault("SPANMETER_OTLP_HTTP_ENDPOINT", "127.0.0.1:0")


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedPostgres]:
    """One PostgreSQL server for the session, in a temporary directory."""
    server = EmbeddedPostgres(Path(tmp_path_factory.mktemp("pg")))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres_admin(postgres: EmbeddedPostgres) -> str:
    return make_conninfo(postgres.start(), dbname="postgres")


def create_database(admin: str) -> str:
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return make_conninfo(admin, dbname=name)


@pytest.fixture(scope="module")
def module_db(postgres_admin: str) -> str:
    """A fresh, empty database for one test module (the collector migrates it on start)."""
    return create_database(postgres_admin)


@pytest.fixture
def fresh_db(postgres_admin: str) -> str:
    return create_database(postgres_admin)


@pytest.fixture(scope="module")
def collector(module_db: str) -> Iterator[Collector]:
    c = Collector(module_db).start()
    yield c
    c.kill()


@pytest.fixture
def make_collector() -> Iterator:
    started: list[Collector] = []

    def start(database_url: str, **env: str) -> Collector:
        c = Collector(database_url, env=env).start()
        started.append(c)
        return c

    yield start
    for c in started:
        c.kill()


@pytest.fixture(autouse=True, scope="session")
def _quiet_exporter_retries() -> None:
    os.environ.setdefault("OTEL_EXPORTER_OTLP_TIMEOUT", "30")
