"""SQL for the health check: what the ledger says about scans, enforcement and jobs."""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection
from dataclasses import dataclass

from sqlalchemy import and_, func, select
from sqlalchemy.orm import Session, aliased

from quotad.enforcement.models import EnforcementAction
from quotad.enforcement.repository import DONE, FAILED, LIFT, PUSH_LIMIT, RESTRICT
from quotad.jobs.models import JobRun
from quotad.jobs.repository import RUNNING
from quotad.ledger.models import CurrentUsage, Resource, Scan, Source
from quotad.ledger.service import COMPLETE, PARTIAL
from quotad.members.models import Member


@dataclass(frozen=True, slots=True)
class ScanFact:
    finished_at: dt.datetime
    status: str  # complete, partial, failed
    error: str | None
    failures: int  # resources that could not be measured


@dataclass(frozen=True, slots=True)
class SourceFacts:
    """A source's newest scan, and its newest scan that counted (complete or partial)."""

    name: str
    last: ScanFact | None
    last_good: ScanFact | None


@dataclass(frozen=True, slots=True)
class ActionFact:
    """An enforcement step on a resource that did not end `done`."""

    source: str
    kind: str
    resource: str
    member: str | None
    action: str  # restrict, lift, push_limit
    status: str  # started, failed
    at: dt.datetime
    message: str | None


@dataclass(frozen=True, slots=True)
class UnattributedResource:
    source: str
    kind: str
    name: str
    bytes: int


@dataclass(frozen=True, slots=True)
class Unattributed:
    count: int
    bytes: int
    largest: tuple[UnattributedResource, ...]


@dataclass(frozen=True, slots=True)
class JobFact:
    """A scheduled job's newest finished run."""

    job: str
    slot: dt.datetime
    outcome: str  # ok, failed
    finished_at: dt.datetime | None
    detail: str | None


class MonitoringRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def sources(self, names: Collection[str]) -> list[SourceFacts]:
        """NAMES in order, each with its newest scan and newest complete or partial scan."""
        last = self._newest_scans(names, good_only=False)
        good = self._newest_scans(names, good_only=True)
        return [SourceFacts(n, last.get(n), good.get(n)) for n in names]

    def _newest_scans(self, names: Collection[str], *, good_only: bool) -> dict[str, ScanFact]:
        # Ties in finished_at (two scans in one second) go to the one recorded last.
        ranked = select(
            Scan.id,
            func.row_number()
            .over(
                partition_by=Scan.source_id,
                order_by=(Scan.finished_at.desc(), Scan.recorded_at.desc()),
            )
            .label("rank"),
        ).join(Source, Source.id == Scan.source_id)
        ranked = ranked.where(Source.name.in_(list(names)))
        if good_only:
            ranked = ranked.where(Scan.status.in_([COMPLETE, PARTIAL]))
        newest = ranked.subquery()
        query = (
            select(Source.name, Scan.finished_at, Scan.status, Scan.error, Scan.failures)
            .join(Scan, Scan.source_id == Source.id)
            .join(newest, and_(newest.c.id == Scan.id, newest.c.rank == 1))
        )
        return {
            name: ScanFact(finished_at, status, error, failures)
            for name, finished_at, status, error, failures in self.session.execute(query)
        }

    def unfinished_actions(self) -> list[ActionFact]:
        """Per resource, its newest restrict or lift if it did not end done, and its
        newest native-limit push if that failed and no restrict or lift came after it.

        The newest restrict or lift says what state the resource is meant to
        be in; an older failure has been retried since.
        """
        key = (EnforcementAction.source, EnforcementAction.kind, EnforcementAction.resource)
        newest_change = (
            select(func.max(EnforcementAction.id))
            .where(EnforcementAction.action.in_([RESTRICT, LIFT]))
            .group_by(*key)
        )
        newest_push = (
            select(func.max(EnforcementAction.id))
            .where(EnforcementAction.action == PUSH_LIMIT)
            .group_by(*key)
        )
        later = aliased(EnforcementAction)
        changed_since = (
            select(later.id)
            .where(
                later.source == EnforcementAction.source,
                later.kind == EnforcementAction.kind,
                later.resource == EnforcementAction.resource,
                later.action.in_([RESTRICT, LIFT]),
                later.id > EnforcementAction.id,
            )
            .exists()
        )
        query = (
            select(EnforcementAction, Member.name)
            .outerjoin(Member, Member.id == EnforcementAction.member_id)
            .where(
                (EnforcementAction.id.in_(newest_change) & (EnforcementAction.status != DONE))
                | (
                    EnforcementAction.id.in_(newest_push)
                    & (EnforcementAction.status == FAILED)
                    & ~changed_since
                )
            )
            .order_by(*key)
        )
        return [
            ActionFact(
                row.source,
                row.kind,
                row.resource,
                member,
                row.action,
                row.status,
                row.at,
                row.message,
            )
            for row, member in self.session.execute(query)
        ]

    def unattributed(self, largest: int = 5) -> Unattributed:
        """Resources present now that no member is charged for: count, bytes, the largest."""
        where = (CurrentUsage.member_id.is_(None), CurrentUsage.present)
        count, total = self.session.execute(
            select(func.count(), func.coalesce(func.sum(CurrentUsage.bytes), 0)).where(*where)
        ).one()
        rows = self.session.execute(
            select(Source.name, Resource.kind, Resource.name, CurrentUsage.bytes)
            .join(Resource, Resource.id == CurrentUsage.resource_id)
            .join(Source, Source.id == CurrentUsage.source_id)
            .where(*where)
            .order_by(CurrentUsage.bytes.desc(), Source.name, Resource.kind, Resource.name)
            .limit(largest)
        )
        return Unattributed(
            int(count), int(total), tuple(UnattributedResource(*row) for row in rows)
        )

    def jobs(self) -> list[JobFact]:
        """Each job's newest finished run (by slot); runs still going are left out."""
        ranked = (
            select(
                JobRun.id,
                func.row_number()
                .over(partition_by=JobRun.job, order_by=(JobRun.slot.desc(), JobRun.id.desc()))
                .label("rank"),
            )
            .where(JobRun.outcome != RUNNING)  # a run still going tells nothing yet
            .subquery()
        )
        query = (
            select(JobRun.job, JobRun.slot, JobRun.outcome, JobRun.finished_at, JobRun.detail)
            .join(ranked, and_(ranked.c.id == JobRun.id, ranked.c.rank == 1))
            .order_by(JobRun.job)
        )
        return [JobFact(*row) for row in self.session.execute(query)]
