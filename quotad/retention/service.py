"""Retention: old raw samples thinned to one per resource and day, old job runs pruned.

The rule, and why no figure a user sees changes:

- Only samples in finalized billing periods are thinned (their statements
  are stored and never computed again), and only whole UTC days older than
  `retention.raw_samples`. Drafts of open periods read only their own
  samples and each resource's carry-in, the last sample before the period:
  the last sample of a day is always kept, so every carry-in is.
- Kept of each resource and UTC day: its last sample (by time, then id), whose
  value holds until the next day's first sample, so the step function at
  every midnight, and with it `/me/usage/history?step=day`, is unchanged.
  Zero rows (`present = False`) are samples like the others.
- Also kept: each member's first sample (an unset joined_at begins there, so
  membership in open periods is unchanged), and any sample at the instant
  current_usage shows (the latest sample of a resource is its last day's
  last, so this never removes one; it is a second lock on the door).
- Attribution: a resource charged to one member early in a day and to
  another at its end keeps only the day-end sample. Finalized statements are
  stored, so the earlier attribution only mattered to hour-step history
  charts, which lose their intra-day detail in thinned days anyway.
- measurement_failures, scans and current_usage are left alone.

Deleting is the one exception to the append-only ledger; each run records
what it removed in the audit log (action `retention`) and in the log. Work
is done in bounded transactions (one month of a slice of resources each), so
that a year of samples never sits in one transaction; a run that stops
half-way leaves a consistent ledger, and the next run finishes the job. A
second run deletes nothing. A finalized period thinned to its end can take no
new sample, so the audit entry names it (`periods_complete`) and later runs
skip it rather than read the thinned history again every day.
"""

from __future__ import annotations

import datetime as dt
import logging
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlalchemy.orm import Session

from quotad.audit.service import AuditService
from quotad.billing.arithmetic import Period
from quotad.config import RetentionSettings
from quotad.retention.repository import PartitionRepository, RetentionRepository
from quotad.timeutil import format_time

log = logging.getLogger(__name__)


# sessions(write=...) opens one unit of work that commits when its block
# ends (a partial of quotad.db.session_scope): each batch is its own.
class Sessions(Protocol):
    def __call__(self, *, write: bool) -> AbstractContextManager[Session]: ...


# Resources per transaction when thinning one month: a year of six-hourly
# samples of this many resources is a few hundred thousand rows at most.
RESOURCES_PER_BATCH = 1000
# The audit log's action for a retention run.
ACTION = "retention"
# Monthly partitions kept ready beyond the current month (PostgreSQL).
PARTITIONS_AHEAD = 3


@dataclass(slots=True)
class RetentionResult:
    """What one run removed (or, in a dry run, would remove)."""

    now: dt.datetime
    dry_run: bool
    # Samples before this UTC midnight may be thinned; None: raw_samples = false.
    thinned_before: dt.datetime | None
    periods: list[str] = field(default_factory=list)
    # Finalized periods thinned to their end: no sample can land in them any
    # more, so later runs skip them (read back from the audit log).
    periods_complete: list[str] = field(default_factory=list)
    samples_deleted: int = 0
    job_runs_before: dt.datetime | None = None
    job_runs_deleted: int = 0
    partitions_created: list[str] = field(default_factory=list)
    batches: int = 0

    def as_json(self) -> dict[str, Any]:
        return {
            "at": format_time(self.now),
            "dry_run": self.dry_run,
            "samples_thinned_before": (
                format_time(self.thinned_before) if self.thinned_before else None
            ),
            "periods": self.periods,
            "periods_complete": self.periods_complete,
            "samples_deleted": self.samples_deleted,
            "job_runs_before": format_time(self.job_runs_before) if self.job_runs_before else None,
            "job_runs_deleted": self.job_runs_deleted,
            "partitions_created": self.partitions_created,
            "batches": self.batches,
        }


def midnight(at: dt.datetime) -> dt.datetime:
    """The UTC midnight that begins AT's day."""
    return at.astimezone(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)


class RetentionService:
    def __init__(
        self, sessions: Sessions, settings: RetentionSettings, *, actor: str = "quotad"
    ) -> None:
        self.sessions = sessions
        self.settings = settings
        self.actor = actor

    def windows(
        self, now: dt.datetime, finalized: list[str]
    ) -> list[tuple[str, Period, dt.datetime]]:
        """(name, period, end): each finalized period's whole days before the cutoff end at END."""
        if self.settings.raw_samples is None:
            return []
        cutoff = midnight(now - dt.timedelta(seconds=self.settings.raw_samples))
        result = []
        for name in finalized:
            period = Period.parse(name)
            end = min(period.end, cutoff)
            if end > period.start:
                result.append((name, period, end))
        return result

    def run(self, now: dt.datetime, *, dry_run: bool = False) -> RetentionResult:
        """Thin old samples, prune old job runs, keep partitions ahead; the counts."""
        raw = self.settings.raw_samples
        result = RetentionResult(
            now=now,
            dry_run=dry_run,
            thinned_before=(midnight(now - dt.timedelta(seconds=raw)) if raw is not None else None),
            job_runs_before=now - dt.timedelta(seconds=self.settings.job_runs),
        )
        if not dry_run:
            with self.sessions(write=True) as session:
                result.partitions_created = PartitionRepository(session).ensure_partitions(
                    now, PARTITIONS_AHEAD
                )
        with self.sessions(write=False) as session:
            repo = RetentionRepository(session)
            done = repo.completed_periods(ACTION)
            finalized = [p for p in repo.finalized_periods() if p not in done]
            windows = self.windows(now, finalized)
            resources = repo.resource_ids() if windows else []
        slices = [
            (resources[i], resources[min(i + RESOURCES_PER_BATCH, len(resources)) - 1])
            for i in range(0, len(resources), RESOURCES_PER_BATCH)
        ]
        for name, period, end in windows:
            deleted = 0
            for first, last in slices:
                with self.sessions(write=not dry_run) as session:
                    repo = RetentionRepository(session)
                    if dry_run:
                        deleted += repo.count_thinnable(period.start, end, first, last)
                    else:
                        deleted += repo.thin(period.start, end, first, last)
                result.batches += 1
            if deleted:
                result.periods.append(name)
                result.samples_deleted += deleted
            if end == period.end:
                result.periods_complete.append(name)
        result.job_runs_deleted = self._job_runs(result, dry_run=dry_run)
        self._record(result)
        return result

    def _job_runs(self, result: RetentionResult, *, dry_run: bool) -> int:
        before = result.job_runs_before
        if before is None:  # pragma: no cover - always set by run()
            return 0
        if dry_run:
            with self.sessions(write=False) as session:
                return RetentionRepository(session).count_old_job_runs(before)
        total = 0
        while True:
            with self.sessions(write=True) as session:
                deleted = RetentionRepository(session).delete_old_job_runs(before)
            result.batches += 1
            total += deleted
            if not deleted:
                return total

    def _record(self, result: RetentionResult) -> None:
        what = "would delete" if result.dry_run else "deleted"
        log.info(
            "retention %s %d usage samples (periods %s) and %d job runs; partitions created: %s",
            what,
            result.samples_deleted,
            ", ".join(result.periods) or "none",
            result.job_runs_deleted,
            ", ".join(result.partitions_created) or "none",
        )
        changed = (
            result.samples_deleted
            or result.job_runs_deleted
            or result.partitions_created
            or result.periods_complete
        )
        if result.dry_run or not changed:
            return
        with self.sessions(write=True) as session:
            detail = result.as_json()
            AuditService(session, self.actor).record(
                ACTION,
                "ledger",
                reason="retention policy: [retention] raw_samples and job_runs",
                detail=detail,
            )
