"""Moving customers between pricing versions gently: a cap on the increase, or a one-off credit."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Literal

from .lines import PERIOD_PATTERN, Line, invoice_total
from .money import currency_decimals, exact_mul, format_money, require_decimal, round_money

__all__ = ["TransitionPolicy", "transition_lines"]


@dataclass(frozen=True, slots=True)
class TransitionPolicy:
    """``cap``: until ``until_period`` (inclusive) a new invoice costs at most the previous total × (1 +
    ``cap_ratio``). ``credit``: a credit of ``credit_amount`` on the invoice of the period it is applied to
    (the caller applies it once, on the first invoice under the new version), never below a zero total."""

    kind: Literal["cap", "credit"]
    cap_ratio: Decimal = Decimal("0.10")
    credit_amount: Decimal = Decimal(0)
    until_period: str | None = None  # "YYYY-MM", inclusive; None: no end

    def __post_init__(self) -> None:
        if self.kind not in ("cap", "credit"):
            raise ValueError(f"transition kind must be 'cap' or 'credit', got {self.kind!r}")
        if require_decimal(self.cap_ratio, "cap_ratio") < 0:
            raise ValueError(f"cap_ratio must not be negative, got {self.cap_ratio}")
        if require_decimal(self.credit_amount, "credit_amount") < 0:
            raise ValueError(f"credit_amount must not be negative, got {self.credit_amount}")
        if self.until_period is not None and not PERIOD_PATTERN.match(self.until_period):
            raise ValueError(f"until_period must be 'YYYY-MM', got {self.until_period!r}")


def _negative_line(kind: str, description: str, amount: Decimal, currency: str) -> Line:
    return Line(kind, None, description, Decimal(1), Decimal(0), Decimal(0), -amount, -amount, currency)


def transition_lines(
    previous_total: Decimal, new_lines: Sequence[Line], policy: TransitionPolicy, period: str, currency: str
) -> list[Line]:
    """The extra line (zero or one) that ``policy`` adds to ``new_lines`` for ``period``.

    ``previous_total`` is what the customer paid under the old version (the last comparable invoice, or
    the shadow total of this period: the caller's choice). ``cap``: a negative "transition" line bringing
    the total down to ``round_money(previous_total × (1 + cap_ratio))`` when above it. ``credit``: a
    negative "credit" line of ``min(credit_amount, total)``. Nothing after ``until_period``.
    A cap needs a real previous total: ``previous_total=0`` caps the new invoice at zero, so do not apply
    a cap to customers without a comparable earlier invoice.
    """
    if not PERIOD_PATTERN.match(period):
        raise ValueError(f"period must be 'YYYY-MM', got {period!r}")
    currency_decimals(currency)
    if require_decimal(previous_total, "previous_total") < 0:
        raise ValueError(f"previous_total must not be negative, got {previous_total}")
    if any(line.currency != currency for line in new_lines):
        raise ValueError(f"new_lines are not all in {currency}")
    if policy.until_period is not None and period > policy.until_period:
        return []
    total = invoice_total(new_lines)
    if policy.kind == "cap":
        cap = round_money(exact_mul(previous_total, 1 + policy.cap_ratio), currency)
        if total <= cap:
            return []
        description = (
            f"Transition cap until {policy.until_period or 'further notice'}: "
            f"{format_money(total, currency)} capped at {format_money(cap, currency)} "
            f"(previous {format_money(previous_total, currency)} + {(policy.cap_ratio * 100).normalize():f}%)"
        )
        return [_negative_line("transition", description, total - cap, currency)]
    credit = min(round_money(policy.credit_amount, currency), max(total, Decimal(0)))
    if credit <= 0:
        return []
    return [_negative_line("credit", f"Transition credit {format_money(credit, currency)}", credit, currency)]
