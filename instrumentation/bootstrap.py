"""What ``import spanmeter.instrumentation.auto`` does, as two symmetric functions.

:func:`instrument` (idempotent: a second call returns the first call's state):

1. **Tracer provider.** If the application already set an SDK ``TracerProvider``, spanmeter attaches its
   processors to it and wraps its sampler (tracers created *before* that keep the old sampler); a
   global provider can only be set once, so it is never replaced. Otherwise it creates one from the
   standard variables (``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_SAMPLER``, plus
   ``SPANMETER_SERVICE_VERSION`` / ``SPANMETER_ENVIRONMENT``) and sets it globally.
2. **Processor.** One :class:`~.processors.SpanmeterSpanProcessor` with ``stamp_attribution=True``
   (baggage → span attributes at start, what ``AttributionSpanProcessor`` does) exporting, through a fork-safe
   :class:`~.exporting.ProcessLocalExporter`, to the OTLP/gRPC endpoint in ``OTEL_EXPORTER_OTLP_*``.
   The sampler is wrapped in :class:`~.sampling.BillingSafeSampler`: billable spans are exported whatever
   the sampler said.
3. **Propagation.** W3C tracecontext + baggage, where inbound baggage loses the reserved attribution keys
   except in Celery task messages (:mod:`.propagation`).
4. **Django** (if installed): the official instrumentation and :class:`~.django.SpanmeterMiddleware`, put
   into ``settings.MIDDLEWARE`` when Django builds its middleware chain (so the import can sit at the top
   of ``settings.py``).
5. **Celery** (if installed): the official instrumentation as soon as the application imports Celery (at
   once if it already has; a service that never imports it never loads it), so publishers inject context into task
   messages, and again in ``worker_process_init`` (each prefork child; the exporter and the SDK's batch
   thread are rebuilt after the fork); ``worker_process_shutdown`` flushes.
6. **SIGTERM** (main thread only): flushes spans (``SPANMETER_FLUSH_TIMEOUT_MILLIS``), then hands over to
   the handler that was installed before, or terminates like the default. Process exit flushes too (the
   SDK provider's ``atexit``).

:func:`uninstrument` undoes exactly what :func:`instrument` did: it flushes and detaches spanmeter's
processors, restores the previous sampler, propagator, SIGTERM handler and Django middleware list, and
uninstruments Django and Celery if spanmeter instrumented them. A provider spanmeter created stays the
global provider (OpenTelemetry does not allow replacing it), now without spanmeter's processors.
"""

from __future__ import annotations

import importlib.util
import logging
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import wrapt
from opentelemetry import propagate, trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.sdk.resources import OTELResourceDetector, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from . import django as django_support
from . import metrics
from .config import InstrumentationConfig, load_instrumentation_config
from .exporting import ProcessLocalExporter
from .processors import SpanmeterSpanProcessor
from .propagation import AttributionSafeBaggagePropagator
from .sampling import BillingSafeSampler

__all__ = ["Instrumentation", "current", "instrument", "uninstrument"]

log = logging.getLogger(__name__)
_lock = threading.RLock()


@dataclass
class Instrumentation:
    """What :func:`instrument` did, so that :func:`uninstrument` undoes exactly that."""

    config: InstrumentationConfig
    provider: TracerProvider | None = None
    created_provider: bool = False
    previous_sampler: Any = None
    processors: list[Any] = field(default_factory=list)
    previous_propagator: TextMapPropagator | None = None
    django_patched: Any = None  # the original BaseHandler.load_middleware
    django_instrumented: bool = False
    celery_instrumented: bool = False
    celery_armed: bool = False  # waiting for the application to import Celery
    celery_handlers: list[tuple[Any, Any]] = field(default_factory=list)
    previous_sigterm: Any = None
    sigterm_handler: Any = None

    def flush(self, timeout_millis: int | None = None) -> bool:
        done = True
        for processor in self.processors:
            try:
                done = processor.force_flush(timeout_millis or self.config.flush_timeout_millis) and done
            except Exception:
                log.warning("flushing spans failed", exc_info=True)
                done = False
        return done


_state: Instrumentation | None = None


def current() -> Instrumentation | None:
    return _state


def instrument(
    exporter: SpanExporter | None = None, environ: dict[str, str] | None = None, **batch_options: Any
) -> Instrumentation | None:
    """Set up tracing for this process (see the module docstring); ``None`` when ``OTEL_SDK_DISABLED``.

    ``exporter`` replaces the OTLP exporter (tests use an in-memory one); ``batch_options`` go to the
    batch processor (``schedule_delay_millis``, ``max_queue_size``, …; the ``OTEL_BSP_*`` variables
    otherwise)."""
    global _state
    with _lock:
        if _state is not None:
            return _state
        config = load_instrumentation_config(environ)
        if config.sdk_disabled:
            log.info("OTEL_SDK_DISABLED is set: spanmeter instrumentation is off")
            return None
        django_support.trusted_headers = config.trusted_headers
        django_support.resolver_path = config.attribution_resolver
        state = Instrumentation(config)
        # Each step is on its own: one that fails (an SDK, Django or Celery version it cannot hook into) is
        # logged once and shown in spanmeter_sdk_degraded{hook}; the application starts regardless.
        _guarded("provider", _setup_provider, state, exporter or ProcessLocalExporter(), batch_options)
        _guarded("propagation", _setup_propagation, state)
        if config.instrument_django:
            _guarded("django", _setup_django, state)
        if config.instrument_celery:
            _guarded("celery", _setup_celery, state)
        _guarded("sigterm", _setup_sigterm, state)
        _state = state
        return state


def _guarded(hook: str, step: Callable[..., None], *args: Any) -> None:
    """Run one set-up step; never raise into the application (a failure is a warning and a metric)."""
    try:
        step(*args)
    except Exception as exc:
        metrics.DEGRADED.labels(hook).set(1)
        log.warning(
            "spanmeter could not set up %s (%s: %s): the application runs without it; please report your "
            "opentelemetry-sdk, Django and Celery versions",
            hook,
            type(exc).__name__,
            exc,
            exc_info=log.isEnabledFor(logging.DEBUG),
        )


def uninstrument() -> None:
    global _state
    with _lock:
        state, _state = _state, None
        if state is None:
            return
        _teardown_sigterm(state)
        _teardown_celery(state)
        _teardown_django(state)
        if state.previous_propagator is not None:
            propagate.set_global_textmap(state.previous_propagator)
        _teardown_provider(state)


# --- provider and processors -------------------------------------------------------------------------


def _setup_provider(state: Instrumentation, exporter: SpanExporter, batch_options: dict[str, Any]) -> None:
    existing = trace.get_tracer_provider()
    if isinstance(existing, TracerProvider):
        provider = existing
        state.previous_sampler = provider.sampler
        if not isinstance(provider.sampler, BillingSafeSampler):
            provider.sampler = BillingSafeSampler(provider.sampler)
    elif type(existing).__name__ == "ProxyTracerProvider":  # none set yet: spanmeter sets one
        provider = TracerProvider(resource=_resource(state.config), sampler=BillingSafeSampler(_env_sampler()))
        trace.set_tracer_provider(provider)
        state.created_provider = True
    else:
        log.warning("the global tracer provider (%s) is not the OpenTelemetry SDK's: spanmeter adds nothing", existing)
        return
    state.provider = provider
    # one processor that stamps and exports: each extra processor is three more calls on every span
    processors = [SpanmeterSpanProcessor(exporter, stamp_attribution=True, **batch_options)]
    for processor in processors:
        provider.add_span_processor(processor)
    state.processors = processors


def _env_sampler() -> Any:
    from opentelemetry.sdk.trace import sampling

    try:
        return sampling._get_from_env_or_default()
    except Exception:
        log.warning("OTEL_TRACES_SAMPLER could not be read; using parentbased_always_on", exc_info=True)
        return sampling.ParentBased(sampling.ALWAYS_ON)


def _resource(config: InstrumentationConfig) -> Resource:
    from_env = OTELResourceDetector().detect().attributes
    defaults = {"service.version": config.service_version, "deployment.environment.name": config.environment}
    return Resource.create({k: v for k, v in defaults.items() if v and k not in from_env})


def _teardown_provider(state: Instrumentation) -> None:
    provider = state.provider
    if provider is None:
        return
    state.flush()
    multi = getattr(provider, "_active_span_processor", None)
    lock = getattr(multi, "_lock", None)
    if multi is not None and lock is not None and hasattr(multi, "_span_processors"):
        with lock:
            multi._span_processors = tuple(p for p in multi._span_processors if p not in state.processors)
    for processor in state.processors:
        try:
            processor.shutdown()
        except Exception:
            log.debug("shutting a processor down failed", exc_info=True)
    if state.previous_sampler is not None:
        provider.sampler = state.previous_sampler


# --- propagation --------------------------------------------------------------------------------------


# Celery task messages are written by the application's own web tier: their baggage is trusted. Named, not
# imported: importing the Celery instrumentation imports Celery (~200 modules) into services that never use it.
_TRUSTED_GETTERS = ("opentelemetry.instrumentation.celery:CeleryGetter",)


def _setup_propagation(state: Instrumentation) -> None:
    previous = propagate.get_global_textmap()
    safe = AttributionSafeBaggagePropagator(trusted_getter_names=_TRUSTED_GETTERS)
    members = list(getattr(previous, "_propagators", [previous]))
    rebuilt: list[TextMapPropagator] = []
    for member in members:
        if isinstance(member, W3CBaggagePropagator):
            rebuilt.append(safe)
        elif type(member).__name__ != "NoOpTextMapPropagator" and member is not None:
            rebuilt.append(member)
    if not any(isinstance(m, TraceContextTextMapPropagator) for m in rebuilt):
        rebuilt.insert(0, TraceContextTextMapPropagator())
    if safe not in rebuilt:
        rebuilt.append(safe)
    propagate.set_global_textmap(CompositePropagator(rebuilt))
    state.previous_propagator = previous


# --- Django ---------------------------------------------------------------------------------------------


def _setup_django(state: Instrumentation) -> None:
    try:
        from django.core.handlers.base import BaseHandler
        from opentelemetry.instrumentation.django import DjangoInstrumentor
    except ImportError:
        return
    state.django_instrumented = not DjangoInstrumentor().is_instrumented_by_opentelemetry
    original = BaseHandler.load_middleware
    provider = state.provider

    def load_middleware(self: Any, *args: Any, **kwargs: Any) -> Any:
        # settings are configured by now; runs before every handler builds its chain (idempotent)
        try:
            django_support.install(tracer_provider=provider)
        except Exception:
            log.warning("spanmeter could not instrument Django", exc_info=True)
        return original(self, *args, **kwargs)

    load_middleware.__wrapped__ = original  # type: ignore[attr-defined]
    BaseHandler.load_middleware = load_middleware  # type: ignore[method-assign]
    state.django_patched = original


def _teardown_django(state: Instrumentation) -> None:
    if state.django_patched is None:
        return
    from django.core.handlers.base import BaseHandler

    BaseHandler.load_middleware = state.django_patched  # type: ignore[method-assign]
    try:
        django_support.uninstall(uninstrument_django=state.django_instrumented)
    except Exception:
        log.warning("undoing the Django instrumentation failed", exc_info=True)


# --- Celery ---------------------------------------------------------------------------------------------


_CELERY_INSTRUMENTATION = "opentelemetry.instrumentation.celery"


def _setup_celery(state: Instrumentation) -> None:
    """Instrument Celery when the application imports it (at once if it already has).

    A Django service that never imports Celery never loads it, even when it is installed. When Celery is
    first imported by the Celery instrumentation module itself (an application importing it directly),
    the hook on that module finishes the job once it has loaded."""
    if importlib.util.find_spec("celery") is None:
        return
    state.celery_armed = True

    def on_import(_module: Any) -> None:
        with _lock:  # not while another thread is in instrument() / uninstrument()
            if not state.celery_armed:  # done already, or uninstrumented before the application imported Celery
                return
            loading = sys.modules.get(_CELERY_INSTRUMENTATION)
            if loading is not None and not hasattr(loading, "CeleryInstrumentor"):
                return  # that module is importing Celery right now: its own hook comes when it is complete
            state.celery_armed = False
            try:
                _instrument_celery(state)
            except Exception:
                log.warning("spanmeter could not instrument Celery", exc_info=True)

    if _CELERY_INSTRUMENTATION not in sys.modules:
        wrapt.register_post_import_hook(on_import, _CELERY_INSTRUMENTATION)
    wrapt.register_post_import_hook(on_import, "celery")


def _instrument_celery(state: Instrumentation) -> None:
    try:
        from celery import signals
        from opentelemetry.instrumentation.celery import CeleryInstrumentor
    except ImportError:
        return
    provider = state.provider
    instrumentor = CeleryInstrumentor()
    if not instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.instrument(tracer_provider=provider)
        state.celery_instrumented = True

    def on_worker_process_init(**_: Any) -> None:
        # Celery requires instrumenting inside each worker process; inherited state is reused, and the
        # exporter / batch thread are rebuilt for this pid on first use.
        try:
            if not CeleryInstrumentor().is_instrumented_by_opentelemetry:
                CeleryInstrumentor().instrument(tracer_provider=provider)
        except Exception:
            log.warning("spanmeter could not instrument this Celery worker process", exc_info=True)

    def on_worker_process_shutdown(**_: Any) -> None:
        if not state.flush():
            log.warning("not every span was flushed before the worker process exited")

    for signal_, handler in (
        (signals.worker_process_init, on_worker_process_init),
        (signals.worker_process_shutdown, on_worker_process_shutdown),
    ):
        signal_.connect(handler, weak=False)
        state.celery_handlers.append((signal_, handler))


def _teardown_celery(state: Instrumentation) -> None:
    state.celery_armed = False
    for signal_, handler in state.celery_handlers:
        signal_.disconnect(handler)
    if state.celery_instrumented:
        from opentelemetry.instrumentation.celery import CeleryInstrumentor

        CeleryInstrumentor().uninstrument()


# --- SIGTERM ----------------------------------------------------------------------------------------------


def _setup_sigterm(state: Instrumentation) -> None:
    if threading.current_thread() is not threading.main_thread():
        return
    previous = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum: int, frame: Any) -> None:
        state.flush()
        if callable(previous):
            previous(signum, frame)
        elif previous == signal.SIG_IGN:
            return
        else:  # the default: terminate, as if spanmeter were not here
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.raise_signal(signal.SIGTERM)

    try:
        signal.signal(signal.SIGTERM, on_sigterm)
    except (ValueError, OSError):
        return
    state.previous_sigterm = previous
    state.sigterm_handler = on_sigterm


def _teardown_sigterm(state: Instrumentation) -> None:
    if state.sigterm_handler is None or threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is state.sigterm_handler:
        signal.signal(signal.SIGTERM, state.previous_sigterm)
