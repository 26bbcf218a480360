"""``explain_shadow``: one version's invoice next to another's, in plain English, for the customer email
and the finance review of a pricing change."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from decimal import ROUND_HALF_UP, Decimal

from .lines import Line, invoice_total
from .metrics import BILLABLE_METRICS
from .money import exact_sum, format_money, format_quantity

__all__ = ["explain_shadow"]

# metric → (divisor, singular, plural): seconds are told in hours.
_USAGE_WORDS: Mapping[str, tuple[Decimal, str, str]] = {
    "worker_seconds": (Decimal(3600), "worker-hour", "worker-hours"),
    "gpu_seconds": (Decimal(3600), "GPU-hour", "GPU-hours"),
    "tokens": (Decimal(1), "token", "tokens"),
    "api_requests": (Decimal(1), "API request", "API requests"),
}
_GROUP_WORDS: Mapping[str, str] = {
    "fee": "the base fee",
    "commitment": "the commitment top-up",
    "minimum": "the minimum-spend top-up",
    "credit": "credits",
    "adjustment": "adjustments",
    "transition": "the transition cap",
}


def _join(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def _usage_phrase(metric: str, quantity: Decimal) -> str:
    divisor, singular, plural = _USAGE_WORDS.get(metric, (Decimal(1), metric, metric))
    shown = quantity / divisor
    if divisor != 1:  # hours: 14.2, 0.5, 0.03
        shown = shown.quantize(Decimal("0.1") if shown >= 1 else Decimal("0.01"), rounding=ROUND_HALF_UP)
        if shown == 0 and quantity > 0:
            return f"less than 0.01 {plural}"
    return f"{format_quantity(shown)} {singular if shown == 1 else plural}"


def _groups(lines: Sequence[Line]) -> dict[str, Decimal]:
    keys = [line.meter_code if line.kind == "usage" and line.meter_code else line.kind for line in lines]
    return {key: exact_sum(line.amount for k, line in zip(keys, lines, strict=True) if k == key) for key in keys}


def explain_shadow(
    period: str,
    usage: Mapping[str, Decimal],
    primary_version: str,
    primary_lines: Sequence[Line],
    shadow_version: str,
    shadow_lines: Sequence[Line],
) -> str:
    """Why the ``shadow_version`` invoice differs from the one billed under ``primary_version``.

    ``usage`` is billable metric code → quantity (``billable_quantities``). Deterministic: the same input
    gives the same text. Names both totals, the difference (amount and percentage of the primary total)
    and the item (metric, or fee/commitment/...) whose amount differs most, then any other differences.
    """
    currencies = sorted({line.currency for line in (*primary_lines, *shadow_lines)})
    if len(currencies) != 1:
        raise ValueError(f"explain_shadow needs lines in one currency, got {currencies or 'no lines'}")
    currency = currencies[0]

    def money(amount: Decimal) -> str:
        return format_money(amount, currency)

    ordered = [m for m in BILLABLE_METRICS if m in usage] + sorted(set(usage) - set(BILLABLE_METRICS))
    used = [_usage_phrase(m, usage[m]) for m in ordered if usage[m] != 0]
    sentences = [f"Your {period} usage was {_join(used)}." if used else f"You had no billable usage in {period}."]

    primary_total, shadow_total = invoice_total(primary_lines), invoice_total(shadow_lines)
    difference = shadow_total - primary_total
    if difference == 0:
        change = "the same"
    else:
        change = f"{money(abs(difference))} {'less' if difference < 0 else 'more'}"
        if primary_total != 0:
            percent = (difference * 100 / primary_total).quantize(Decimal("0.1"), rounding=ROUND_HALF_UP)
            change += f", {'−' if percent < 0 else '+'}{abs(percent)}%"
    sentences.append(
        f"Under {primary_version} you pay {money(primary_total)}; "
        f"under {shadow_version} you would pay {money(shadow_total)} ({change})."
    )

    primary, shadow = _groups(primary_lines), _groups(shadow_lines)
    keys = list(dict.fromkeys([*primary, *shadow]))
    deltas = {key: shadow.get(key, Decimal(0)) - primary.get(key, Decimal(0)) for key in keys}
    differing = sorted((key for key in keys if deltas[key] != 0), key=lambda key: -abs(deltas[key]))
    if not differing:
        sentences.append("Every item costs the same under both versions.")
        return " ".join(sentences)

    def side(groups: Mapping[str, Decimal], version: str, key: str) -> str:
        return f"{money(groups[key])} under {version}" if key in groups else f"not billed under {version}"

    top = differing[0]
    name = _GROUP_WORDS.get(top, top)
    sentences.append(
        f"The difference comes mostly from {name} "
        f"({side(primary, primary_version, top)}, {side(shadow, shadow_version, top)})."
    )
    if len(differing) > 1:
        others = [
            f"{_GROUP_WORDS.get(k, k)} {'+' if deltas[k] > 0 else '−'}{money(abs(deltas[k]))}" for k in differing[1:]
        ]
        sentences.append(f"Other differences: {_join(others)}.")
    return " ".join(sentences)
