"""The metrics port: ``/metrics``, ``/healthz`` and ``/readyz``.

``/metrics`` is prometheus_client's own ASGI application, so the exposition is the library's: the text
format, or OpenMetrics when the scraper asks for it (``Accept: application/openmetrics-text``), gzip when
it accepts gzip, and ``?name[]=`` filters. ``/healthz`` is 200 while the process runs; ``/readyz`` asks a
readiness check (a blocking database probe, run off the event loop) and is 200 or 503 with the reason.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, make_asgi_app

from .http_server import ThreadedServer

__all__ = ["HealthApp", "health_server"]


class HealthApp:
    def __init__(self, registry: CollectorRegistry, readiness: Callable[[], tuple[bool, str]]) -> None:
        self._metrics = make_asgi_app(registry)
        self._readiness = readiness

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        path = scope["path"]
        if path == "/metrics":
            await self._metrics(scope, receive, send)
            return
        if path == "/healthz":
            status, text = 200, "ok\n"
        elif path == "/readyz":
            ready, detail = await asyncio.to_thread(self._readiness)
            status, text = (200 if ready else 503), detail + "\n"
        else:
            status, text = 404, "not found: try /metrics, /healthz or /readyz\n"
        body = text.encode()
        headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def health_server(
    host: str, port: int, registry: CollectorRegistry, readiness: Callable[[], tuple[bool, str]]
) -> ThreadedServer:
    """Serve :class:`HealthApp` on ``host:port`` (0: a free port); started."""
    server = ThreadedServer(HealthApp(registry, readiness), "metrics", "SPANMETER_METRICS_PORT, --metrics-port")
    server.start(host, port)
    return server
