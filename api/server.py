"""Run the API: uvicorn (HTTP/1.1, TLS) over the FastAPI app, until SIGINT or SIGTERM.

Listening: loopback (``127.0.0.1:8080``) by default. Off loopback the bearer tokens would cross the network,
so another address needs TLS (``--tls-cert`` and ``--tls-key``) or an explicit ``--insecure-listen`` (TLS
terminated by a proxy in front, on a private network). The same rule as ``spanmeter serve``.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ListenError", "ServerSettings", "check_listen", "parse_listen", "run"]

log = logging.getLogger(__name__)


class ListenError(ValueError):
    """Bad --listen / TLS settings: the message names the flag and the fix."""


@dataclass(frozen=True)
class ServerSettings:
    host: str
    port: int
    tls_cert: Path | None = None
    tls_key: Path | None = None
    insecure_listen: bool = False


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not re.fullmatch(r"[0-9]{1,5}", port) or not 0 < int(port) < 65536:
        raise ListenError(f"--listen {text!r}: give HOST:PORT, e.g. 127.0.0.1:8080")
    return host.strip("[]"), int(port)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_listen(settings: ServerSettings) -> None:
    if (settings.tls_cert is None) != (settings.tls_key is None):
        raise ListenError("--tls-cert and --tls-key go together: give both, or neither")
    for flag, path in (("--tls-cert", settings.tls_cert), ("--tls-key", settings.tls_key)):
        if path is not None and not path.is_file():
            raise ListenError(f"{flag} {path}: no such file")
    if not _loopback(settings.host) and settings.tls_cert is None and not settings.insecure_listen:
        raise ListenError(
            f"--listen {settings.host}:{settings.port} is not loopback: bearer tokens would cross the network in "
            "clear. Give --tls-cert and --tls-key, or --insecure-listen (SPANMETER_INSECURE_LISTEN=true) when a "
            "TLS proxy on a private network fronts it, or listen on 127.0.0.1"
        )


def run(app: object, settings: ServerSettings) -> None:
    import uvicorn

    config = uvicorn.Config(
        app,  # type: ignore[arg-type]
        host=settings.host,
        port=settings.port,
        ssl_certfile=str(settings.tls_cert) if settings.tls_cert else None,
        ssl_keyfile=str(settings.tls_key) if settings.tls_key else None,
        log_level="warning",
        access_log=False,
        lifespan="off",
        server_header=False,
    )
    uvicorn.Server(config).run()
