"""Billing periods: UTC calendar months, named ``YYYY-MM``.

A period is ``[start, end)``: from the 1st at 00:00 UTC to the 1st of the next month at 00:00 UTC. Usage
belongs to the period of its ``occurred_at`` (the span end time), whenever it arrives.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

__all__ = ["Period"]

_PERIOD = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])$")


@dataclass(frozen=True, order=True)
class Period:
    year: int
    month: int

    @classmethod
    def parse(cls, text: str) -> Period:
        match = _PERIOD.match(text.strip())
        if not match or not 1970 <= int(match.group(1)) <= 2999:
            raise ValueError(f"a billing period is YYYY-MM (a UTC calendar month, 1970 to 2999), not {text!r}")
        return cls(int(match.group(1)), int(match.group(2)))

    @classmethod
    def containing(cls, moment: datetime) -> Period:
        if moment.utcoffset() is None:
            raise ValueError("a timezone-aware datetime is needed")
        utc = moment.astimezone(UTC)
        return cls(utc.year, utc.month)

    @property
    def start(self) -> datetime:
        return datetime(self.year, self.month, 1, tzinfo=UTC)

    @property
    def end(self) -> datetime:
        return self.next().start

    def next(self) -> Period:
        return Period(self.year + self.month // 12, self.month % 12 + 1)

    def previous(self) -> Period:
        return Period(self.year - (self.month == 1), (self.month - 2) % 12 + 1)

    def __str__(self) -> str:
        return f"{self.year:04d}-{self.month:02d}"
