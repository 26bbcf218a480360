"""Instrumentation configuration: standard ``OTEL_*`` variables, plus a few ``SPANMETER_*`` ones.

The OpenTelemetry SDK and exporter read their own variables (``OTEL_SERVICE_NAME``,
``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``_HEADERS`` / ``_CERTIFICATE``,
``OTEL_TRACES_SAMPLER`` / ``_ARG``, ``OTEL_BSP_*``, ``OTEL_SDK_DISABLED``); spanmeter adds:

| variable | default | meaning |
|---|---|---|
| ``SPANMETER_SERVICE_VERSION`` | unset | ``service.version`` unless ``OTEL_RESOURCE_ATTRIBUTES`` sets it |
| ``SPANMETER_ENVIRONMENT`` | unset | ``deployment.environment.name`` unless ``OTEL_RESOURCE_ATTRIBUTES`` sets it |
| ``SPANMETER_TRUSTED_HEADERS`` | ``false`` | the default resolver reads ``X-Spanmeter-*`` request headers (set them only in a gateway that strips them from client requests) |
| ``SPANMETER_ATTRIBUTION_RESOLVER`` | ``spanmeter.instrumentation.django:default_resolver`` | ``module:function`` deciding a request's attribution (the Django setting of the same name wins) |
| ``SPANMETER_INSTRUMENT_DJANGO`` | ``true`` | instrument Django when it is installed |
| ``SPANMETER_INSTRUMENT_CELERY`` | ``true`` | instrument Celery when it is installed |
| ``SPANMETER_FLUSH_TIMEOUT_MILLIS`` | ``5000`` | how long a SIGTERM or a Celery worker-process shutdown waits to flush spans |

Bad values fail at start-up, all named at once (:class:`InstrumentationConfigError`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["InstrumentationConfig", "InstrumentationConfigError", "load_instrumentation_config"]

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class InstrumentationConfigError(ValueError):
    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid spanmeter instrumentation settings:\n" + "\n".join(f"  - {p}" for p in problems))


@dataclass(frozen=True)
class InstrumentationConfig:
    sdk_disabled: bool = False
    service_version: str | None = None
    environment: str | None = None
    trusted_headers: bool = False
    attribution_resolver: str = "spanmeter.instrumentation.django:default_resolver"
    instrument_django: bool = True
    instrument_celery: bool = True
    flush_timeout_millis: int = 5000


def load_instrumentation_config(environ: Mapping[str, str] | None = None) -> InstrumentationConfig:
    env = os.environ if environ is None else environ
    problems: list[str] = []

    def flag(name: str, default: bool) -> bool:
        raw = env.get(name)
        if raw is None:
            return default
        value = raw.strip().lower()
        if value in _TRUE:
            return True
        if value in _FALSE:
            return False
        problems.append(f"{name}={raw!r}: use true or false")
        return default

    resolver = env.get("SPANMETER_ATTRIBUTION_RESOLVER") or InstrumentationConfig.attribution_resolver
    if ":" not in resolver:
        problems.append(f"SPANMETER_ATTRIBUTION_RESOLVER={resolver!r}: use module.path:function")
    timeout_raw = env.get("SPANMETER_FLUSH_TIMEOUT_MILLIS", "5000")
    try:
        timeout = int(timeout_raw)
        if timeout <= 0:
            raise ValueError
    except ValueError:
        problems.append(f"SPANMETER_FLUSH_TIMEOUT_MILLIS={timeout_raw!r}: use a positive whole number of ms")
        timeout = 5000
    config = InstrumentationConfig(
        sdk_disabled=flag("OTEL_SDK_DISABLED", False),
        service_version=env.get("SPANMETER_SERVICE_VERSION") or None,
        environment=env.get("SPANMETER_ENVIRONMENT") or None,
        trusted_headers=flag("SPANMETER_TRUSTED_HEADERS", False),
        attribution_resolver=resolver,
        instrument_django=flag("SPANMETER_INSTRUMENT_DJANGO", True),
        instrument_celery=flag("SPANMETER_INSTRUMENT_CELERY", True),
        flush_timeout_millis=timeout,
    )
    if problems:
        raise InstrumentationConfigError(problems)
    return config
