"""The two test tiers hold: a unit test cannot reach for a process, a socket, PostgreSQL or a gRPC server
(conftest's guard raises), so `pytest -m unit` stays fast and runs anywhere."""

from __future__ import annotations

import socket
import subprocess

import grpc
import psycopg
import pytest
from conftest import TierViolation


def test_this_test_is_in_the_unit_tier(request):
    assert request.node.get_closest_marker("unit") is not None
    assert request.node.get_closest_marker("integration") is None


@pytest.mark.parametrize(
    "reach",
    [
        lambda: subprocess.run(["true"], check=False),
        lambda: psycopg.connect("postgresql://127.0.0.1:5432/postgres", connect_timeout=1),
        lambda: socket.create_connection(("127.0.0.1", 9), timeout=1),
        lambda: socket.socket().bind(("127.0.0.1", 0)),
        lambda: grpc.insecure_channel("127.0.0.1:4317"),
        lambda: grpc.server(None),
    ],
    ids=["subprocess", "postgresql", "connect", "bind", "grpc channel", "grpc server"],
)
def test_a_unit_test_that_reaches_out_fails_loudly(reach):
    with pytest.raises(TierViolation, match="mark it integration"):
        reach()


@pytest.mark.integration
def test_an_integration_test_may_start_a_process():
    assert subprocess.run(["true"], check=False).returncode == 0
