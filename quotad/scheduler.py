"""The built-in scheduler (APScheduler 3): scans, enforcement, billing, full rescans, retention.

Each job fires on its cron schedule in UTC and runs through JobRunner, so that
several processes sharing one ledger (API replicas each with a scheduler, or
`quotad scheduler` on two hosts) run every slot exactly once. A run that
starts late (a busy or restarted process) within `[scheduler]
misfire_grace` still runs, once for all the slots it missed; later than that
it is dropped and the next slot runs. Every job is also a CLI command, so cron
can drive any of them instead.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from quotad.billing.arithmetic import Period
from quotad.billing.service import BillingService
from quotad.config import Settings, SourceSettings
from quotad.db import session_scope, utcnow
from quotad.enforcement.service import EnforcementService
from quotad.enforcers.notify import Notifier
from quotad.jobs.service import JobFunc, JobResult, JobRunner, SlotOutcome
from quotad.logs import log_context
from quotad.retention.service import RetentionService
from quotad.scanning import scan_and_record
from quotad.sources import cron_trigger
from quotad.timeutil import format_time

log = logging.getLogger(__name__)

ACTOR = "scheduler"
# The kinds whose scanner keeps a cache that a full rescan reads past.
CACHED_KINDS = frozenset({"maildir"})
# How far back a fired job looks for the slot it stands for. APScheduler never
# runs a job later than its misfire grace, so a slot is always found in it.
SLOT_MARGIN = dt.timedelta(seconds=5)


@dataclass(frozen=True, slots=True)
class Job:
    name: str
    schedule: str
    func: JobFunc
    # Jobs that must not overlap share a lock: a source's scan and its full rescan.
    lock: str | None = None
    lock_wait: float = 0.0

    @property
    def trigger(self) -> CronTrigger:
        return cron_trigger(self.schedule)


def slot_of(trigger: CronTrigger, now: dt.datetime, lookback: dt.timedelta) -> dt.datetime | None:
    """The latest fire time of TRIGGER at or before NOW, looking back at most LOOKBACK."""
    found = None
    at = trigger.get_next_fire_time(None, now - lookback)
    # Cron fire times are whole seconds: one second on is the next candidate.
    while at is not None and at <= now:
        found = at
        at = trigger.get_next_fire_time(at, at + dt.timedelta(seconds=1))
    return found


def scan_job(engine: Engine, settings: Settings, source: SourceSettings, *, full: bool) -> JobFunc:
    def run(_slot: dt.datetime) -> JobResult:
        (outcome,) = scan_and_record(engine, settings, [source], ACTOR, full=full)
        if outcome.result is None:
            return False, f"recording failed: {outcome.record_error}"
        scan = outcome.scan
        words = f"scan {scan.scan_id} {outcome.result.status}: {len(scan.measurements)} measured"
        if scan.failures:
            words += f", {len(scan.failures)} failed"
        if scan.error:
            words += f": {scan.error}"
        return not outcome.failed, words

    return run


def enforce_job(engine: Engine, settings: Settings) -> JobFunc:
    def run(_slot: dt.datetime) -> JobResult:
        service = EnforcementService(
            lambda *, write: session_scope(engine, write=write),
            settings,
            actor=ACTOR,
            notifier=Notifier(settings.smtp, settings.enforcement.templates),
        )
        plan = service.apply(service.plan(utcnow(), dry_run=settings.enforcement.dry_run))
        done = len(plan.changes) - plan.failed
        words = f"enforce {plan.run_id}: {done} of {len(plan.changes)} changes done"
        if plan.dry_run:
            words += " (dry run)"
        return plan.failed == 0, words

    return run


def billing_job(engine: Engine, settings: Settings) -> JobFunc:
    """Drafts of this month (so that a broken price or ledger shows before the month ends).

    With `[billing] finalize_after`, also finalizes last month once that long
    has passed since it ended.
    """

    def run(_slot: dt.datetime) -> JobResult:
        now = utcnow()
        words = []
        after = settings.billing.finalize_after
        last = Period.containing(now).previous()
        if after is not None and now >= last.end + dt.timedelta(seconds=after):
            with session_scope(engine) as session:
                final = BillingService(session, settings.billing, ACTOR, now=now).is_finalized(last)
            if not final:
                with session_scope(engine, write=True) as session:
                    result = BillingService(session, settings.billing, ACTOR, now=now).finalize(
                        last
                    )
                words.append(f"finalized {last}: {result.statements} statements")
        period = Period.containing(now)
        with session_scope(engine) as session:
            docs = BillingService(session, settings.billing, ACTOR, now=now).statements(period)
        words.append(f"{len(docs)} drafts for {period}")
        return True, "; ".join(words)

    return run


def retention_job(engine: Engine, settings: Settings) -> JobFunc:
    def run(_slot: dt.datetime) -> JobResult:
        service = RetentionService(
            functools.partial(session_scope, engine), settings.retention, actor=ACTOR
        )
        result = service.run(utcnow())
        periods = ", ".join(result.periods) or "none"
        words = (
            f"{result.samples_deleted} samples thinned (periods {periods}), "
            f"{result.job_runs_deleted} job runs pruned"
        )
        if result.partitions_created:
            words += f", partitions created: {', '.join(result.partitions_created)}"
        return True, words

    return run


def jobs(engine: Engine, settings: Settings) -> list[Job]:
    """Every job the configuration asks for."""
    result = [
        Job(f"scan:{s.name}", s.schedule, scan_job(engine, settings, s, full=False))
        for s in settings.sources
        if s.schedule is not None
    ]
    plan = settings.scheduler
    if plan.full_rescan is not None:
        # A full rescan waits for a scan of its source in flight rather than
        # miss its week.
        result.extend(
            Job(
                f"full-rescan:{s.name}",
                plan.full_rescan,
                scan_job(engine, settings, s, full=True),
                lock=f"scan:{s.name}",
                lock_wait=float(plan.misfire_grace),
            )
            for s in settings.sources
            if s.schedule is not None and s.kind in CACHED_KINDS
        )
    if plan.enforce is not None:
        # The lock `quotad enforce` takes too, so cron and the scheduler never overlap.
        result.append(Job("enforce", plan.enforce, enforce_job(engine, settings)))
    if plan.billing is not None:
        result.append(Job("billing", plan.billing, billing_job(engine, settings)))
    if plan.retention is not None:
        # The lock `quotad retention` takes too.
        result.append(Job("retention", plan.retention, retention_job(engine, settings)))
    return result


class Scheduler:
    """APScheduler running every job of SETTINGS in background threads."""

    def __init__(self, engine: Engine, settings: Settings, instance: str | None = None) -> None:
        self.engine = engine
        self.settings = settings
        self.runner = JobRunner(engine, instance)
        self.jobs = jobs(engine, settings)
        self.grace = dt.timedelta(seconds=settings.scheduler.misfire_grace)
        self._aps = BackgroundScheduler(
            timezone=dt.UTC,
            # Scans of different sources run side by side; one job never twice at once.
            executors={"default": ThreadPoolExecutor(max_workers=4)},
            job_defaults={
                "coalesce": True,
                "max_instances": 1,
                "misfire_grace_time": settings.scheduler.misfire_grace,
            },
        )
        for job in self.jobs:
            self._aps.add_job(self._fire, job.trigger, args=(job,), id=job.name, name=job.name)
        # Tests and `quotad scheduler --list` look at what ran.
        self.on_outcome: Callable[[Job, SlotOutcome], None] | None = None
        self._stopped = threading.Event()

    def _fire(self, job: Job) -> None:
        # APScheduler's worker threads start with an empty log context.
        with log_context(job=job.name):
            self._run(job)

    def _run(self, job: Job) -> None:
        now = utcnow()
        slot = slot_of(job.trigger, now, self.grace + SLOT_MARGIN)
        if slot is None:  # pragma: no cover - APScheduler fires within the grace
            log.warning("job %s fired at %s outside any slot", job.name, format_time(now))
            return
        try:
            outcome = self.runner.run_slot(
                job.name, slot, job.func, lock=job.lock, lock_wait=job.lock_wait
            )
        except SQLAlchemyError as exc:
            # The ledger is down or not migrated yet: this slot is lost, the
            # next one tries again; `quotad check` and /metrics show the gap.
            log.warning("job %s slot %s not run: ledger unavailable: %s", job.name, slot, exc)
            return
        if self.on_outcome is not None:
            self.on_outcome(job, outcome)

    def next_runs(self) -> list[tuple[str, dt.datetime | None]]:
        now = utcnow()
        return [(job.name, job.trigger.get_next_fire_time(None, now)) for job in self.jobs]

    def start(self) -> None:
        self._aps.start()
        log.info(
            "scheduler %s started with %d jobs: %s",
            self.runner.instance,
            len(self.jobs),
            ", ".join(j.name for j in self.jobs) or "none",
        )

    def shutdown(self, *, wait: bool = True) -> None:
        """Stop firing; WAIT: let runs in progress end (each records its outcome)."""
        if self._aps.running:
            self._aps.shutdown(wait=wait)
        self._stopped.set()
