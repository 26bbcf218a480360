"""Entitlements in the application: may this account start more work, and how much at once?

Billing and admission control work together: an account past its plan's hard limit should not start paid
work, and a plan's concurrency cap should hold across the whole worker fleet (compute pricing without caps
invites retry storms). This module asks ``spanmeter api`` (``GET /v1/accounts/{id}/entitlements``) from
inside the application; the customer's process holds an API token, never database credentials.

    from spanmeter.instrumentation import entitlements

    decision = entitlements.check("acme", "worker_seconds")   # cached; never raises
    if not decision.allowed:
        return HttpResponse(decision.reason, status=402)

    @app.task(bind=True)
    @entitlements.entitled("worker_seconds")                  # a Celery task: refuse, cap, defer
    def render(self, document_id): ...

Configuration (environment):

=========================================  ========  ===========================================================
variable                                   default   meaning
=========================================  ========  ===========================================================
``SPANMETER_API_URL``                      unset     the API, e.g. ``http://billing-api:8080``; unset: every
                                                     check answers by the fail policy (source ``unconfigured``)
``SPANMETER_API_TOKEN``                    unset     an operator token (``spanmeter api token new --operator``),
                                                     or an account token for a single-tenant application
``SPANMETER_ENTITLEMENTS_TTL_SECONDS``     ``30``    an answer is fresh this long; after it the last answer is
                                                     served while one background refresh runs
``SPANMETER_ENTITLEMENTS_MAX_STALE_SECONDS`` ``600`` how long a last answer may stand in when the API is down
``SPANMETER_ENTITLEMENTS_TIMEOUT_SECONDS`` ``2``     an API call's timeout (only the first call for an account
                                                     waits for it)
``SPANMETER_ENTITLEMENTS_FAIL``            ``open``  the fail policy when nothing better is known
``SPANMETER_ENTITLEMENTS_FAIL_<METER>``    —         per meter, e.g. ``SPANMETER_ENTITLEMENTS_FAIL_GPU_SECONDS=closed``
``SPANMETER_CONCURRENCY_REDIS_URL``        unset     the shared store of the concurrency caps (the broker's Redis
                                                     will do); unset: caps are not enforced (logged once)
``SPANMETER_CONCURRENCY_LEASE_SECONDS``    ``300``   a running task's lease; renewed every third of it while it
                                                     runs, so a SIGKILLed worker's slot frees within this time
=========================================  ========  ===========================================================

**The fail policy.** When the API cannot answer (down, timeout, bad URL, refused token), :func:`check`
answers from the last good answer while it is at most ``MAX_STALE`` old (source ``stale``); otherwise by the
meter's policy: the ``fail_policy`` the API last gave for that account and meter (set per plan and metric with
``spanmeter entitlements set --fail open|closed``; null when the plan sets none), else
``SPANMETER_ENTITLEMENTS_FAIL_<METER>``, else ``SPANMETER_ENTITLEMENTS_FAIL``. After a failed request an account
waits 5 s (or the TTL, if shorter) before the next one: a down or hanging API costs one timeout per account,
not one per check. Redirects are refused (the token would follow them); use an ``https://`` URL off the host. ``open`` allows (source ``fail-open``): billing still meters everything, so
the risk is overage, not loss. ``closed`` refuses (source ``fail-closed``): for meters where overage is worse
than an outage (GPU time, say). An account the API answers 404 for (no subscription this month, or not one
the token may read) is decided by the same policy, with that reason.

**Caps across a fleet.** :class:`ConcurrencyLimiter` keeps, per (account, meter), a Redis sorted set of
leases whose scores are their expiry times (Redis's clock, inside one Lua script: expired leases are removed,
then a lease is added only while fewer than the cap remain). A finished task removes its lease; a killed one
leaves a lease that expires. Never INCR/DECR: a counter leaks on SIGKILL. Redis calls time out after 2 s; when
the store fails, the task runs without a lease (logged): a cap is a fairness control, not a billing one.

**Deferral, not failure.** A task over its cap is published again, as ``retry()`` publishes it (the same task
id, queue, links, chain and chord), with a countdown that doubles per deferral up to 16× ``defer_seconds``,
and the current run ends with Celery's ``Ignore``: the caller's result simply arrives later. Celery's
``retry()`` would spend ``max_retries`` and turn waiting into failure. The deferral count travels in a message
header. If the task cannot be published again (the broker away), it runs now, over its cap, rather than be
lost. A task with no account (no baggage, no ``account=``) runs unchecked, logged once per task. A task over a hard limit raises :class:`EntitlementDenied`, a
clear error naming the account, meter, usage and limit (that task fails; the application decides what a
refused task means for its users).

Cost: a cached :func:`check` is two dictionary lookups and a clock read (``bench/django_overhead.py
--entitlements`` prints its median and p99). Nothing here ever raises into the application except
:class:`EntitlementDenied` from :func:`entitled`, which is its purpose.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import random
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

__all__ = [
    "ConcurrencyLimiter",
    "Decision",
    "EntitlementDenied",
    "Entitlements",
    "check",
    "configure",
    "entitled",
]

log = logging.getLogger(__name__)

# raw meters check against the billable metric that bills them
METRIC_OF_METER = {
    "input_tokens": "tokens",
    "output_tokens": "tokens",
    "cache_read_tokens": "tokens",
    "cache_write_tokens": "tokens",
    "reasoning_tokens": "tokens",
}
DEFERRALS_HEADER = "spanmeter_deferrals"
FAILURE_BACKOFF_SECONDS = 5.0  # after a failed request, an account's next request waits this long (or the TTL)
CACHE_ACCOUNTS = 100_000  # accounts cached per process (oldest out)


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect is an error: urllib would send the Authorization header to wherever it points."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirects)


@dataclass(frozen=True)
class Decision:
    """The answer of :func:`check`."""

    allowed: bool
    account_id: str
    meter: str
    source: str  # api | cache | stale | fail-open | fail-closed (| unconfigured: fail-open or -closed by policy)
    reason: str
    kind: str | None = None  # hard, soft, none (from the API)
    used: Decimal | None = None
    limit: Decimal | None = None
    remaining: Decimal | None = None
    max_concurrency: int | None = None


class EntitlementDenied(Exception):
    """Raised by :func:`entitled` for a task over a hard limit (or refused by a closed fail policy). Its one
    argument is the message, so it pickles and Celery rebuilds it for the caller (``.decision`` stays local)."""

    def __init__(self, message: str, decision: Decision | None = None) -> None:
        super().__init__(message)
        self.decision = decision

    @classmethod
    def of(cls, decision: Decision) -> EntitlementDenied:
        return cls(f"spanmeter: {decision.account_id} may not use more {decision.meter}: {decision.reason}", decision)


def _decimal(value: Any) -> Decimal | None:
    try:
        return None if value is None else Decimal(str(value))
    except (InvalidOperation, ValueError):
        return None


@dataclass
class _Entry:
    fresh_until: float
    usable_until: float
    decisions: dict[str, Decision]  # per metric, source "cache"
    policies: dict[str, str]


class Entitlements:
    """A client of the entitlements endpoint with a per-account cache (thread-safe; one per process)."""

    def __init__(
        self,
        api_url: str | None,
        token: str | None,
        *,
        ttl_seconds: float = 30.0,
        max_stale_seconds: float = 600.0,
        timeout_seconds: float = 2.0,
        fail: str = "open",
        fail_per_meter: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.api_url = (api_url or "").rstrip("/") or None
        self.token = token or None
        self.ttl_seconds = ttl_seconds
        self.max_stale_seconds = max_stale_seconds
        self.timeout_seconds = timeout_seconds
        self.fail = fail if fail in ("open", "closed") else "open"
        self.fail_per_meter = {k: v for k, v in (fail_per_meter or {}).items() if v in ("open", "closed")}
        self._clock = clock
        self._cache: dict[str, _Entry] = {}
        self._failed: dict[str, tuple[float, str]] = {}  # account -> (no new request before, why)
        self._refreshing: set[str] = set()
        self._lock = threading.Lock()
        self._warned = False
        os.register_at_fork(after_in_child=self._after_fork)

    def _after_fork(self) -> None:  # a lock or a refresh in flight in the parent is not the child's
        self._lock = threading.Lock()
        self._refreshing = set()

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] = os.environ) -> Entitlements:
        def number(name: str, default: float) -> float:
            try:
                value = float(environ.get(name, default))
                return value if value > 0 else default
            except ValueError:
                log.warning("spanmeter: %s=%r is not a number: using %s", name, environ.get(name), default)
                return default

        prefix = "SPANMETER_ENTITLEMENTS_FAIL_"
        per_meter = {k[len(prefix) :].lower(): v.lower() for k, v in environ.items() if k.startswith(prefix)}
        return cls(
            environ.get("SPANMETER_API_URL"),
            environ.get("SPANMETER_API_TOKEN"),
            ttl_seconds=number("SPANMETER_ENTITLEMENTS_TTL_SECONDS", 30.0),
            max_stale_seconds=number("SPANMETER_ENTITLEMENTS_MAX_STALE_SECONDS", 600.0),
            timeout_seconds=number("SPANMETER_ENTITLEMENTS_TIMEOUT_SECONDS", 2.0),
            fail=environ.get("SPANMETER_ENTITLEMENTS_FAIL", "open").lower(),
            fail_per_meter=per_meter,
        )

    # -- the hot path -------------------------------------------------------------------------------
    def check(self, account_id: str, meter: str) -> Decision:
        """May ``account_id`` use more of ``meter`` (a billable metric, or a meter that bills one)? Never raises."""
        entry = self._cache.get(account_id) if type(account_id) is str else None
        if entry is not None and self._clock() < entry.fresh_until:
            found = entry.decisions.get(METRIC_OF_METER.get(meter, meter))
            if found is not None:
                return found
        try:
            return self._slow(account_id, meter, entry)
        except Exception as exc:  # never into the application
            log.debug("spanmeter: entitlements check failed", exc_info=True)
            return self._by_policy(account_id, meter, f"the check failed ({type(exc).__name__})", entry)

    # -- everything else ----------------------------------------------------------------------------
    def _slow(self, account_id: str, meter: str, entry: _Entry | None) -> Decision:
        account_id, metric, now = str(account_id), METRIC_OF_METER.get(meter, meter), self._clock()
        failed = self._failed.get(account_id)
        if entry is not None and now < entry.usable_until:  # stale: serve it, refresh once in the background
            if failed is None or now >= failed[0]:
                self._refresh_in_background(account_id)
            found = entry.decisions.get(metric)
            if found is not None:
                return Decision(**{**found.__dict__, "source": "stale"})
        if self.api_url is None:
            if not self._warned:
                self._warned = True
                log.warning("spanmeter: SPANMETER_API_URL is not set: entitlement checks answer by the fail policy")
            return self._by_policy(account_id, meter, "SPANMETER_API_URL is not set", entry, source="unconfigured")
        if failed is not None and now < failed[0]:  # the API failed a moment ago: do not wait on it again yet
            return self._by_policy(account_id, meter, failed[1], entry)
        fetched, why = self._fetch(account_id)
        if fetched is None:
            return self._by_policy(account_id, meter, why, entry)
        found = fetched.decisions.get(metric)
        if found is None:
            return self._by_policy(account_id, meter, f"the API knows no meter {meter!r}", fetched)
        return Decision(**{**found.__dict__, "source": "api"})

    def _by_policy(
        self, account_id: str, meter: str, why: str, entry: _Entry | None, source: str | None = None
    ) -> Decision:
        metric = METRIC_OF_METER.get(meter, meter)
        known = entry.policies.get(metric) if entry is not None else None  # the account's plan's, as last given
        policy = known or self.fail_per_meter.get(metric) or self.fail_per_meter.get(meter) or self.fail
        allowed = policy == "open"
        return Decision(allowed, account_id, meter, source or f"fail-{policy}", f"{why}; fail policy {policy}")

    def _refresh_in_background(self, account_id: str) -> None:
        with self._lock:
            if account_id in self._refreshing:
                return
            self._refreshing.add(account_id)

        def run() -> None:
            try:
                self._fetch(account_id)
            except Exception:
                log.debug("spanmeter: entitlements refresh failed", exc_info=True)
            finally:
                with self._lock:
                    self._refreshing.discard(account_id)

        threading.Thread(target=run, name="spanmeter-entitlements", daemon=True).start()

    def _fetch(self, account_id: str) -> tuple[_Entry | None, str]:
        entry, why = self._request(account_id)
        with self._lock:
            if entry is None:  # back off: the same account asks again after a while, not on every check
                self._failed[account_id] = (self._clock() + min(self.ttl_seconds, FAILURE_BACKOFF_SECONDS), why)
                if len(self._failed) > CACHE_ACCOUNTS:
                    self._failed.clear()
            else:
                self._failed.pop(account_id, None)
        return entry, why

    def _request(self, account_id: str) -> tuple[_Entry | None, str]:
        assert self.api_url is not None
        url = f"{self.api_url}/v1/accounts/{urllib.parse.quote(account_id, safe='')}/entitlements"
        request = urllib.request.Request(url, headers={"Accept": "application/json"})
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            # stdlib HTTP on purpose: no dependency of ours in the customer's process
            with _OPENER.open(request, timeout=self.timeout_seconds) as response:
                document = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None, "the API knows no subscription of this account this month (or the token may not read it)"
            if exc.code in (401, 403) and not self._warned:
                self._warned = True
                log.warning(
                    "spanmeter: the API refused SPANMETER_API_TOKEN (%s): checks answer by the fail policy", exc.code
                )
            return None, f"the API answered {exc.code}"
        except (OSError, ValueError) as exc:
            return None, f"the API is unreachable ({type(exc).__name__})"
        decisions, policies = {}, {}
        for item in document.get("entitlements", []):
            metric = str(item.get("meter"))
            if item.get("fail_policy") in ("open", "closed"):  # set for the plan; else the application's default
                policies[metric] = item["fail_policy"]
            used, limit, remaining = (
                _decimal(item.get("used")),
                _decimal(item.get("limit")),
                _decimal(item.get("remaining")),
            )
            allowed = bool(item.get("allowed", True))
            reason = (
                f"{item.get('kind')} limit {limit} {item.get('unit', '')}, used {used}".strip()
                if limit is not None
                else "no limit"
            )
            if not allowed:
                reason = f"over the hard limit: used {used} of {limit} {item.get('unit', '')}".strip()
            cap = item.get("max_concurrency")
            decisions[metric] = Decision(allowed, account_id, metric, "cache", reason, item.get("kind"), used, limit,
                                         remaining, cap if isinstance(cap, int) else None)  # fmt: skip
        now = self._clock()
        entry = _Entry(now + self.ttl_seconds, now + self.max_stale_seconds, decisions, policies)
        with self._lock:
            self._cache[account_id] = entry
            if len(self._cache) > CACHE_ACCOUNTS:
                self._cache.pop(next(iter(self._cache)))
        return entry, "ok"


_default: Entitlements | None = None
_default_lock = threading.Lock()


def configure(client: Entitlements | None = None) -> Entitlements:
    """Set (or read again from the environment) the client :func:`check` uses."""
    global _default
    with _default_lock:
        _default = client if client is not None else Entitlements.from_environ()
        return _default


def check(account_id: str, meter: str) -> Decision:
    """:meth:`Entitlements.check` on the process's client (made from the environment on first use)."""
    client = _default
    if client is None:
        try:
            client = configure()
        except Exception:  # never into the application
            log.warning("spanmeter: entitlements are misconfigured: allowing", exc_info=True)
            return Decision(True, account_id, meter, "fail-open", "entitlements are misconfigured")
    return client.check(account_id, meter)


# -- concurrency caps on a shared store ---------------------------------------------------------------------

_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
  redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[2])) + 60)
  return 1
end
return 0
"""
_RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local changed = redis.call('ZADD', KEYS[1], 'XX', 'CH', now + tonumber(ARGV[1]), ARGV[2])
redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[1])) + 60)
return changed
"""


class ConcurrencyLimiter:
    """Leases per (account, meter) in Redis sorted sets (see the module guide)."""

    def __init__(self, client: Any, lease_seconds: float = 300.0, prefix: str = "spanmeter:cap") -> None:
        self.client = client
        self.lease_seconds = lease_seconds
        self.prefix = prefix
        self._acquire = client.register_script(_ACQUIRE)
        self._renew = client.register_script(_RENEW)

    @classmethod
    def from_url(cls, url: str, lease_seconds: float = 300.0) -> ConcurrencyLimiter:
        import redis  # the application's own redis-py (Celery's Redis broker brings it); imported only here

        return cls(redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2), lease_seconds)

    def key(self, account_id: str, meter: str) -> str:
        return f"{self.prefix}:{account_id}:{meter}"

    def acquire(self, account_id: str, meter: str, cap: int) -> str | None:
        """A lease id when fewer than ``cap`` leases are held, else None."""
        lease = uuid.uuid4().hex
        taken = self._acquire(keys=[self.key(account_id, meter)], args=[cap, self.lease_seconds, lease])
        return lease if int(taken) == 1 else None

    def renew(self, account_id: str, meter: str, lease: str) -> bool:
        return bool(int(self._renew(keys=[self.key(account_id, meter)], args=[self.lease_seconds, lease])))

    def release(self, account_id: str, meter: str, lease: str) -> None:
        self.client.zrem(self.key(account_id, meter), lease)

    def held(self, account_id: str, meter: str) -> int:
        """Leases not yet expired (for tests and dashboards)."""
        seconds, micros = self.client.time()
        return int(self.client.zcount(self.key(account_id, meter), f"({seconds + micros / 1e6}", "+inf"))


_limiter: ConcurrencyLimiter | None = None
_limiter_checked = False


def _default_limiter() -> ConcurrencyLimiter | None:
    global _limiter, _limiter_checked
    if not _limiter_checked:
        _limiter_checked = True
        url = os.environ.get("SPANMETER_CONCURRENCY_REDIS_URL")
        if not url:
            log.warning("spanmeter: SPANMETER_CONCURRENCY_REDIS_URL is not set: concurrency caps are not enforced")
        else:
            try:
                lease = float(os.environ.get("SPANMETER_CONCURRENCY_LEASE_SECONDS", "300"))
                _limiter = ConcurrencyLimiter.from_url(url, lease if lease > 0 else 300.0)
            except Exception:
                log.warning("spanmeter: the concurrency store is unusable: caps are not enforced", exc_info=True)
    return _limiter


def _current_account() -> str | None:
    try:
        from opentelemetry import baggage

        from spanmeter import attributes as A

        value = baggage.get_baggage(A.ACCOUNT_ID)
        return str(value) if value else None
    except Exception:
        return None


class _Renewer:
    """Renews a lease every third of its time while the task runs."""

    def __init__(self, limiter: ConcurrencyLimiter, account_id: str, meter: str, lease: str) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(limiter, account_id, meter, lease), daemon=True)
        self._thread.start()

    def _run(self, limiter: ConcurrencyLimiter, account_id: str, meter: str, lease: str) -> None:
        while not self._stop.wait(limiter.lease_seconds / 3):
            try:
                if not limiter.renew(account_id, meter, lease):
                    log.warning("spanmeter: the lease of a %s task of %s had expired before it was renewed", meter,
                                account_id)  # fmt: skip
            except Exception:
                log.debug("spanmeter: renewing a lease failed", exc_info=True)

    def stop(self) -> None:
        self._stop.set()


_UNATTRIBUTED: set[str] = set()


def entitled(
    meter: str,
    *,
    account: Callable[..., str | None] | None = None,
    defer_seconds: float = 5.0,
    limiter: ConcurrencyLimiter | None = None,
    client: Entitlements | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Guard a bound Celery task (``@app.task(bind=True)`` above this decorator).

    The account is ``account(*args, **kwargs)`` when given, else the ``account_id`` the task's span context
    carries (the W3C baggage the request set). Over a hard limit: :class:`EntitlementDenied`. Under a
    concurrency cap with no slot free: the task is published again with a countdown (``defer_seconds`` plus up
    to 50 % jitter) and this run ends with ``Ignore``. A task without an account runs unguarded."""

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def run(task: Any, *args: Any, **kwargs: Any) -> Any:
            account_id = account(*args, **kwargs) if account is not None else _current_account()
            if not account_id:
                if fn.__name__ not in _UNATTRIBUTED:
                    _UNATTRIBUTED.add(fn.__name__)
                    log.warning("spanmeter: %s ran without an account_id: not checked against any limit", fn.__name__)
                return fn(task, *args, **kwargs)
            decision = (client or _default or configure()).check(account_id, meter)
            if not decision.allowed:
                raise EntitlementDenied.of(decision)
            lease = None
            store = limiter if limiter is not None else (_default_limiter() if decision.max_concurrency else None)
            if decision.max_concurrency and store is not None:
                try:
                    lease = store.acquire(account_id, meter, decision.max_concurrency)
                except Exception:
                    log.warning("spanmeter: the concurrency store failed: running without a lease", exc_info=True)
                    lease = ""
                if lease is None and not _defer(task, args, kwargs, defer_seconds):
                    lease = ""
            renewer = _Renewer(store, account_id, meter, lease) if lease and store is not None else None
            try:
                return fn(task, *args, **kwargs)
            finally:
                if renewer is not None:
                    renewer.stop()
                if lease and store is not None:
                    try:
                        store.release(account_id, meter, lease)
                    except Exception:
                        log.debug("spanmeter: releasing a lease failed (it expires)", exc_info=True)

        return run

    return decorate


def _deferrals(request: Any) -> int:
    value = getattr(request, DEFERRALS_HEADER, None) or (getattr(request, "headers", None) or {}).get(DEFERRALS_HEADER)
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def _defer(task: Any, args: tuple[Any, ...], kwargs: dict[str, Any], defer_seconds: float) -> bool:
    """Publish the task again, as Celery's ``retry()`` does (the same id, queue, links, chain and chord) but
    without spending ``max_retries``, after ``defer_seconds`` doubling per deferral up to 16×, with jitter; then
    end this run with ``Ignore`` (the result stays pending until the deferred run finishes). False when it
    could not be published: the caller runs the task now rather than lose it."""
    from celery.exceptions import Ignore

    deferrals = _deferrals(task.request) + 1
    countdown = defer_seconds * min(2 ** (deferrals - 1), 16) * (1 + random.random() / 2)
    try:
        signature = task.signature_from_request(task.request, args, kwargs, countdown=countdown,
                                                headers={DEFERRALS_HEADER: deferrals})  # fmt: skip
        signature.apply_async()
    except Exception:
        log.warning("spanmeter: could not defer %s: running it over its cap", task.name, exc_info=True)
        return False
    raise Ignore()
