"""What a failed ledger write means, from PostgreSQL's SQLSTATE: retry it, or refuse the rows that caused it.

The OpenTelemetry Collector's rule (``consumererror``): an error is *retryable* unless it is known to be
*permanent*. Retrying a permanent error forever turns one bad row into a stalled pipeline; dropping a
retryable one loses usage. So:

| class | SQLSTATE | what the ledger exporter does |
|---|---|---|
| ``RETRYABLE`` | ``08xxx`` connection, ``40001`` serialization failure, ``40P01`` deadlock, ``57P01``–``57P03`` shutdown / cannot connect now, ``57014`` statement timeout, ``53xxx`` insufficient resources, ``55P03`` lock not available, no SQLSTATE (the connection broke) | answer UNAVAILABLE with RetryInfo; the exporter retries; idempotency keys make the retry exact |
| ``MISCONFIGURED`` | ``42P01`` undefined table (schema not migrated), ``28xxx`` authentication, ``42501`` insufficient privilege, ``3D000`` no such database | retryable too (usage is never dropped for a deployment mistake), counted as ``spanmeter_ledger_write_errors_total{kind="configuration"}`` so an alert calls a human |
| ``PERMANENT`` | ``22xxx`` data exception, ``23xxx`` integrity constraint violation | the batch is bisected to the offending rows; only they are refused, kept in ``rejected_spans`` (reason ``ledger_refused``) and reported in ``partial_success``; the rest commits |
| anything else | | ``RETRYABLE`` (the Collector's default) |
"""

from __future__ import annotations

import enum

import psycopg

__all__ = ["WriteErrorClass", "classify", "classify_sqlstate"]


class WriteErrorClass(enum.Enum):
    RETRYABLE = "retryable"
    MISCONFIGURED = "misconfigured"
    PERMANENT = "permanent"


_RETRYABLE_CODES = frozenset({"40001", "40P01", "57P01", "57P02", "57P03", "57014", "55P03"})
_MISCONFIGURED_CODES = frozenset({"42P01", "42501", "3D000"})


def classify_sqlstate(sqlstate: str | None) -> WriteErrorClass:
    """The class of a SQLSTATE (``None``: no answer from the server, i.e. the connection broke)."""
    if not sqlstate:
        return WriteErrorClass.RETRYABLE
    if sqlstate in _RETRYABLE_CODES or sqlstate.startswith(("08", "53")):
        return WriteErrorClass.RETRYABLE
    if sqlstate in _MISCONFIGURED_CODES or sqlstate.startswith("28"):
        return WriteErrorClass.MISCONFIGURED
    if sqlstate.startswith(("22", "23")):
        return WriteErrorClass.PERMANENT
    return WriteErrorClass.RETRYABLE


def classify(exc: BaseException) -> WriteErrorClass:
    """The class of an exception raised by a ledger write. Not a database error (a bug on our side):
    retryable, so nothing is dropped for it."""
    if isinstance(exc, psycopg.Error):
        return classify_sqlstate(exc.sqlstate)
    return WriteErrorClass.RETRYABLE
