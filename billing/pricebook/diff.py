"""What changed between two price book versions, entry by entry (``spanmeter prices diff``). Pure."""

from __future__ import annotations

from decimal import Decimal

from .book import TOKEN_KINDS, GpuEntry, Match, ModelEntry, PriceBook

__all__ = ["diff_books"]


def _token_values(entry: ModelEntry) -> dict[str, Decimal | None]:
    values: dict[str, Decimal | None] = {f"price.{k}": entry.price.of(k) for k in TOKEN_KINDS}
    values.update({f"cost.{k}": entry.cost.of(k) if entry.cost else None for k in TOKEN_KINDS})
    return values


def _gpu_values(entry: GpuEntry) -> dict[str, Decimal | None]:
    return {"price": entry.price, "cost": entry.cost}


def _key(entry: ModelEntry | GpuEntry) -> tuple[Match, str]:
    return entry.match, getattr(entry, "provider", None) or ""


def _pct(old: Decimal | None, new: Decimal | None) -> str:
    if old is None or new is None or old == 0:
        return ""
    change = (new - old) / old * 100
    return f" ({change:+.1f} %)"


def diff_books(old: PriceBook, new: PriceBook) -> list[str]:
    """One line per added, removed or changed entry value, per-unit prices normalised to each book's ``per``
    (so a book that moves from per-1000 to per-million does not show every price as changed)."""
    lines: list[str] = []
    if old.currency != new.currency:
        lines.append(f"currency: {old.currency} -> {new.currency}")
    for section, old_entries, new_entries, values, old_per, new_per in (
        ("tokens", old.tokens, new.tokens, _token_values, old.token_per, new.token_per),
        ("gpus", old.gpus, new.gpus, _gpu_values, old.gpu_per, new.gpu_per),
    ):
        before: dict[tuple[Match, str], ModelEntry | GpuEntry] = {_key(e): e for e in old_entries}
        after: dict[tuple[Match, str], ModelEntry | GpuEntry] = {_key(e): e for e in new_entries}
        for key in sorted(before.keys() | after.keys(), key=lambda k: (k[0].kind, k[0].value, k[1])):
            match = f"{key[0]}" + (f" via {key[1]}" if key[1] else "")
            if key not in after:
                lines.append(f"{section} {match}: removed")
                continue
            if key not in before:
                lines.append(f"{section} {match}: added")
                continue
            old_values, new_values = values(before[key]), values(after[key])  # type: ignore[arg-type]
            for field in old_values:
                a, b = old_values[field], new_values[field]
                a = None if a is None else a / old_per
                b = None if b is None else b / new_per
                if a != b:
                    shown_a = "-" if a is None else format((a * new_per).normalize(), "f")
                    shown_b = "-" if b is None else format((b * new_per).normalize(), "f")
                    lines.append(f"{section} {match} {field}: {shown_a} -> {shown_b} per {new_per}{_pct(a, b)}")
    return lines
