"""Entitlements in the application (``spanmeter.instrumentation.entitlements``) against a real ``spanmeter api``,
real Redis and real Celery workers: a plan's concurrency cap holds across a fleet, a hard limit refuses with a
clear error, the fail policy holds with the API down or misconfigured, and leases expire after a SIGKILL."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from conftest import create_database

from spanmeter.instrumentation import entitlements as E
from support import free_port, start_api, wait_until

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "spanmeter"]
REDIS = "redis://127.0.0.1:6379/0"


def _redis():
    import redis

    client = redis.Redis.from_url(REDIS)
    try:
        client.ping()
    except Exception as exc:
        pytest.fail(f"Redis is needed at {REDIS} (the Celery broker of these tests): {exc}", pytrace=False)
    return client


def _cli(database: str, *args: str) -> str:
    proc = subprocess.run([*CLI, *args, "--database-url", database], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


@pytest.fixture(scope="module")
def ledger(postgres_admin) -> dict:
    """acme on starter (worker_seconds: 2 at once; gpu_seconds: hard limit 0), globex on growth (no limits)."""
    database = create_database(postgres_admin)
    _cli(database, "db", "upgrade")
    month = datetime.now(UTC).strftime("%Y-%m-01")
    for account, plan in (("acme", "starter"), ("globex", "growth")):
        _cli(database, "subscription", "set", "--account", account, "--plan", plan, "--pricing", "v2_compute",
             "--from", month)  # fmt: skip
    _cli(database, "entitlements", "set", "--plan", "starter", "--metric", "worker_seconds", "--max-concurrency", "2",
         "--from", month)  # fmt: skip
    _cli(database, "entitlements", "set", "--plan", "starter", "--metric", "gpu_seconds", "--hard-limit", "0",
         "--fail", "closed", "--from", month)  # fmt: skip
    token = _cli(database, "api", "token", "new", "--operator").strip()
    port = free_port()
    proc = start_api(database, port)
    ledger = {"database": database, "url": f"http://127.0.0.1:{port}", "token": token, "port": port, "proc": proc}
    yield ledger
    ledger["proc"].terminate()  # the one running now: a test may have stopped the first and started another
    ledger["proc"].wait(10)


def test_check_answers_from_the_api_then_from_its_cache(ledger):
    client = E.Entitlements(ledger["url"], ledger["token"], ttl_seconds=60)
    first = client.check("acme", "worker_seconds")
    assert (first.allowed, first.source, first.max_concurrency, first.kind) == (True, "api", 2, "soft")
    again = client.check("acme", "worker_seconds")
    assert again.source == "cache" and again.allowed
    gpu = client.check("acme", "gpu_seconds")
    assert (gpu.allowed, gpu.kind, gpu.limit) == (False, "hard", 0) and "over the hard limit" in gpu.reason
    assert client.check("acme", "input_tokens").meter == "tokens"  # a meter checks against the metric billing it
    assert client.check("globex", "gpu_seconds").allowed


def test_a_stale_answer_is_served_while_one_refresh_runs_in_the_background(ledger):
    now = [1000.0]
    client = E.Entitlements(ledger["url"], ledger["token"], ttl_seconds=10, clock=lambda: now[0])
    assert client.check("acme", "worker_seconds").source == "api"
    now[0] += 11  # past the TTL: the last answer stands in, one background fetch renews it
    assert client.check("acme", "worker_seconds").source == "stale"
    wait_until(lambda: client.check("acme", "worker_seconds").source == "cache", 10, what="the background refresh")


def test_the_fail_policy_holds_when_the_api_is_down_or_misconfigured(ledger, monkeypatch):
    # a bad URL: nothing known, the default policy (open) allows; a meter set closed refuses; nothing raises
    unreachable = E.Entitlements("http://127.0.0.1:9", "spm_x", fail_per_meter={"gpu_seconds": "closed"},
                                 timeout_seconds=0.5)  # fmt: skip
    assert unreachable.check("acme", "worker_seconds").source == "fail-open"
    closed = unreachable.check("acme", "gpu_seconds")
    assert (closed.allowed, closed.source) == (False, "fail-closed") and "unreachable" in closed.reason
    assert E.Entitlements("not a url", None).check("acme", "tokens").allowed  # nonsense config: never raises
    assert E.Entitlements(None, None, fail="closed").check("acme", "tokens").source == "unconfigured"
    # a refused token and an unknown account are decided by the policy too
    assert E.Entitlements(ledger["url"], "spm_" + "z" * 43).check("acme", "tokens").source == "fail-open"
    assert "no subscription" in E.Entitlements(ledger["url"], ledger["token"]).check("nobody", "tokens").reason
    # the API goes down: a client that has an answer keeps serving it (stale), then the API's own policy
    now = [0.0]
    client = E.Entitlements(ledger["url"], ledger["token"], ttl_seconds=5, max_stale_seconds=30,
                            timeout_seconds=0.5, clock=lambda: now[0])  # fmt: skip
    assert client.check("acme", "gpu_seconds").source == "api"
    ledger["proc"].terminate()
    ledger["proc"].wait(10)
    try:
        now[0] = 10
        assert client.check("acme", "gpu_seconds").source == "stale"
        now[0] = 60  # too old to stand in: gpu_seconds' fail policy as the API last gave it (closed)
        down = client.check("acme", "gpu_seconds")
        assert (down.allowed, down.source) == (False, "fail-closed")
        assert client.check("acme", "worker_seconds").source == "fail-open"
        # and the module-level check() from the environment, with the API down
        monkeypatch.setenv("SPANMETER_API_URL", ledger["url"])
        monkeypatch.setenv("SPANMETER_ENTITLEMENTS_FAIL_GPU_SECONDS", "closed")
        monkeypatch.setenv("SPANMETER_ENTITLEMENTS_TIMEOUT_SECONDS", "0.5")
        E.configure()
        assert E.check("acme", "gpu_seconds").source == "fail-closed"
        assert E.check("acme", "api_requests").allowed
    finally:
        E.configure(E.Entitlements(None, None))
        ledger["proc"] = start_api(ledger["database"], ledger["port"])


@pytest.mark.integration  # a local socket
def test_a_hanging_api_is_waited_on_once_per_account_not_on_every_check():
    import socket

    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        client = E.Entitlements(f"http://127.0.0.1:{silent.getsockname()[1]}", "spm_x", timeout_seconds=0.5)
        started = time.monotonic()
        decisions = [client.check("acme", "worker_seconds") for _ in range(20)]
        assert time.monotonic() - started < 1.5  # one timeout, not twenty
        assert {d.source for d in decisions} == {"fail-open"} and "unreachable" in decisions[-1].reason


@pytest.mark.integration  # real Redis
def test_leases_cap_an_account_and_expire_when_their_holder_dies():
    store = E.ConcurrencyLimiter(_redis(), lease_seconds=1, prefix=f"test:{uuid.uuid4().hex}")
    first, second = store.acquire("acme", "worker_seconds", 2), store.acquire("acme", "worker_seconds", 2)
    assert first and second and store.acquire("acme", "worker_seconds", 2) is None
    assert store.acquire("globex", "worker_seconds", 2)  # per account
    store.release("acme", "worker_seconds", first)
    third = store.acquire("acme", "worker_seconds", 2)
    assert third and store.held("acme", "worker_seconds") == 2
    # nobody releases (a SIGKILLed worker): the leases expire and the slots come back
    assert store.renew("acme", "worker_seconds", third)
    assert store.client.ttl(store.key("acme", "worker_seconds")) > 60  # a renewal keeps the set itself alive too
    time.sleep(1.3)
    assert store.held("acme", "worker_seconds") == 0
    assert store.acquire("acme", "worker_seconds", 2)


def _workers(ledger: dict, prefix: str, count: int) -> list[subprocess.Popen]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "tests" / "apps"), os.environ.get("PYTHONPATH", "")]),
        "TEST_BROKER_URL": REDIS,
        "TEST_PREFIX": prefix,
        "SPANMETER_API_URL": ledger["url"],
        "SPANMETER_API_TOKEN": ledger["token"],
        "SPANMETER_CONCURRENCY_REDIS_URL": REDIS,
        "SPANMETER_CONCURRENCY_LEASE_SECONDS": "30",
        "OTEL_SDK_DISABLED": "true",
    }
    started = []
    for i in range(count):
        command = [sys.executable, "-m", "celery", "-A", "entitled_tasks", "worker", "-Q", prefix, "-c", "3",
                   "-P", "threads", "-n", f"w{i}-{prefix}@%h", "--without-gossip", "--without-mingle",
                   "--loglevel", "WARNING"]  # fmt: skip
        log = open(f"/tmp/{prefix}-worker{i}.log", "w")  # noqa: SIM115 (the worker's stderr, kept for a failure)
        started.append(subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=log))
    return started


def test_a_plan_cap_of_two_holds_across_two_workers_and_every_task_runs_later(ledger):
    client = _redis()
    prefix = f"entitled-{uuid.uuid4().hex[:8]}"
    os.environ["TEST_BROKER_URL"], os.environ["TEST_PREFIX"] = REDIS, prefix
    sys.path.insert(0, str(ROOT / "tests" / "apps"))
    import importlib

    tasks = importlib.reload(importlib.import_module("entitled_tasks"))
    workers = _workers(ledger, prefix, 2)  # 2 workers × 3 threads: room for 6 at once, the plan allows 2
    try:
        results = [tasks.work.apply_async(args=(n, "acme")) for n in range(10)]
        wait_until(lambda: client.llen(f"{prefix}:acme:done") == 10, 90, what="all 10 tasks to run")
        assert sorted(int(n) for n in client.lrange(f"{prefix}:acme:done", 0, -1)) == list(range(10))
        assert int(client.get(f"{prefix}:acme:peak")) == 2  # never more than 2 at once, and the cap was reached
        # a deferred run is the same task (same id): every caller gets its result, none failed or was retried
        assert [r.get(timeout=30) for r in results] == list(range(10))
        # a hard limit refuses with a clear error
        refused = tasks.render_on_gpu.apply_async(args=("acme",))
        with pytest.raises(E.EntitlementDenied, match="acme may not use more gpu_seconds: over the hard limit"):
            refused.get(timeout=30)
        assert tasks.render_on_gpu.apply_async(args=("globex",)).get(timeout=30) == "rendered"
    finally:
        for w in workers:
            w.terminate()
        for w in workers:
            w.wait(20)
        for key in client.scan_iter(f"{prefix}*"):
            client.delete(key)
