"""SQL for job runs: claiming a slot, recording its end, reading the latest runs."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from quotad.jobs.models import JobRun

RUNNING = "running"
OK = "ok"
FAILED = "failed"
OUTCOMES = (RUNNING, OK, FAILED)


@dataclass(frozen=True, slots=True)
class JobSummary:
    """A job's latest run and how many runs of each outcome are on record."""

    job: str
    slot: dt.datetime
    instance: str
    started_at: dt.datetime
    finished_at: dt.datetime | None
    outcome: str
    duration_us: int | None
    detail: str | None
    runs: dict[str, int]


class JobRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def claim(self, job: str, slot: dt.datetime, instance: str, now: dt.datetime) -> int:
        """Insert the run of JOB for SLOT; the unique index refuses a second claim."""
        run = JobRun(job=job, slot=slot, instance=instance, started_at=now, outcome=RUNNING)
        self.session.add(run)
        self.session.flush()
        return run.id

    def finish(
        self,
        run_id: int,
        outcome: str,
        finished_at: dt.datetime,
        duration_us: int,
        detail: str | None,
    ) -> None:
        self.session.execute(
            update(JobRun)
            .where(JobRun.id == run_id)
            .values(
                outcome=outcome,
                finished_at=finished_at,
                duration_us=duration_us,
                detail=detail,
            )
        )

    def abandon(self, job: str, before: int, now: dt.datetime) -> int:
        """Mark JOB's runs older than run BEFORE still `running` as failed.

        Called by the holder of the job's lock, so nobody is running them: their
        process stopped mid-run.
        """
        result = self.session.execute(
            update(JobRun)
            .where(JobRun.job == job, JobRun.outcome == RUNNING, JobRun.id < before)
            .values(
                outcome=FAILED,
                finished_at=now,
                detail="abandoned: the process running it stopped before it ended",
            )
        )
        return int(getattr(result, "rowcount", 0) or 0)

    def summaries(self) -> list[JobSummary]:
        """Per job on record: its latest run (by slot) and its runs per outcome."""
        latest_id = (
            select(JobRun.job, func.max(JobRun.slot).label("slot")).group_by(JobRun.job).subquery()
        )
        latest = self.session.scalars(
            select(JobRun)
            .join(latest_id, (JobRun.job == latest_id.c.job) & (JobRun.slot == latest_id.c.slot))
            .order_by(JobRun.job)
        ).all()
        counts: dict[str, dict[str, int]] = {}
        for job, outcome, count in self.session.execute(
            select(JobRun.job, JobRun.outcome, func.count()).group_by(JobRun.job, JobRun.outcome)
        ):
            counts.setdefault(job, dict.fromkeys(OUTCOMES, 0))[outcome] = count
        return [
            JobSummary(
                job=run.job,
                slot=run.slot,
                instance=run.instance,
                started_at=run.started_at,
                finished_at=run.finished_at,
                outcome=run.outcome,
                duration_us=run.duration_us,
                detail=run.detail,
                runs=counts.get(run.job, dict.fromkeys(OUTCOMES, 0)),
            )
            for run in latest
        ]

    def runs(self, job: str | None = None) -> list[JobRun]:
        """Every run on record (of JOB), oldest slot first."""
        query = select(JobRun).order_by(JobRun.job, JobRun.slot)
        if job is not None:
            query = query.where(JobRun.job == job)
        return list(self.session.scalars(query))
