"""Django: attribution after authentication, on the server span and everything the request causes.

The official Django instrumentation starts the server span in the first middleware, before any
authentication. :class:`SpanmeterMiddleware` runs after ``AuthenticationMiddleware``; it asks the
*attribution resolver* who the request bills, then

1. sets ``account_id``, ``job_id``, ``plan_code`` (and ``spanmeter.synthetic``) on the server span,
2. attaches them as W3C baggage for the rest of the request, so every child span and every Celery task
   enqueued by the request (across the broker) carries them (spanmeter's span processor stamps them
   on each span as it starts),
3. exposes them as ``request.spanmeter`` (an :class:`Attribution`), for views that return the job id.

``job_id`` is a new UUID per request unless the resolver supplies one (the default resolver takes
``X-Spanmeter-Job-Id`` when present, else makes the new id itself). :func:`install` (called by
``import spanmeter.instrumentation.auto``) puts the middleware in ``settings.MIDDLEWARE`` for you, right
after ``django.contrib.auth.middleware.AuthenticationMiddleware`` (or first after the OpenTelemetry
middleware when there is no authentication middleware).

The resolver is a function ``resolve(request) -> Attribution | None`` named by the Django setting or the
environment variable ``SPANMETER_ATTRIBUTION_RESOLVER`` (``"module.path:function"``). The default,
:func:`default_resolver`:

- with ``SPANMETER_TRUSTED_HEADERS=true``, reads headers a trusted gateway sets (and strips from client
  requests): ``X-Spanmeter-Account-Id``, ``X-Spanmeter-Plan-Code``, ``X-Spanmeter-Job-Id`` and
  ``X-Spanmeter-Synthetic: true`` (synthetic traffic, metered but never billed);
- otherwise, or when the headers are absent, the authenticated user: ``user.spanmeter_account_id`` if the
  user model has it, else the username; ``user.spanmeter_plan_code`` if present;
- otherwise ``None``: the request is not attributed (its ``api_requests`` usage is only counted).

A custom resolver, e.g. API keys to accounts::

    # settings.py
    SPANMETER_ATTRIBUTION_RESOLVER = "myapp.billing:resolve"

    # myapp/billing.py
    from spanmeter.instrumentation.django import Attribution

    def resolve(request):
        key = ApiKey.objects.filter(token=request.headers.get("X-Api-Key")).first()
        return Attribution(account_id=key.account_id, plan_code=key.plan) if key else None

Inbound ``baggage`` headers never decide attribution: the reserved keys are stripped on extraction
(:mod:`.propagation`). The middleware never raises into the application: a failing resolver is logged
and the request goes on unattributed.
"""

from __future__ import annotations

import importlib
import logging
import random
from collections.abc import Callable
from typing import Any, NamedTuple

from opentelemetry import baggage, context, trace
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.sdk.trace import Span as _SdkSpan

from spanmeter import attributes as A

__all__ = ["MIDDLEWARE_PATH", "Attribution", "SpanmeterMiddleware", "default_resolver", "install", "load_resolver"]

log = logging.getLogger(__name__)

MIDDLEWARE_PATH = "spanmeter.instrumentation.django.SpanmeterMiddleware"
_AUTH_MIDDLEWARE = "django.contrib.auth.middleware.AuthenticationMiddleware"
_OTEL_MIDDLEWARE = "opentelemetry.instrumentation.django.middleware.otel_middleware._DjangoMiddleware"
_TRUE = ("true", "1", "yes")

# set by spanmeter.instrumentation.bootstrap from its configuration
trusted_headers = False
resolver_path = "spanmeter.instrumentation.django:default_resolver"


_PLAIN = (str, bool)  # attribute values the fast write stores as they are (type identity: no subclasses)

# The baggage entries live in the context as one dict under this key; the middleware sets them all in one
# ``set_value`` (three ``set_baggage`` calls would copy the dict and the context three times per request).
_BAGGAGE_KEY = getattr(baggage, "_BAGGAGE_KEY", None)
# UUID version 4 layout on a random 128-bit integer: version nibble 4, variant bits 10
_UUID4_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))
_UUID4_SET = (0x4000 << 64) | (0x8000 << 48)


def new_job_id() -> str:
    """A random UUID4 as 32 hex digits.

    Not ``uuid.uuid4()``: its ``os.urandom`` releases the GIL on every request, which starved the export
    thread in the benchmark (spans dropped); a job id is an identifier, not a secret.
    """
    return f"{(random.getrandbits(128) & _UUID4_CLEAR) | _UUID4_SET:032x}"


class Attribution(NamedTuple):
    """Who a request bills (immutable; build with keywords, change with ``_replace``)."""

    account_id: str
    plan_code: str | None = None
    job_id: str | None = None
    synthetic: bool = False


def default_resolver(request: Any) -> Attribution | None:
    if trusted_headers:
        meta = request.META
        account = meta.get("HTTP_X_SPANMETER_ACCOUNT_ID")
        if account:
            return Attribution(  # positional: a NamedTuple built from keywords costs twice as much
                account,
                meta.get("HTTP_X_SPANMETER_PLAN_CODE") or None,
                meta.get("HTTP_X_SPANMETER_JOB_ID") or new_job_id(),
                meta.get("HTTP_X_SPANMETER_SYNTHETIC", "").lower() in _TRUE,
            )
    user = getattr(request, "user", None)
    if user is not None and getattr(user, "is_authenticated", False):
        account = getattr(user, "spanmeter_account_id", None) or user.get_username()
        if account:
            return Attribution(account_id=str(account), plan_code=getattr(user, "spanmeter_plan_code", None))
    return None


def load_resolver(path: str | None = None) -> Callable[[Any], Attribution | None]:
    """The resolver named ``module.path:function`` (Django setting, else environment, else the default)."""
    if path is None:
        try:
            from django.conf import settings

            path = getattr(settings, "SPANMETER_ATTRIBUTION_RESOLVER", None)
        except Exception:
            path = None
    module_name, _, attr = (path or resolver_path).partition(":")
    return getattr(importlib.import_module(module_name), attr)


class SpanmeterMiddleware:
    sync_capable = True
    async_capable = False

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        self.get_response = get_response
        self.resolve = load_resolver()  # fails at start-up, not per request, when the path is wrong

    def __call__(self, request: Any) -> Any:
        token = None
        try:
            token = self._attribute(request)
        except Exception:
            log.warning("spanmeter attribution failed; the request goes on unattributed", exc_info=True)
        try:
            return self.get_response(request)
        finally:
            if token is not None:
                context.detach(token)

    def _attribute(self, request: Any) -> object | None:
        found = self.resolve(request)
        if found is None:
            return None
        if found.job_id is None:
            found = Attribution(found.account_id, found.plan_code, new_job_id(), found.synthetic)
        request.spanmeter = found
        values: dict[str, Any] = {A.ACCOUNT_ID: found.account_id, A.JOB_ID: found.job_id}
        if found.plan_code:
            values[A.PLAN_CODE] = found.plan_code
        if found.synthetic:
            values[A.SYNTHETIC] = True
        span = trace.get_current_span()
        if span.is_recording():
            set_span_attributes(span, values)  # the server span started before authentication
        if found.synthetic:
            values[A.SYNTHETIC] = "true"  # baggage values are strings
        ctx = context.get_current()
        if _BAGGAGE_KEY is not None:
            current = context.get_value(_BAGGAGE_KEY, ctx)
            entries = {**current, **values} if isinstance(current, dict) and current else values
            ctx = context.set_value(_BAGGAGE_KEY, entries, ctx)
        else:  # an API version without the private key: the public, slower way
            for key, value in values.items():
                ctx = baggage.set_baggage(key, value, ctx)
        return context.attach(ctx)


def set_span_attributes(span: Any, values: dict[str, Any]) -> None:
    """``span.set_attributes(values)``, faster for the few plain values attribution sets.

    The SDK's ``set_attributes`` re-validates every value (≈ 2 µs a request on this path, most of what
    attribution costs). When the span is the SDK's ``Span`` (not overriding ``set_attributes``) with the
    known attribute container, every key a non-empty ``str`` and every value exactly a ``str`` or ``bool``,
    and, checked under both of the span's locks, the span has not ended, there is room for every key and no
    value-length limit could apply, the values go straight into the container: exactly what
    ``set_attributes`` would store. Anything else (a custom resolver's UUID or ``str`` subclass, a limit, an
    ended or non-SDK span) takes the public call, which converts, truncates, evicts and warns as usual.
    """
    if not _write_plain_attributes(span, values):
        span.set_attributes(values)


def _write_plain_attributes(span: Any, values: dict[str, Any]) -> bool:
    """The fast path of :func:`set_span_attributes`; False when the public call must do it."""
    if not isinstance(span, _SdkSpan) or type(span).set_attributes is not _SdkSpan.set_attributes:
        return False
    if not all(type(key) is str and key and type(value) in _PLAIN for key, value in values.items()):
        return False
    attributes = getattr(span, "_attributes", None)
    lock = getattr(span, "_lock", None)
    if type(attributes) is not BoundedAttributes or lock is None:
        return False
    with lock, attributes._lock:  # the SDK's order: span, then container
        stored, maxlen, limit = attributes._dict, attributes.maxlen, attributes.max_value_len
        if span._end_time is not None or attributes._immutable:
            return False
        if maxlen is not None and len(stored) + len(values) > maxlen:
            return False
        if limit is not None and any(type(v) is str and len(v) > limit for v in values.values()):
            return False
        for key, value in values.items():
            stored.pop(key, None)  # a re-set key moves to the end, as in the SDK
            stored[key] = value
        return True


def install(tracer_provider: Any = None) -> bool:
    """Instrument Django (official instrumentation) and add :class:`SpanmeterMiddleware`; needs settings.

    Returns whether the middleware was added now (False when it already was)."""
    from django.conf import settings
    from opentelemetry.instrumentation.django import DjangoInstrumentor

    instrumentor = DjangoInstrumentor()
    if not instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.instrument(tracer_provider=tracer_provider)
    middleware = list(getattr(settings, "MIDDLEWARE", None) or [])
    if MIDDLEWARE_PATH in middleware:
        return False
    if _AUTH_MIDDLEWARE in middleware:
        position = middleware.index(_AUTH_MIDDLEWARE) + 1
    elif _OTEL_MIDDLEWARE in middleware:
        position = middleware.index(_OTEL_MIDDLEWARE) + 1
    else:
        position = 0
    middleware.insert(position, MIDDLEWARE_PATH)
    settings.MIDDLEWARE = middleware
    return True


def uninstall(uninstrument_django: bool) -> None:
    """Remove :class:`SpanmeterMiddleware` from the settings; uninstrument Django if spanmeter did."""
    from django.conf import settings

    if settings.configured:
        middleware = list(getattr(settings, "MIDDLEWARE", None) or [])
        if MIDDLEWARE_PATH in middleware:
            middleware.remove(MIDDLEWARE_PATH)
            settings.MIDDLEWARE = middleware
    if uninstrument_django:
        from opentelemetry.instrumentation.django import DjangoInstrumentor

        DjangoInstrumentor().uninstrument()
