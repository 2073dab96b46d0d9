"""The source kinds quotad knows, and the resource kinds they measure."""

from __future__ import annotations

import re

from apscheduler.triggers.cron import CronTrigger

from scanners.afs import AfsScanner
from scanners.base import Scanner
from scanners.maildir import MaildirScanner
from scanners.mailman import MailmanScanner
from scanners.mysql import MysqlScanner
from scanners.postgres import PostgresScanner
from scanners.tree import TreeScanner

SCANNERS: dict[str, type[Scanner]] = {
    cls.kind: cls
    for cls in (
        TreeScanner,
        MaildirScanner,
        MailmanScanner,
        PostgresScanner,
        MysqlScanner,
        AfsScanner,
    )
}

# Every resource kind of the contract, including those whose scanners are
# configured elsewhere, so a quota scope for them is valid before they run here.
RESOURCE_KINDS = frozenset(
    {
        "maildir",
        "tree",
        "afs_volume",
        "postgres_database",
        "mysql_database",
        "mailman_archive",
    }
)
QUOTA_SCOPES = RESOURCE_KINDS | {"total"}


SECONDS_FIELDS = 6
CRON_FIELDS = 5
WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_NUMERIC_DOW = re.compile(r"^(\*|\d+(?:-\d+)?)(?:/(\d+))?$")


def _weekdays(field: str) -> str:
    """A crontab day-of-week field (0 and 7 are Sunday) in APScheduler 3's names.

    APScheduler 3 counts weekdays from Monday = 0, so "0 3 * * 0" passed on
    as it is would run on Mondays; names mean the same to both.
    """
    items = []
    for item in field.split(","):
        match = _NUMERIC_DOW.match(item)
        if match is None or item == "*":
            items.append(item)  # names, or something APScheduler will judge
            continue
        span, step_text = match.groups()
        step = int(step_text) if step_text else 1
        if span == "*":
            first, last = 0, 6
        else:
            first_text, _, last_text = span.partition("-")
            first = int(first_text)
            last = int(last_text) if last_text else (6 if step_text else first)
        if not (0 <= first <= 7 and 0 <= last <= 7 and first <= last) or step < 1:  # noqa: PLR2004
            raise ValueError(f"day of week out of range 0-7: {item!r}")
        days = sorted({day % 7 for day in range(first, last + 1, step)})
        items.extend(WEEKDAYS[day] for day in days)
    return ",".join(items)


def cron_trigger(expression: str) -> CronTrigger:
    """The UTC trigger of a cron expression: five fields, or six with seconds first.

    Raises ValueError for anything else.
    """
    fields = expression.split()
    if len(fields) == SECONDS_FIELDS:
        # Seconds first, as Quartz and systemd's calendar write them: short
        # cycles for tests and for sub-minute polling of cheap sources.
        second, minute, hour, day, month, day_of_week = fields
        return CronTrigger(
            second=second,
            minute=minute,
            hour=hour,
            day=day,
            month=month,
            day_of_week=_weekdays(day_of_week),
            timezone="UTC",
        )
    if len(fields) != CRON_FIELDS:
        raise ValueError(f"wrong number of fields; got {len(fields)}, expected 5 (or 6)")
    minute, hour, day, month, day_of_week = fields
    return CronTrigger(
        minute=minute,
        hour=hour,
        day=day,
        month=month,
        day_of_week=_weekdays(day_of_week),
        timezone="UTC",
    )


def check_schedule(expression: str) -> str | None:
    """None for a valid cron expression (five fields, or six with seconds), else what is wrong."""
    try:
        cron_trigger(expression)
    except ValueError as exc:
        return f"not a cron expression ({exc}): {expression!r}"
    return None
