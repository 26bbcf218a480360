"""The seam between the receiver and whatever stores usage: the Collector's consumer model.

A receiver knows only a :class:`UsageConsumer`: it hands over one request's metered usage as a
:class:`PendingWrite` and waits until it is durable. The consumer answers in one of three ways, like the
Collector's ``consumererror``:

- it returns: everything is committed; ``pending.refused`` lists the spans whose rows the store refused
  *permanently* (a value it can never accept): they were kept as rejects instead, and the receiver
  reports them in ``partial_success``; the rest of the request committed;
- it raises :class:`RetryableError`: nothing of the request is acknowledged; the receiver answers
  UNAVAILABLE with a RetryInfo and the client retries (idempotency keys make the retry exact);
- there is no third way: a consumer never drops usage silently.

:class:`spanmeter.collector.exporters.ledger.LedgerExporter` is the consumer ``spanmeter serve`` uses.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from spanmeter.billing.ledger.writer import RejectedRequestRow

from .processors.usage import Rejection, UsageEvent

__all__ = ["CompactRow", "EncodedRows", "PendingWrite", "RetryableError", "UsageConsumer"]

# What the store needs of a row besides its COPY text (the metrics after commit): (meter code, meter version,
# idempotency key, plan_code, label (the GPU model) or None, quantity as a decimal string, span end in ns).
CompactRow = tuple[str, int, str, str | None, str | None, str, int]


class RetryableError(Exception):
    """The usage was not committed, and may be later: the client must retry."""


@dataclass(frozen=True, eq=False)
class EncodedRows:
    """Usage rows the native core has already encoded: the ledger's COPY text (byte-identical to what
    :func:`spanmeter.billing.ledger.writer.encode_copy` makes of the same rows), one :data:`CompactRow` per
    row, and the full :class:`UsageEvent` objects on demand (only the rare path that isolates a row the
    ledger refuses needs them)."""

    copy_text: bytes
    compact: list[CompactRow]
    materialize: Callable[[], list[UsageEvent]]


@dataclass(eq=False)
class PendingWrite:
    """One request's usage on its way to the store, and what became of it."""

    rows: list[UsageEvent]  # the rows, unless ``encoded`` carries them
    rejections: list[Rejection]
    encoded: EncodedRows | None = None
    producer: str | None = None  # the authenticated producer's name, recorded on every row (None: none)
    rejected_request: RejectedRequestRow | None = None
    # the stored payload (resource, scope, span) of a row's span, for a row the store refuses permanently
    span_payload: Callable[[UsageEvent], bytes] | None = None
    received_monotonic: float = field(default_factory=time.monotonic)
    done: threading.Event = field(default_factory=threading.Event)
    error: str | None = None
    abandoned: bool = False
    refused: list[Rejection] = field(default_factory=list)  # rows refused permanently, kept as rejects

    @property
    def row_count(self) -> int:
        return len(self.encoded.compact) if self.encoded is not None else len(self.rows)

    def usage_rows(self) -> list[UsageEvent]:
        """The full rows (materialized from ``encoded`` on first use)."""
        if self.encoded is not None and not self.rows:
            self.rows = self.encoded.materialize()
        return self.rows


class UsageConsumer(Protocol):
    def submit(self, pending: PendingWrite) -> PendingWrite:
        """Queue ``pending`` for writing; returns at once."""
        ...

    def wait(self, pending: PendingWrite, timeout_seconds: float) -> None:
        """Block until ``pending`` is committed (return) or cannot be now (raise :class:`RetryableError`)."""
        ...
