"""Collector configuration: one frozen dataclass, built from ``SPANMETER_*`` variables and CLI flags.

``load_config(environ, overrides)`` validates every field at once and raises :class:`ConfigError` naming
each bad setting and how to fix it; after start-up nothing re-reads the environment.

| variable | default | meaning |
|---|---|---|
| ``SPANMETER_OTLP_ENDPOINT`` | ``127.0.0.1:4317`` | OTLP/gRPC listen address (HOST:PORT) |
| ``SPANMETER_METRICS_PORT`` | ``9464`` | Prometheus ``/metrics``, ``/healthz``, ``/readyz`` port (0 disables) |
| ``SPANMETER_METRICS_HOST`` | host of the OTLP endpoint | address the metrics server binds |
| ``SPANMETER_DATABASE_URL`` | unset: embedded PostgreSQL | PostgreSQL URL (libpq or SQLAlchemy form) |
| ``SPANMETER_DATA_DIR`` | ``./.spanmeter`` | where the embedded PostgreSQL keeps its data |
| ``SPANMETER_LEDGER_WRITE_TIMEOUT_SECONDS`` | ``5`` | a request not committed within this is answered UNAVAILABLE |
| ``SPANMETER_LEDGER_BATCH_MAX_ROWS`` | ``20000`` | most usage rows one group commit writes |
| ``SPANMETER_LEDGER_WRITERS`` | ``2`` | ledger connections writing in parallel |
| ``SPANMETER_MAX_RECEIVE_MESSAGE_BYTES`` | ``67108864`` (64 MiB) | Export size limit, after decompression |
| ``SPANMETER_GRPC_MAX_WORKERS`` | ``16`` | concurrent Export handlers |
| ``SPANMETER_MAX_SPAN_DURATION_SECONDS`` | ``604800`` (7 d) | longer spans are rejected ``duration_too_long`` |
| ``SPANMETER_MAX_SPAN_AGE_SECONDS`` | ``2592000`` (30 d) | spans that ended earlier are rejected ``stale_timestamp`` |
| ``SPANMETER_MAX_CLOCK_SKEW_SECONDS`` | ``300`` | spans ending later than now + skew are ``future_timestamp`` |
| ``SPANMETER_PLAN_CODES`` | ``starter,growth,scale,platform`` | ``plan_code`` label values; others become ``other`` |
| ``SPANMETER_GPU_MODELS`` | ``a100,h100,h200,l4,l40s,t4`` | ``gpu_model`` label values (lower-cased); others ``other`` |
| ``SPANMETER_REJECTED_REQUEST_MAX_BYTES`` | ``1048576`` | bytes of an unparseable request kept |
| ``SPANMETER_LOG_LEVEL`` | ``INFO`` | DEBUG, INFO, WARNING, ERROR |
| ``SPANMETER_LOG_FORMAT`` | ``text`` | ``text`` or ``json`` (one object per line) |
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spanmeter.billing.ledger.database import DatabaseUrlError, normalize_database_url

from .processors.usage import MeteringLimits

__all__ = ["CollectorConfig", "ConfigError", "load_config", "parse_endpoint"]


class ConfigError(ValueError):
    """Every bad setting, one per line, each with how to fix it."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid configuration:\n" + "\n".join(f"  - {p}" for p in problems))


@dataclass(frozen=True)
class CollectorConfig:
    otlp_endpoint: str = "127.0.0.1:4317"
    metrics_port: int = 9464
    metrics_host: str | None = None
    database_url: str | None = None
    data_dir: Path = Path(".spanmeter")
    ledger_write_timeout_seconds: float = 5.0
    ledger_batch_max_rows: int = 20_000
    ledger_writers: int = 2
    max_receive_message_bytes: int = 64 * 1024 * 1024
    grpc_max_workers: int = 16
    max_span_duration_seconds: int = 7 * 86_400
    max_span_age_seconds: int = 30 * 86_400
    max_clock_skew_seconds: int = 300
    plan_codes: tuple[str, ...] = ("starter", "growth", "scale", "platform")
    gpu_models: tuple[str, ...] = ("a100", "h100", "h200", "l4", "l40s", "t4")
    rejected_request_max_bytes: int = 1024 * 1024
    log_level: str = "INFO"
    log_format: str = "text"

    @property
    def otlp_host(self) -> str:
        return parse_endpoint(self.otlp_endpoint)[0]

    @property
    def otlp_port(self) -> int:
        return parse_endpoint(self.otlp_endpoint)[1]

    @property
    def metrics_bind_host(self) -> str:
        return self.metrics_host or self.otlp_host

    @property
    def limits(self) -> MeteringLimits:
        return MeteringLimits(
            max_span_duration_seconds=self.max_span_duration_seconds,
            max_span_age_seconds=self.max_span_age_seconds,
            max_clock_skew_seconds=self.max_clock_skew_seconds,
        )


def parse_endpoint(endpoint: str) -> tuple[str, int]:
    host, sep, port = endpoint.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(endpoint)
    return host.strip("[]"), int(port)


# field name -> (environment variable, kind)
_ENV: dict[str, tuple[str, str]] = {
    "otlp_endpoint": ("SPANMETER_OTLP_ENDPOINT", "endpoint"),
    "metrics_port": ("SPANMETER_METRICS_PORT", "port"),
    "metrics_host": ("SPANMETER_METRICS_HOST", "str"),
    "database_url": ("SPANMETER_DATABASE_URL", "database_url"),
    "data_dir": ("SPANMETER_DATA_DIR", "path"),
    "ledger_write_timeout_seconds": ("SPANMETER_LEDGER_WRITE_TIMEOUT_SECONDS", "positive_float"),
    "ledger_batch_max_rows": ("SPANMETER_LEDGER_BATCH_MAX_ROWS", "positive_int"),
    "ledger_writers": ("SPANMETER_LEDGER_WRITERS", "positive_int"),
    "max_receive_message_bytes": ("SPANMETER_MAX_RECEIVE_MESSAGE_BYTES", "positive_int"),
    "grpc_max_workers": ("SPANMETER_GRPC_MAX_WORKERS", "positive_int"),
    "max_span_duration_seconds": ("SPANMETER_MAX_SPAN_DURATION_SECONDS", "positive_int"),
    "max_span_age_seconds": ("SPANMETER_MAX_SPAN_AGE_SECONDS", "positive_int"),
    "max_clock_skew_seconds": ("SPANMETER_MAX_CLOCK_SKEW_SECONDS", "nonnegative_int"),
    "plan_codes": ("SPANMETER_PLAN_CODES", "list"),
    "gpu_models": ("SPANMETER_GPU_MODELS", "list"),
    "rejected_request_max_bytes": ("SPANMETER_REJECTED_REQUEST_MAX_BYTES", "positive_int"),
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
    if kind == "list":
        items = tuple(item.strip().lower() for item in text.split(",") if item.strip())
        if "other" in items:
            raise ValueError("'other' is reserved for values outside the list")
        return items
    if kind == "database_url":
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
    "port": "write a port number 0..65535",
    "positive_int": "write a whole number greater than 0",
    "nonnegative_int": "write a whole number, 0 or more",
    "positive_float": "write a number of seconds greater than 0",
    "list": "write comma-separated values, e.g. starter,growth",
    "database_url": "write e.g. postgresql://user:password@host:5432/spanmeter, or unset it for the embedded database",
    "log_level": "write DEBUG, INFO, WARNING or ERROR",
    "log_format": "write text or json",
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
    config = CollectorConfig(**values)
    if config.metrics_port and config.metrics_port == config.otlp_port and config.metrics_bind_host == config.otlp_host:
        raise ConfigError(
            [f"SPANMETER_METRICS_PORT={config.metrics_port} is the OTLP port too: pick another metrics port"]
        )
    return config
