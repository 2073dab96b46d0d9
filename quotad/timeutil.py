"""Times as the contract writes them: RFC 3339, UTC, with a Z."""

from __future__ import annotations

import datetime as dt
import functools


# Cached: a list of statements writes the same few instants thousands of times.
@functools.lru_cache(maxsize=4096)
def format_time(value: dt.datetime | None) -> str | None:
    if value is None:
        return None
    value = value.astimezone(dt.UTC)
    spec = "seconds" if value.microsecond == 0 else "microseconds"
    return value.replace(tzinfo=None).isoformat(timespec=spec) + "Z"


def parse_time(text: str) -> dt.datetime:
    """An aware UTC datetime from RFC 3339 ("...Z" or an offset) or a date (midnight UTC)."""
    value = text.strip()
    if not value:
        raise ValueError("empty time")
    if value.endswith(("Z", "z")):
        value = value[:-1] + "+00:00"
    try:
        if len(value) == 10:  # noqa: PLR2004 - a bare YYYY-MM-DD
            parsed = dt.datetime.combine(dt.date.fromisoformat(value), dt.time(), dt.UTC)
        else:
            parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"not a date or RFC 3339 time: {text!r}") from None
    if parsed.tzinfo is None:
        raise ValueError(f"a time needs a zone (end it with Z for UTC): {text!r}")
    try:
        return parsed.astimezone(dt.UTC)
    except OverflowError:
        # 9999-12-31T23:00:00-05:00 is past the last representable UTC time.
        raise ValueError(f"time out of range: {text!r}") from None


# English names, not strftime's: %B follows the process's locale, and what
# quotad writes to members (mail, pages, forecasts) must not change with it.
MONTHS = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


def day_words(at: dt.datetime) -> str:
    """A day for a person: "14 January 2027"."""
    return f"{at.day} {MONTHS[at.month - 1]} {at.year}"
