"""The docpipe settings behind an application that set up its own TracerProvider first."""

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider

trace.set_tracer_provider(TracerProvider(resource=Resource.create({"service.name": "app-owned-provider"})))

from spanmeter.demo.settings import *  # noqa: E402, F403
