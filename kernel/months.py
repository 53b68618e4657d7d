"""``year_month`` — always the ``YYYY-MM`` string of a UTC month (one word for one idea)."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from kernel.errors import InputError

__all__ = [
    "month_bounds",
    "next_month_start",
    "parse_year_month",
    "previous_year_month",
    "year_month_of",
]

_YEAR_MONTH = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])$")


def parse_year_month(text: str) -> str:
    """Return ``text`` if it is a valid ``YYYY-MM`` month, else raise ``InputError``."""
    if not isinstance(text, str) or not _YEAR_MONTH.match(text):
        raise InputError(f"year_month must be YYYY-MM, got {text!r}", code="invalid_year_month")
    return text


def year_month_of(instant: datetime) -> str:
    """The UTC month an instant belongs to (server receive time decides, SPEC §3)."""
    return instant.astimezone(UTC).strftime("%Y-%m")


def month_bounds(year_month: str) -> tuple[datetime, datetime]:
    """``[start, end)`` of a month in UTC."""
    match = _YEAR_MONTH.match(parse_year_month(year_month))
    assert match is not None
    start = datetime(int(match.group(1)), int(match.group(2)), 1, tzinfo=UTC)
    return start, next_month_start(start)


def next_month_start(instant: datetime) -> datetime:
    """First instant of the UTC month after ``instant``'s month."""
    utc = instant.astimezone(UTC)
    if utc.month == 12:
        return datetime(utc.year + 1, 1, 1, tzinfo=UTC)
    return datetime(utc.year, utc.month + 1, 1, tzinfo=UTC)


def previous_year_month(instant: datetime) -> str:
    """The month before ``instant``'s UTC month, as ``YYYY-MM``."""
    utc = instant.astimezone(UTC)
    if utc.month == 1:
        return f"{utc.year - 1:04d}-12"
    return f"{utc.year:04d}-{utc.month - 1:02d}"
