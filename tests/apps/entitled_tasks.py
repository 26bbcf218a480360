"""A Celery app for tests/test_entitlements.py: tasks guarded by spanmeter.instrumentation.entitlements.

Each task records in Redis how many of its account's tasks run at once (test bookkeeping only)."""

from __future__ import annotations

import os
import time

import redis
from celery import Celery

from spanmeter.instrumentation import entitlements

BROKER = os.environ["TEST_BROKER_URL"]
PREFIX = os.environ["TEST_PREFIX"]
app = Celery("entitled_tasks", broker=BROKER, backend=BROKER)
app.conf.task_default_queue = PREFIX
app.conf.worker_prefetch_multiplier = 1
store = redis.Redis.from_url(BROKER)

_PEAK = """
local now = redis.call('INCR', KEYS[1])
if now > tonumber(redis.call('GET', KEYS[2]) or '0') then redis.call('SET', KEYS[2], now) end
return now
"""
peak = store.register_script(_PEAK)


@app.task(bind=True, name="entitled_tasks.work")
@entitlements.entitled("worker_seconds", account=lambda n, account: account, defer_seconds=0.3)
def work(self, n: int, account: str) -> int:
    peak(keys=[f"{PREFIX}:{account}:running", f"{PREFIX}:{account}:peak"])
    try:
        time.sleep(0.4)
    finally:
        store.decr(f"{PREFIX}:{account}:running")
    store.rpush(f"{PREFIX}:{account}:done", n)
    return n


@app.task(bind=True, name="entitled_tasks.render_on_gpu")
@entitlements.entitled("gpu_seconds", account=lambda account: account)
def render_on_gpu(self, account: str) -> str:
    return "rendered"
