"""Producer authentication and authorization.

A metering endpoint anyone can reach lets anyone bill anyone. With ``SPANMETER_AUTH_FILE`` set, every
Export call must identify a *producer*, by a bearer token (gRPC metadata ``authorization: Bearer …``) or
by its mTLS client certificate's common name, and each producer may only send spans of the services and
meters it is allowed. The file is TOML::

    # /etc/spanmeter/producers.toml
    [[producer]]
    name = "docs-workers"
    # sha256 of each valid token (`spanmeter auth hash-token`); two entries during a rotation
    token_sha256 = ["9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"]
    services = ["docs-worker", "docs-api"]      # allowed service.name values; ["*"] for any
    meters = ["worker_seconds", "gpu_seconds"]  # allowed meters; ["*"] for any
    accounts = ["acct-docs", "docs-*"]          # accounts it may bill: ids, or prefixes ending in *
    tls_common_names = ["docs-workers.internal"]  # optional: mTLS identities of this producer

- A request without valid credentials is answered UNAUTHENTICATED (counted, logged, nothing stored).
- A span whose ``service.name`` or meters are outside its producer's allow-list, or that bills an account
  outside its ``accounts``, is rejected with reason ``unauthorized_producer``: kept in ``rejected_spans``
  and counted, like every other rejection.
- ``accounts`` is optional, and its absence means *any account* (logged as a warning at every load):
  a producer that sends for many tenants (a shared platform service, an OpenTelemetry Collector in
  front of them) would otherwise need every account listed. Give every producer that serves a known set
  of tenants its list; ``["*"]`` says "any" explicitly and silences the warning.
- Tokens are stored only as SHA-256 hashes. Rotation without restart: add the new token's hash, roll the
  producers over, remove the old hash. The file is re-read when it changes (checked every 2 s) and on
  SIGHUP; a file that does not parse is refused with a log line and the previous producers stay in force.

Attribution never comes from the request's gRPC metadata or any inbound baggage: only from span and
resource attributes, which only authenticated producers can send.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import tomllib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .processors.meters import METER_CODES, SUBSET_OF

__all__ = ["AuthConfigError", "Authenticator", "Producer", "ProducerRegistry", "hash_token", "load_producers"]

log = logging.getLogger(__name__)
ANY = "*"


class AuthConfigError(ValueError):
    pass


def hash_token(token: str) -> str:
    return hashlib.sha256(token.strip().encode()).hexdigest()


@dataclass(frozen=True)
class Producer:
    name: str
    services: frozenset[str] | None  # None: any service
    meters: frozenset[str] | None  # None: any meter
    # None: any account. Otherwise exact account ids, and prefixes written with a trailing "*" ("team-a-*")
    accounts: frozenset[str] | None = None

    def allows(self, service_name: str | None, meter_codes: Iterable[str]) -> bool:
        if self.services is not None and (service_name is None or service_name not in self.services):
            return False
        return self.meters is None or all(code in self.meters for code in meter_codes)

    def allows_account(self, account_id: str | None) -> bool:
        """May this producer bill ``account_id``? (None, no account: the span is unattributed anyway.)"""
        if self.accounts is None or account_id is None or account_id in self.accounts:
            return True
        return any(entry.endswith("*") and account_id.startswith(entry[:-1]) for entry in self.accounts)


@dataclass(frozen=True)
class ProducerRegistry:
    by_token_hash: dict[str, Producer]
    by_common_name: dict[str, Producer]

    def by_token(self, token: str) -> Producer | None:
        return self.by_token_hash.get(hash_token(token))

    def by_name(self, name: str) -> Producer | None:
        """The producer called ``name`` in the file (what ``rejected_spans.producer`` records), if still there."""
        for producer in (*self.by_token_hash.values(), *self.by_common_name.values()):
            if producer.name == name:
                return producer
        return None


def _names(
    entry: dict, key: str, where: str, problems: list[str], known: Sequence[str] | None = None
) -> frozenset[str] | None:
    values = entry.get(key)
    if not isinstance(values, list) or not values or not all(isinstance(v, str) and v for v in values):
        problems.append(f'{where}: {key} must be a non-empty list of strings (use ["*"] for any)')
        return frozenset()
    if ANY in values:
        return None
    if known is not None:
        unknown = sorted(set(values) - set(known))
        if unknown:
            problems.append(f"{where}: unknown {key} {', '.join(unknown)} (known: {', '.join(known)})")
    return frozenset(values)


def _with_subsets(meters: frozenset[str] | None) -> frozenset[str] | None:
    """A producer allowed ``input_tokens`` may bill ``cache_read_tokens`` (a subset of that count), and so on:
    producers files written before the subset meters existed keep billing what they billed."""
    if meters is None:
        return None
    return meters | {subset for subset, parent in SUBSET_OF.items() if parent in meters}


def load_producers(path: Path) -> ProducerRegistry:
    try:
        document = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise AuthConfigError(f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise AuthConfigError(f"{path} is not UTF-8 text: {exc.reason} at byte {exc.start}") from None
    except tomllib.TOMLDecodeError as exc:
        raise AuthConfigError(f"{path} is not valid TOML: {exc}") from None
    entries = document.get("producer")
    if not isinstance(entries, list) or not entries or not all(isinstance(e, dict) for e in entries):
        raise AuthConfigError(f"{path}: expected one or more [[producer]] tables")
    problems: list[str] = []
    by_hash: dict[str, Producer] = {}
    by_cn: dict[str, Producer] = {}
    for number, entry in enumerate(entries, start=1):
        name = entry.get("name")
        where = f"{path}: producer {number}" + (f" ({name})" if isinstance(name, str) else "")
        if not isinstance(name, str) or not name:
            problems.append(f"{where}: name is required")
            continue
        producer = Producer(
            name=name,
            services=_names(entry, "services", where, problems),
            meters=_with_subsets(_names(entry, "meters", where, problems, known=METER_CODES)),
            accounts=_names(entry, "accounts", where, problems) if "accounts" in entry else None,
        )
        if "accounts" not in entry:
            log.warning(
                "%s may bill any account: give it accounts = [...] (ids, or prefixes ending in *) to limit it",
                where,
            )
        hashes = entry.get("token_sha256", [])
        names = entry.get("tls_common_names", [])
        if not isinstance(hashes, list) or not isinstance(names, list):
            problems.append(f"{where}: token_sha256 and tls_common_names are lists")
            continue
        if not hashes and not names:
            problems.append(f"{where}: give token_sha256 or tls_common_names")
        for digest in hashes:
            if not isinstance(digest, str) or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
                problems.append(
                    f"{where}: token_sha256 entries are 64 lower-case hex digits (`spanmeter auth hash-token`)"
                )
            elif digest in by_hash:
                problems.append(f"{where}: a token hash is also given to {by_hash[digest].name}")
            else:
                by_hash[digest] = producer
        for common_name in names:
            if not isinstance(common_name, str) or not common_name:
                problems.append(f"{where}: tls_common_names entries are non-empty strings")
            elif common_name in by_cn:
                problems.append(f"{where}: certificate name {common_name!r} is also given to {by_cn[common_name].name}")
            else:
                by_cn[common_name] = producer
    if problems:
        raise AuthConfigError("\n".join(problems))
    return ProducerRegistry(by_hash, by_cn)


class Authenticator:
    """Identifies the producer of a call; reloads the producers file when it changes."""

    def __init__(
        self,
        path: Path,
        reload_interval_seconds: float = 2.0,
        on_reload: Callable[[bool], None] = lambda ok: None,
    ) -> None:
        self.path = Path(path)
        self._on_reload = on_reload
        self._interval = reload_interval_seconds
        self._registry = load_producers(self.path)  # fail at start-up, with the reason
        self._stamp = self._file_stamp()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def _file_stamp(self) -> tuple[float, int] | None:
        try:
            stat = self.path.stat()
        except OSError:
            return None
        return (stat.st_mtime, stat.st_size)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._watch, name="auth-reload", daemon=True)
        self._thread.start()

    def shutdown(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def _watch(self) -> None:
        while not self._stop.wait(self._interval):
            if self._file_stamp() != self._stamp:
                self.reload()

    def reload(self) -> bool:
        with self._lock:
            stamp = self._file_stamp()
            try:
                registry = load_producers(self.path)
            except Exception as exc:  # never let a bad file stop the watcher or the process (SIGHUP)
                self._stamp = stamp
                self._on_reload(False)
                log.error("producers file not reloaded, the previous producers stay in force: %s", exc)
                return False
            self._registry = registry
            self._stamp = stamp
            self._on_reload(True)
            log.info(
                "producers file reloaded: %d tokens, %d certificate names",
                len(registry.by_token_hash),
                len(registry.by_common_name),
            )
            return True

    def identify(self, metadata: Sequence[tuple[str, str | bytes]], common_names: Sequence[str]) -> Producer | None:
        registry = self._registry
        for key, value in metadata:
            if key == "authorization":
                text = value.decode() if isinstance(value, bytes) else value
                scheme, _, token = text.strip().partition(" ")
                if scheme.lower() == "bearer" and token.strip():
                    producer = registry.by_token(token)
                    if producer is not None:
                        return producer
        for common_name in common_names:
            producer = registry.by_common_name.get(common_name)
            if producer is not None:
                return producer
        return None
