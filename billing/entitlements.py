"""Entitlements: what an account may still use this month, per billable metric (``GET …/entitlements``).

A plan's limits are data (``spanmeter entitlements set``, table ``plan_limits``, effective-dated and
append-only): per plan and billable metric (``worker_seconds``, ``gpu_seconds``, ``tokens``,
``api_requests``),

- ``hard_limit``: the month's usage past which the application refuses work (``allowed`` false); without one,
  the plan's allowance (its included quantity) is a **soft** limit: crossing it is allowed and billed as
  overage;
- ``max_concurrency``: tasks metering that metric that may run at once per account, enforced across a worker
  fleet by :mod:`spanmeter.instrumentation.entitlements` on a shared store;
- ``fail_policy``: ``open`` (allow) or ``closed`` (refuse) when the application cannot reach the API.

Limits are defined per plan and enforced per account: an account's plan is its subscription's at the moment
asked. ``used`` is the month's usage so far (what the invoice bills; the hard limit bounds it: a whole-month
figure, not prorated). The allowance is the current plan's, prorated like the invoice when the plan changed
mid-month, and what draws on it is that subscription segment's usage, the quota of ``spanmeter usage --account
ID`` (:mod:`spanmeter.billing.quotas`): a soft limit's ``remaining`` is allowance minus that.

:func:`entitlements` is pure: (usage, allowances, limits) in, one :class:`Entitlement` per metric out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

import psycopg

from .ledger import limit_store
from .quotas import MonthToDate, month_to_date
from .rating import BILLABLE_METRICS

__all__ = [
    "FAIL_POLICIES",
    "Entitlement",
    "PlanLimit",
    "entitlements",
    "for_account",
    "history",
    "limits_in_force",
    "set_limit",
]

FAIL_POLICIES = ("open", "closed")


@dataclass(frozen=True)
class PlanLimit:
    plan_code: str
    metric: str
    hard_limit: Decimal | None
    max_concurrency: int | None
    fail_policy: str
    effective_from: datetime


@dataclass(frozen=True)
class Entitlement:
    metric: str
    unit: str
    used: Decimal
    included: Decimal  # the plan's allowance this month (prorated): the soft limit
    limit: Decimal | None  # the limit that applies: the hard limit, else the allowance, else None
    kind: str  # "hard", "soft" or "none"
    remaining: Decimal | None  # limit - used, never below 0
    allowed: bool  # False only past a hard limit
    max_concurrency: int | None
    fail_policy: str | None  # None: the plan sets none (the application's own default applies)


def entitlements(
    used: Mapping[str, Decimal],
    included: Mapping[str, Decimal],
    limits: Sequence[PlanLimit],
    used_in_segment: Mapping[str, Decimal] | None = None,
) -> list[Entitlement]:
    """One entitlement per billable metric, in catalogue order (pure). ``used``: the month's usage (what a hard
    limit bounds); ``used_in_segment``: the current subscription segment's, which draws on its allowance
    (``included``); the same as ``used`` when not given (one plan all month)."""
    by_metric = {limit.metric: limit for limit in limits}
    segment = used if used_in_segment is None else used_in_segment
    out = []
    for code, metric in BILLABLE_METRICS.items():
        use = used.get(code, Decimal(0))
        allowance = included.get(code, Decimal(0))
        limit = by_metric.get(code)
        hard = limit.hard_limit if limit else None
        if hard is not None:
            kind, applies, drawn = "hard", hard, use
        elif allowance > 0:
            kind, applies, drawn = "soft", allowance, segment.get(code, use)
        else:
            kind, applies, drawn = "none", None, use
        out.append(
            Entitlement(
                metric=code,
                unit=metric.unit,
                used=use,
                included=allowance,
                limit=applies,
                kind=kind,
                remaining=None if applies is None else max(applies - drawn, Decimal(0)),
                allowed=hard is None or use < hard,
                max_concurrency=limit.max_concurrency if limit else None,
                fail_policy=limit.fail_policy if limit else None,
            )
        )
    return out


def limits_in_force(conn: psycopg.Connection, plan_code: str, at: datetime) -> list[PlanLimit]:
    return [PlanLimit(*row[:6]) for row in limit_store.in_force(conn, plan_code, at)]


def for_account(
    conn: psycopg.Connection, account_id: str, now: datetime, mtd: MonthToDate | None = None
) -> tuple[MonthToDate, list[Entitlement]] | None:
    """The account's entitlements now (None without a subscription this month)."""
    mtd = mtd if mtd is not None else month_to_date(conn, account_id, now)
    if mtd is None:
        return None
    in_segment = {q.metric: q.used for q in mtd.quotas}
    included = {q.metric: q.included for q in mtd.quotas}
    return mtd, entitlements(mtd.usage, included, limits_in_force(conn, mtd.plan_code, now), in_segment)


def set_limit(
    conn: psycopg.Connection,
    *,
    plan_code: str,
    metric: str,
    hard_limit: Decimal | None,
    max_concurrency: int | None,
    fail_policy: str,
    effective_from: datetime,
    recorded_by: str,
) -> None:
    """Record a limit (the caller commits). Refuses an unknown metric or policy with a ValueError naming it."""
    if metric not in BILLABLE_METRICS:
        raise ValueError(f"--metric {metric!r} is not a billable metric: use one of {', '.join(BILLABLE_METRICS)}")
    if fail_policy not in FAIL_POLICIES:
        raise ValueError(f"--fail {fail_policy!r}: use open or closed")
    if hard_limit is not None and hard_limit < 0:
        raise ValueError("--hard-limit must be 0 or more")
    if max_concurrency is not None and max_concurrency < 1:
        raise ValueError("--max-concurrency must be 1 or more")
    limit_store.insert_limit(
        conn,
        plan_code=plan_code,
        metric=metric,
        hard_limit=hard_limit,
        max_concurrency=max_concurrency,
        fail_policy=fail_policy,
        effective_from=effective_from,
        recorded_by=recorded_by,
    )


def history(conn: psycopg.Connection, plan_code: str | None = None) -> list[limit_store.LimitRow]:
    """Every recorded limit (or a plan's), in the order recorded."""
    return limit_store.history(conn, plan_code)
