"""Fixtures: a real PostgreSQL started by the tests (the pgserver wheel), a fresh database per module,
and `spanmeter serve` processes. Nothing here needs a system PostgreSQL."""

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
