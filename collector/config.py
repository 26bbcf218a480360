"""Collector configuration: one frozen dataclass, built from ``SPANMETER_*`` variables and CLI flags.

``load_config(environ, overrides)`` validates every field at once and raises :class:`ConfigError` naming
each bad setting and how to fix it; after start-up nothing re-reads the environment.

| variable | default | meaning |
|---|---|---|
| ``SPANMETER_OTLP_ENDPOINT`` | ``127.0.0.1:4317`` | OTLP/gRPC listen address (HOST:PORT) |
| ``SPANMETER_OTLP_HTTP_ENDPOINT`` | ``127.0.0.1:4318`` | OTLP/HTTP listen address (HOST:PORT; ``none`` turns the HTTP door off) |
| ``SPANMETER_OTLP_HTTP_CORS_ORIGINS`` | unset: CORS off | browser origins allowed to POST spans (comma-separated, e.g. ``https://app.example.com``) |
| ``SPANMETER_METRICS_PORT`` | ``9464`` | Prometheus ``/metrics``, ``/healthz``, ``/readyz`` port (0: any free port) |
| ``SPANMETER_METRICS_HOST`` | host of the OTLP endpoint | address the metrics server binds |
| ``SPANMETER_DATABASE_URL`` | unset: embedded PostgreSQL | PostgreSQL URL (libpq or SQLAlchemy form) |
| ``SPANMETER_READ_DATABASE_URL`` | unset: read the primary | a hot standby of the ledger for reads that may lag: usage, invoice drafts, exports (see :mod:`spanmeter.billing.ledger.replica`); needs ``SPANMETER_DATABASE_URL`` |
| ``SPANMETER_READ_STALE_AFTER_SECONDS`` | ``60`` | a command that read the replica says so on stderr when its replay is further behind (or paused) |
| ``SPANMETER_DATA_DIR`` | ``./.spanmeter`` | where the embedded PostgreSQL keeps its data |
| ``SPANMETER_LEDGER_WRITE_TIMEOUT_SECONDS`` | ``5`` | a request not committed within this is answered UNAVAILABLE |
| ``SPANMETER_LEDGER_BATCH_MAX_ROWS`` | ``20000`` | most usage rows one group commit writes |
| ``SPANMETER_LEDGER_WRITERS`` | ``2`` | ledger connections writing in parallel |
| ``SPANMETER_PROCESSES`` | ``1`` | receiver processes sharing the OTLP port (``serve --processes``; 1..64): one per core, see the README's sizing |
| ``SPANMETER_ROLLUP_FOLD_INTERVAL_SECONDS`` | ``1`` | how often pending rollup deltas are folded into the rollups |
| ``SPANMETER_MAX_RECEIVE_MESSAGE_BYTES`` | ``16777216`` (16 MiB) | Export size limit, as sent and after decompression (both doors) |
| ``SPANMETER_MAX_INFLIGHT_REQUESTS`` | ``32`` | Export calls handled at once; more are answered UNAVAILABLE + RetryInfo |
| ``SPANMETER_MAX_INFLIGHT_SPANS`` | ``262144`` | spans held at once; beyond it UNAVAILABLE + RetryInfo |
| ``SPANMETER_AUTH_FILE`` | unset | producers file (TOML, see :mod:`.auth`): tokens, allowed services and meters |
| ``SPANMETER_TLS_CERT_FILE`` / ``SPANMETER_TLS_KEY_FILE`` | unset | serve OTLP over TLS with this certificate and key |
| ``SPANMETER_TLS_CLIENT_CA_FILE`` | unset | require client certificates signed by this CA (mTLS) |
| ``SPANMETER_INSECURE_LISTEN`` | ``false`` | allow a non-loopback listen address without authentication |
| ``SPANMETER_MAX_SPAN_DURATION_SECONDS`` | ``604800`` (7 d) | longer spans are rejected ``duration_too_long`` |
| ``SPANMETER_MAX_SPAN_AGE_SECONDS`` | ``2592000`` (30 d) | spans that ended earlier are rejected ``stale_timestamp`` |
| ``SPANMETER_MAX_CLOCK_SKEW_SECONDS`` | ``300`` | spans ending later than now + skew are ``future_timestamp`` |
| ``SPANMETER_PLAN_CODES`` | ``starter,growth,scale,platform`` | ``plan_code`` label values; others become ``other`` |
| ``SPANMETER_GPU_MODELS`` | ``a100,h100,h200,l4,l40s,t4`` | ``gpu_model`` label values (lower-cased); others ``other`` |
| ``SPANMETER_REJECTED_REQUEST_MAX_BYTES`` | ``1048576`` | bytes of an unparseable request kept |
| ``SPANMETER_SLI_MAX_SERIES`` | ``500`` | distinct (service, operation) pairs of the request SLIs; later ones become ``_overflow`` |
| ``SPANMETER_LOG_LEVEL`` | ``INFO`` | DEBUG, INFO, WARNING, ERROR |
| ``SPANMETER_LOG_FORMAT`` | ``text`` | ``text`` or ``json`` (one object per line) |
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spanmeter.billing.ledger.database import DatabaseUrlError, normalize_database_url

from .processors.usage import MeteringLimits

__all__ = ["CollectorConfig", "ConfigError", "listen_problem", "load_config", "parse_endpoint"]

_NONE = object()  # an explicit "none" (a door turned off), told apart from "not set"


class ConfigError(ValueError):
    """Every bad setting, one per line, each with how to fix it."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid configuration:\n" + "\n".join(f"  - {p}" for p in problems))


@dataclass(frozen=True)
class CollectorConfig:
    otlp_endpoint: str = "127.0.0.1:4317"
    otlp_http_endpoint: str | None = "127.0.0.1:4318"  # None: no HTTP door
    otlp_http_cors_origins: tuple[str, ...] = ()
    metrics_port: int = 9464
    metrics_host: str | None = None
    database_url: str | None = None
    read_database_url: str | None = None
    read_stale_after_seconds: float = 60.0
    data_dir: Path = Path(".spanmeter")
    ledger_write_timeout_seconds: float = 5.0
    billing_metrics_interval_seconds: float = 60.0
    ledger_batch_max_rows: int = 20_000
    ledger_writers: int = 2
    rollup_fold_interval_seconds: float = 1.0
    processes: int = 1
    # a request must be one the ledger commits well within the write timeout: 65,536 rows take ~1.5 s on
    # the 2-core reference machine; 16 MiB is 65,536 spans of ~256 bytes (a billable span is ~300 bytes)
    max_receive_message_bytes: int = 16 * 1024 * 1024
    max_spans_per_request: int = 65_536
    max_inflight_requests: int = 32
    max_inflight_spans: int = 262_144
    auth_file: Path | None = None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_client_ca_file: Path | None = None
    insecure_listen: bool = False
    allow_owner: bool = False
    max_span_duration_seconds: int = 7 * 86_400
    max_span_age_seconds: int = 30 * 86_400
    max_clock_skew_seconds: int = 300
    plan_codes: tuple[str, ...] = ("starter", "growth", "scale", "platform")
    gpu_models: tuple[str, ...] = ("a100", "h100", "h200", "l4", "l40s", "t4")
    rejected_request_max_bytes: int = 1024 * 1024
    sli_max_series: int = 500
    log_level: str = "INFO"
    log_format: str = "text"

    @property
    def otlp_host(self) -> str:
        return parse_endpoint(self.otlp_endpoint)[0]

    @property
    def otlp_port(self) -> int:
        return parse_endpoint(self.otlp_endpoint)[1]

    @property
    def otlp_http_host(self) -> str | None:
        return parse_endpoint(self.otlp_http_endpoint)[0] if self.otlp_http_endpoint else None

    @property
    def otlp_http_port(self) -> int | None:
        return parse_endpoint(self.otlp_http_endpoint)[1] if self.otlp_http_endpoint else None

    @property
    def metrics_bind_host(self) -> str:
        return self.metrics_host or self.otlp_host

    @property
    def authenticated(self) -> bool:
        """True when callers must prove who they are (a producers file, or mTLS client certificates)."""
        return self.auth_file is not None or self.tls_client_ca_file is not None

    @property
    def limits(self) -> MeteringLimits:
        return MeteringLimits(
            max_span_duration_seconds=self.max_span_duration_seconds,
            max_span_age_seconds=self.max_span_age_seconds,
            max_clock_skew_seconds=self.max_clock_skew_seconds,
        )


def parse_endpoint(endpoint: str) -> tuple[str, int]:
    host, sep, port = endpoint.rpartition(":")
    if not sep or not host or "/" in host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(endpoint)  # a URL (http://…) is not a listen address: HOST:PORT
    return host.strip("[]"), int(port)


# field name -> (environment variable, kind)
_ENV: dict[str, tuple[str, str]] = {
    "otlp_endpoint": ("SPANMETER_OTLP_ENDPOINT", "endpoint"),
    "otlp_http_endpoint": ("SPANMETER_OTLP_HTTP_ENDPOINT", "endpoint_or_none"),
    "otlp_http_cors_origins": ("SPANMETER_OTLP_HTTP_CORS_ORIGINS", "origins"),
    "metrics_port": ("SPANMETER_METRICS_PORT", "port"),
    "metrics_host": ("SPANMETER_METRICS_HOST", "str"),
    "database_url": ("SPANMETER_DATABASE_URL", "database_url"),
    "read_database_url": ("SPANMETER_READ_DATABASE_URL", "read_database_url"),
    "read_stale_after_seconds": ("SPANMETER_READ_STALE_AFTER_SECONDS", "positive_float"),
    "data_dir": ("SPANMETER_DATA_DIR", "path"),
    "ledger_write_timeout_seconds": ("SPANMETER_LEDGER_WRITE_TIMEOUT_SECONDS", "positive_float"),
    "billing_metrics_interval_seconds": ("SPANMETER_BILLING_METRICS_INTERVAL_SECONDS", "positive_float"),
    "ledger_batch_max_rows": ("SPANMETER_LEDGER_BATCH_MAX_ROWS", "positive_int"),
    "ledger_writers": ("SPANMETER_LEDGER_WRITERS", "positive_int"),
    "rollup_fold_interval_seconds": ("SPANMETER_ROLLUP_FOLD_INTERVAL_SECONDS", "positive_float"),
    "processes": ("SPANMETER_PROCESSES", "processes"),
    "max_receive_message_bytes": ("SPANMETER_MAX_RECEIVE_MESSAGE_BYTES", "positive_int"),
    "max_spans_per_request": ("SPANMETER_MAX_SPANS_PER_REQUEST", "positive_int"),
    "max_inflight_requests": ("SPANMETER_MAX_INFLIGHT_REQUESTS", "positive_int"),
    "max_inflight_spans": ("SPANMETER_MAX_INFLIGHT_SPANS", "positive_int"),
    "auth_file": ("SPANMETER_AUTH_FILE", "file"),
    "tls_cert_file": ("SPANMETER_TLS_CERT_FILE", "file"),
    "tls_key_file": ("SPANMETER_TLS_KEY_FILE", "file"),
    "tls_client_ca_file": ("SPANMETER_TLS_CLIENT_CA_FILE", "file"),
    "insecure_listen": ("SPANMETER_INSECURE_LISTEN", "bool"),
    "allow_owner": ("SPANMETER_ALLOW_OWNER", "bool"),
    "max_span_duration_seconds": ("SPANMETER_MAX_SPAN_DURATION_SECONDS", "positive_int"),
    "max_span_age_seconds": ("SPANMETER_MAX_SPAN_AGE_SECONDS", "positive_int"),
    "max_clock_skew_seconds": ("SPANMETER_MAX_CLOCK_SKEW_SECONDS", "nonnegative_int"),
    "plan_codes": ("SPANMETER_PLAN_CODES", "list"),
    "gpu_models": ("SPANMETER_GPU_MODELS", "list"),
    "rejected_request_max_bytes": ("SPANMETER_REJECTED_REQUEST_MAX_BYTES", "positive_int"),
    "sli_max_series": ("SPANMETER_SLI_MAX_SERIES", "positive_int"),
    "log_level": ("SPANMETER_LOG_LEVEL", "log_level"),
    "log_format": ("SPANMETER_LOG_FORMAT", "log_format"),
}


def _parse(kind: str, raw: Any) -> Any:
    """Parse one raw value (str from the environment, or an already typed CLI value)."""
    if raw is None:
        return None
    text = str(raw).strip()
    if kind == "endpoint":
        parse_endpoint(text)
        return text
    if kind == "endpoint_or_none":
        if text.lower() in {"none", "off"}:
            return _NONE
        parse_endpoint(text)
        return text
    if kind == "origins":
        origins = tuple(item.strip().rstrip("/") for item in text.split(",") if item.strip())
        for origin in origins:
            if origin != "*" and not re.fullmatch(r"https?://[^/\s]+", origin):
                raise ValueError(f"{origin!r} is not an origin")
        return origins
    if kind == "port":
        value = int(text)
        if not 0 <= value <= 65535:
            raise ValueError("a port is 0..65535")
        return value
    if kind == "positive_int":
        value = int(text)
        if value <= 0:
            raise ValueError("must be > 0")
        return value
    if kind == "processes":
        value = int(text)
        if not 1 <= value <= 64:
            raise ValueError("must be 1..64")
        return value
    if kind == "nonnegative_int":
        value = int(text)
        if value < 0:
            raise ValueError("must be >= 0")
        return value
    if kind == "positive_float":
        value = float(text)
        if not value > 0:
            raise ValueError("must be > 0")
        return value
    if kind == "path":
        return Path(text)
    if kind == "file":
        if not Path(text).is_file():
            raise ValueError("no such file")
        return Path(text)
    if kind == "bool":
        if isinstance(raw, bool):
            return raw
        if text.lower() in {"1", "true", "yes", "on"}:
            return True
        if text.lower() in {"0", "false", "no", "off"}:
            return False
        raise ValueError("not a boolean")
    if kind == "list":
        items = tuple(item.strip().lower() for item in text.split(",") if item.strip())
        if "other" in items:
            raise ValueError("'other' is reserved for values outside the list")
        return items
    if kind in ("database_url", "read_database_url"):
        normalize_database_url(text)  # raises DatabaseUrlError with libpq's reason
        return text
    if kind == "log_level":
        if text.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ValueError("one of DEBUG, INFO, WARNING, ERROR")
        return text.upper()
    if kind == "log_format":
        if text.lower() not in {"text", "json"}:
            raise ValueError("text or json")
        return text.lower()
    return text or None


_HOW = {
    "endpoint": "write HOST:PORT, e.g. 127.0.0.1:4317",
    "endpoint_or_none": "write HOST:PORT, e.g. 127.0.0.1:4318, or none to turn the OTLP/HTTP door off",
    "origins": "write comma-separated origins, e.g. https://app.example.com,http://localhost:3000",
    "port": "write a port number 0..65535",
    "positive_int": "write a whole number greater than 0",
    "nonnegative_int": "write a whole number, 0 or more",
    "positive_float": "write a number of seconds greater than 0",
    "processes": "write a whole number from 1 to 64 (one receiver process per core is the usual choice)",
    "list": "write comma-separated values, e.g. starter,growth",
    "database_url": "write e.g. postgresql://user:password@host:5432/spanmeter, or unset it for the embedded database",
    "read_database_url": "write the hot standby's URL, e.g. postgresql://user:password@replica:5432/spanmeter, or "
    "unset it to read the primary",
    "log_level": "write DEBUG, INFO, WARNING or ERROR",
    "log_format": "write text or json",
    "file": "give the path of an existing, readable file",
    "bool": "write true or false",
}


def load_config(environ: Mapping[str, str], overrides: Mapping[str, Any] | None = None) -> CollectorConfig:
    """Build the configuration: CLI ``overrides`` (non-None values) win over ``environ``."""
    values: dict[str, Any] = {}
    problems: list[str] = []
    overrides = overrides or {}
    for name, (variable, kind) in _ENV.items():
        from_cli = overrides.get(name) is not None
        raw = overrides[name] if from_cli else environ.get(variable)
        if raw is None or (isinstance(raw, str) and raw.strip() == ""):
            continue
        source = f"--{name.replace('_', '-')}" if from_cli else variable
        try:
            values[name] = _parse(kind, raw)
        except (ValueError, DatabaseUrlError) as exc:
            detail = f" ({exc})" if str(exc) and str(exc) != str(raw) else ""
            problems.append(f"{source}={raw!r} is invalid{detail}: {_HOW.get(kind, 'check the value')}")
    if problems:
        raise ConfigError(problems)
    values = {name: (None if value is _NONE else value) for name, value in values.items()}
    config = CollectorConfig(**values)
    if (config.tls_cert_file is None) != (config.tls_key_file is None):
        problems.append("SPANMETER_TLS_CERT_FILE and SPANMETER_TLS_KEY_FILE go together: set both, or neither")
    if config.read_database_url and not config.database_url:
        problems.append(
            "SPANMETER_READ_DATABASE_URL (--read-database-url) names a replica of a configured primary: set "
            "SPANMETER_DATABASE_URL (--database-url) too (the embedded database has no replicas), or unset it"
        )
    if config.tls_client_ca_file is not None and config.tls_cert_file is None:
        problems.append("SPANMETER_TLS_CLIENT_CA_FILE (mTLS) needs SPANMETER_TLS_CERT_FILE and SPANMETER_TLS_KEY_FILE")
    if problems:
        raise ConfigError(problems)
    if config.otlp_http_port and (config.otlp_http_host, config.otlp_http_port) == (config.otlp_host, config.otlp_port):
        raise ConfigError(
            [
                f"SPANMETER_OTLP_HTTP_ENDPOINT={config.otlp_http_endpoint} is the OTLP/gRPC endpoint too: pick another "
                "port (4318 is OTLP/HTTP's), or none to turn the HTTP door off"
            ]
        )
    if config.metrics_port and config.metrics_port == config.otlp_port and config.metrics_bind_host == config.otlp_host:
        raise ConfigError(
            [f"SPANMETER_METRICS_PORT={config.metrics_port} is the OTLP port too: pick another metrics port"]
        )
    return config


def listen_problem(config: CollectorConfig) -> str | None:
    """Why serving ``config`` as given would be unsafe, or None.

    Without authentication, anyone who can reach the OTLP port can bill any account; so an unauthenticated
    collector listens on loopback only, unless the operator says ``--insecure-listen`` (for example behind
    an OpenTelemetry Collector on a private network).
    """
    if config.authenticated or config.insecure_listen:
        return None
    for endpoint in (config.otlp_endpoint, config.otlp_http_endpoint):
        if endpoint is None:
            continue
        host = parse_endpoint(endpoint)[0]
        try:
            loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            break
    else:
        return None
    return (
        f"refusing to listen on {endpoint} without authentication: anyone who can reach it could "
        "bill any account. Configure producers (SPANMETER_AUTH_FILE) or mTLS (SPANMETER_TLS_CLIENT_CA_FILE), "
        "listen on 127.0.0.1, or pass --insecure-listen (SPANMETER_INSECURE_LISTEN=true) if a private "
        "network stands in front of it."
    )
