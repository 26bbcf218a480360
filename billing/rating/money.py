"""Money and quantity arithmetic: exact products and sums, one rounding rule, plain string forms.

Every multiplication and sum in rating goes through ``exact_mul`` / ``exact_sum``: they use a 200-digit
context that *traps* ``Inexact``, so a result that could not be represented exactly raises instead of being
rounded silently by Python's default 28-digit context. The only place money is rounded is ``round_money``.
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import ROUND_HALF_UP, Context, Decimal, DivisionByZero, Inexact, InvalidOperation, Overflow
from types import MappingProxyType

__all__ = [
    "CURRENCY_DECIMALS",
    "CURRENCY_SYMBOLS",
    "currency_decimals",
    "exact_decimal",
    "exact_mul",
    "exact_sum",
    "format_money",
    "format_quantity",
    "plain",
    "require_decimal",
    "round_money",
]

# ISO 4217 minor units of the currencies spanmeter invoices in.
CURRENCY_DECIMALS: MappingProxyType[str, int] = MappingProxyType({"EUR": 2, "USD": 2, "GBP": 2, "JPY": 0})
CURRENCY_SYMBOLS: MappingProxyType[str, str] = MappingProxyType({"EUR": "€", "USD": "$", "GBP": "£", "JPY": "¥"})

_EXACT = Context(prec=200, rounding=ROUND_HALF_UP, traps=[InvalidOperation, DivisionByZero, Overflow, Inexact])
_ROUNDING = Context(prec=200, rounding=ROUND_HALF_UP, traps=[InvalidOperation, DivisionByZero, Overflow])


def require_decimal(value: object, name: str) -> Decimal:
    """``value`` if it is a finite Decimal; floats and ints are refused so that a float never reaches money."""
    if not isinstance(value, Decimal):
        raise TypeError(f"{name} must be a Decimal, got {type(value).__name__} {value!r}")
    if not value.is_finite():
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def currency_decimals(currency: str) -> int:
    try:
        return CURRENCY_DECIMALS[currency]
    except KeyError:
        raise ValueError(f"unknown currency {currency!r}; known: {', '.join(CURRENCY_DECIMALS)}") from None


def round_money(amount: Decimal, currency: str) -> Decimal:
    """``amount`` rounded to ``currency``'s minor unit, half away from zero (``ROUND_HALF_UP``).

    >>> round_money(Decimal("0.005"), "EUR"), round_money(Decimal("-0.005"), "EUR"), round_money(Decimal("12.5"), "JPY")
    (Decimal('0.01'), Decimal('-0.01'), Decimal('13'))
    """
    decimals = currency_decimals(currency)
    require_decimal(amount, "amount")
    return amount.quantize(Decimal(1).scaleb(-decimals), context=_ROUNDING)


def exact_mul(a: Decimal, b: Decimal) -> Decimal:
    """``a × b`` exactly (raises ``decimal.Inexact`` rather than round)."""
    return _EXACT.multiply(a, b)


def exact_sum(values: Iterable[Decimal]) -> Decimal:
    """The exact sum of ``values`` (``Decimal(0)`` when empty)."""
    total = Decimal(0)
    for value in values:
        total = _EXACT.add(total, value)
    return total


def plain(value: Decimal) -> str:
    """``value`` as a string without exponent and without trailing zeros: ``4E-4`` → ``"0.0004"``, ``1E+3`` → ``"1000"``."""
    text = format(value.normalize(context=_ROUNDING), "f")
    return "0" if text in ("-0", "0") else text


def format_quantity(value: Decimal) -> str:
    """A quantity for people: thousands separators, no exponent, no trailing zeros (``1,234,567.5``)."""
    text = format(value.normalize(context=_ROUNDING), ",f")
    return "0" if text in ("-0", "0") else text


def format_money(amount: Decimal, currency: str) -> str:
    """``€1,234.50``, ``−€5.00`` (a real minus sign), ``¥1,235``: rounded to the minor unit for display."""
    rounded = round_money(amount, currency)
    symbol = CURRENCY_SYMBOLS.get(currency, currency + " ")
    text = f"{symbol}{abs(rounded):,f}"
    return f"−{text}" if rounded < 0 else text


def exact_decimal(value: object) -> Decimal:
    """A decimal written in a file (YAML, JSON): a string or a whole number, finite. A float is refused: YAML
    and JSON read ``0.0016`` as a binary float, which is not the number written. ``ValueError`` says why."""
    if isinstance(value, bool | float):
        raise ValueError(f'write it as a string ("{value}"): a bare number with a fraction is read as a float')
    if not isinstance(value, int | str):
        raise ValueError(f"a decimal string, got {type(value).__name__}")
    try:
        number = Decimal(str(value).strip())
    except InvalidOperation:
        raise ValueError(f"{value!r} is not a decimal number") from None
    if not number.is_finite():
        raise ValueError(f"{value!r} is not a finite number")
    return number
