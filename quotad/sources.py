"""The source kinds quotad knows, and the resource kinds they measure."""

from __future__ import annotations

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


def check_schedule(expression: str) -> str | None:
    """None for a valid five-field cron expression, else what is wrong with it."""
    try:
        CronTrigger.from_crontab(expression, timezone="UTC")
    except ValueError as exc:
        return f"not a cron expression ({exc}): {expression!r}"
    return None
