"""An ASGI application served by uvicorn in a background thread: the OTLP/HTTP door and the metrics port.

spanmeter's processes are threaded (gRPC's server, the ledger writers), so each HTTP server runs uvicorn's
event loop in a thread of its own. The socket is bound here, so a busy port fails at ``start()`` with the
setting named, port 0 gives a free port, and ``reuse_port`` lets the receiver processes of
``serve --processes N`` share one port (``SO_REUSEPORT``). uvicorn does the HTTP; nothing here parses it.
"""

from __future__ import annotations

import socket
import threading
from typing import Any

import uvicorn

__all__ = ["ThreadedServer", "bind"]


def bind(
    host: str, port: int, door: str, setting: str, *, reuse_port: bool = False, reuse_addr: bool = True
) -> socket.socket:
    """A TCP socket bound to ``host:port`` (0: a free port); a failure names the door, its setting and the fix. ``reuse_port``: shared with sibling processes (``SO_REUSEPORT``)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    if reuse_addr:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(
            f"cannot listen for {door} on {host}:{port} ({setting}): {exc.strerror}; pick a free port"
        ) from None
    return sock


class ThreadedServer:
    def __init__(self, app: Any, name: str, setting: str, graceful_seconds: float = 5.0, **options: Any) -> None:
        """``name``: for messages and the thread; ``setting``: the variable that chose the address (named
        when it cannot be used); ``options``: more ``uvicorn.Config`` options (TLS files)."""
        self._app = app
        self._name = name
        self._setting = setting
        self._graceful_seconds = graceful_seconds
        self._options = options
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.port: int | None = None

    def start(self, host: str, port: int, reuse_port: bool = False) -> int:
        """Bind, start serving, return the bound port."""
        sock = bind(host, port, self._name, self._setting, reuse_port=reuse_port)
        sock.listen(1024)
        sock.setblocking(False)
        server = uvicorn.Server(
            uvicorn.Config(
                self._app,
                lifespan="off",
                log_level="warning",
                access_log=False,
                timeout_graceful_shutdown=max(1, round(self._graceful_seconds)),
                **self._options,
            )
        )
        server.install_signal_handlers = lambda: None  # type: ignore[method-assign]  # the process owns signals
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name=self._name, daemon=True)
        self._server, self._thread = server, thread
        thread.start()
        while not server.started:
            if not thread.is_alive():
                raise OSError(f"the {self._name} server on {host}:{port} did not start (see the log above)")
            thread.join(0.01)
        self.port = sock.getsockname()[1]
        return self.port

    def shutdown(self, grace_seconds: float | None = None) -> None:
        """Stop accepting; requests in flight finish (up to the graceful timeout)."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join((grace_seconds if grace_seconds is not None else self._graceful_seconds) + 1)
        self._server = self._thread = None
