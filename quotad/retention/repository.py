"""SQL for retention: thinning old usage samples, pruning job runs, monthly partitions."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from sqlalchemy import ColumnElement, Select, delete, exists, func, select, text
from sqlalchemy.orm import Session, aliased

from quotad.audit.models import AuditEntry
from quotad.billing.models import BillingPeriod
from quotad.jobs.models import JobRun
from quotad.ledger.models import CurrentUsage, Resource, UsageSample
from quotad.locks import lock_key

# Rows of job_runs removed per statement.
JOB_RUNS_BATCH = 5000
# usage_samples' partitions on PostgreSQL (migration 7e3b1d5a9c42).
PARTITION_RE = re.compile(r"^usage_samples_y(\d{4})m(\d{2})$")
DEFAULT_PARTITION = "usage_samples_default"
PARTITIONS_LOCK = lock_key("usage-samples-partitions")


def month_start(at: dt.datetime | dt.date) -> dt.date:
    return dt.date(at.year, at.month, 1)


def next_month(month: dt.date) -> dt.date:
    return dt.date(month.year + month.month // 12, month.month % 12 + 1, 1)


class RetentionRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    @property
    def dialect(self) -> str:
        return self.session.get_bind().dialect.name

    # -- what may be thinned --------------------------------------------------

    def finalized_periods(self) -> list[str]:
        """Every finalized billing period, "YYYY-MM", oldest first."""
        return list(
            self.session.scalars(select(BillingPeriod.period).order_by(BillingPeriod.period))
        )

    def completed_periods(self, action: str) -> set[str]:
        """The periods earlier runs (audit entries ACTION) thinned from end to end."""
        done: set[str] = set()
        for detail in self.session.scalars(
            select(AuditEntry.detail).where(AuditEntry.action == action)
        ):
            if isinstance(detail, dict):
                done.update(str(p) for p in detail.get("periods_complete", ()))
        return done

    def resource_ids(self) -> list[int]:
        return list(self.session.scalars(select(Resource.id).order_by(Resource.id)))

    # -- thinning -------------------------------------------------------------

    def _day(self, column: Any) -> ColumnElement[Any]:
        if self.dialect == "postgresql":
            return func.date_trunc("day", column)
        # SQLite stores "YYYY-MM-DD HH:MM:SS.ffffff"; date() is its day.
        return func.date(column)

    def _thinnable(
        self, start: dt.datetime, end: dt.datetime, first: int, last: int
    ) -> Select[tuple[int]]:
        """Ids of the samples in [START, END) of resources FIRST..LAST that thinning removes.

        Kept: each resource's last sample of each UTC day (by time, then id,
        as billing and history order them), whose value holds into the next
        day; each member's first sample (the member's first measurement is
        where an unset joined_at begins); any sample at the instant that
        current_usage shows. START and END are UTC midnights.
        """
        s = UsageSample
        in_window = (
            s.resource_id >= first,
            s.resource_id <= last,
            s.measured_at >= start,
            s.measured_at < end,
        )
        ranked = (
            select(
                s.id,
                s.resource_id,
                s.member_id,
                s.measured_at,
                func.row_number()
                .over(
                    partition_by=(s.resource_id, self._day(s.measured_at)),
                    order_by=(s.measured_at.desc(), s.id.desc()),
                )
                .label("rank"),
            )
            .where(*in_window)
            .subquery()
        )
        earlier = aliased(UsageSample)
        members_first = ranked.c.member_id.is_not(None) & ~exists().where(
            earlier.member_id == ranked.c.member_id, earlier.measured_at < ranked.c.measured_at
        )
        shown = exists().where(
            CurrentUsage.resource_id == ranked.c.resource_id,
            CurrentUsage.measured_at == ranked.c.measured_at,
        )
        return select(ranked.c.id).where(ranked.c.rank > 1, ~members_first, ~shown)

    def count_thinnable(self, start: dt.datetime, end: dt.datetime, first: int, last: int) -> int:
        query = select(func.count()).select_from(
            self._thinnable(start, end, first, last).subquery()
        )
        return int(self.session.scalar(query) or 0)

    def thin(self, start: dt.datetime, end: dt.datetime, first: int, last: int) -> int:
        """Delete what _thinnable() selects; how many samples went."""
        doomed = self._thinnable(start, end, first, last)
        stmt = delete(UsageSample).where(
            # The bounds again on the outer statement, so that PostgreSQL
            # touches only the window's partition.
            UsageSample.measured_at >= start,
            UsageSample.measured_at < end,
            UsageSample.resource_id >= first,
            UsageSample.resource_id <= last,
            UsageSample.id.in_(doomed),
        )
        result: Any = self.session.execute(stmt, execution_options={"synchronize_session": False})
        return int(result.rowcount)

    # -- job runs -------------------------------------------------------------

    def _old_job_runs(self, before: dt.datetime) -> Select[tuple[int]]:
        """Runs started before BEFORE, but never a job's latest run (by slot)."""
        newer = aliased(JobRun)
        return select(JobRun.id).where(
            JobRun.started_at < before,
            exists().where(newer.job == JobRun.job, newer.slot > JobRun.slot),
        )

    def count_old_job_runs(self, before: dt.datetime) -> int:
        query = select(func.count()).select_from(self._old_job_runs(before).subquery())
        return int(self.session.scalar(query) or 0)

    def delete_old_job_runs(self, before: dt.datetime) -> int:
        """Delete up to JOB_RUNS_BATCH of the runs above; how many went."""
        ids = list(self.session.scalars(self._old_job_runs(before).limit(JOB_RUNS_BATCH)))
        if not ids:
            return 0
        result: Any = self.session.execute(
            delete(JobRun).where(JobRun.id.in_(ids)),
            execution_options={"synchronize_session": False},
        )
        return int(result.rowcount)


class PartitionRepository:
    """usage_samples' monthly partitions on PostgreSQL; nothing to do on SQLite."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def partitioned(self) -> bool:
        """Whether usage_samples is a partitioned table (PostgreSQL, migrated)."""
        if self.session.get_bind().dialect.name != "postgresql":
            return False
        kind = self.session.scalar(
            text("SELECT relkind FROM pg_class WHERE oid = to_regclass('usage_samples')")
        )
        return bool(kind == "p")

    def partitions(self) -> list[str]:
        """The names of usage_samples' partitions."""
        return list(
            self.session.scalars(
                text(
                    "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
                    " WHERE i.inhparent = 'usage_samples'::regclass ORDER BY c.relname"
                )
            )
        )

    def months(self) -> list[dt.date]:
        """The months that have a partition of their own, oldest first."""
        found = (PARTITION_RE.match(name) for name in self.partitions())
        return [dt.date(int(m[1]), int(m[2]), 1) for m in found if m]

    def default_months(self) -> list[dt.date]:
        """The months of the rows the DEFAULT partition holds."""
        if DEFAULT_PARTITION not in self.partitions():
            return []
        rows = self.session.scalars(
            text(f"SELECT DISTINCT date_trunc('month', measured_at) FROM {DEFAULT_PARTITION}")  # noqa: S608 - our own name
        )
        return sorted(month_start(at) for at in rows)

    def ensure_partitions(self, now: dt.datetime, ahead: int = 3) -> list[str]:
        """Create the monthly partitions missing from NOW's month to AHEAD months on.

        Also one for every month whose rows sit in the DEFAULT partition (a
        sample that landed before its month had a partition), and those rows
        move into it: PostgreSQL refuses a partition whose rows the DEFAULT
        partition holds. All in the caller's transaction; the names created.
        """
        if not self.partitioned():
            return []
        # Two schedulers at once would both try to create the same month.
        self.session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": PARTITIONS_LOCK})
        have = set(self.months())
        wanted = set(self.default_months())
        month = month_start(now.astimezone(dt.UTC))
        for _ in range(ahead + 1):
            wanted.add(month)
            month = next_month(month)
        return [self._create(first) for first in sorted(wanted - have)]

    def _create(self, first: dt.date) -> str:
        name = f"usage_samples_y{first.year:04d}m{first.month:02d}"
        bounds = {"start": first.isoformat(), "end": next_month(first).isoformat()}
        in_month = (
            "measured_at >= CAST(:start AS timestamp) AND measured_at < CAST(:end AS timestamp)"
        )
        has_default = DEFAULT_PARTITION in self.partitions()
        if has_default:
            rows = f"SELECT * FROM {DEFAULT_PARTITION} WHERE {in_month}"  # noqa: S608 - our own names
            keep = f"CREATE TEMPORARY TABLE quotad_moving AS {rows}"
            self.session.execute(text(keep), bounds)
            self.session.execute(
                text(f"DELETE FROM {DEFAULT_PARTITION} WHERE {in_month}"),  # noqa: S608 - our own names
                bounds,
            )
        # Literal bounds: a partition bound takes no parameters. They are
        # ISO dates made here, never input.
        self.session.execute(
            text(
                f"CREATE TABLE {name} PARTITION OF usage_samples"
                f" FOR VALUES FROM ('{bounds['start']}') TO ('{bounds['end']}')"
            )
        )
        if has_default:
            # Same columns in the same order: the partitions are made from the parent.
            self.session.execute(text("INSERT INTO usage_samples SELECT * FROM quotad_moving"))
            self.session.execute(text("DROP TABLE quotad_moving"))
        return name
