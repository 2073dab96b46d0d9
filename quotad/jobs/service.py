"""Running one slot of a scheduled job at most once across every quotad sharing a ledger.

A run first takes the job's lock (quotad/locks.py: a PostgreSQL advisory
lock, or a file lock beside an SQLite ledger), so that a long run never
overlaps the next; then it claims its slot by inserting (job, slot) into
job_runs, whose unique index lets exactly one instance win. Whoever loses
either race skips the slot: the lock alone would not do, since an instance
whose timer fires a moment after another's run ended would find the lock
free and run the same slot again.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from quotad.db import session_scope, utcnow
from quotad.jobs.repository import FAILED, OK, JobRepository, JobSummary
from quotad.locks import job_lock

log = logging.getLogger(__name__)

# What a job returns: whether it did its work, and a line saying what it did.
JobResult = tuple[bool, str]
JobFunc = Callable[[dt.datetime], JobResult]

RAN = "ran"
LOCKED = "locked"
CLAIMED = "claimed"


@dataclass(frozen=True, slots=True)
class SlotOutcome:
    """What this instance did with a slot: ran it, or found it taken (and by what)."""

    what: str  # ran, locked (another run holds the job's lock), claimed (slot taken)
    ok: bool | None = None
    detail: str | None = None
    run_id: int | None = None


def instance_name() -> str:
    """This process as job_runs names it: host and process id."""
    return f"{socket.gethostname()}:{os.getpid()}"


class JobRunner:
    """Runs job slots against one ledger; one per scheduler process."""

    def __init__(self, engine: Engine, instance: str | None = None) -> None:
        self.engine = engine
        self.instance = instance or instance_name()

    def run_slot(
        self,
        job: str,
        slot: dt.datetime,
        func: JobFunc,
        *,
        lock: str | None = None,
        lock_wait: float = 0.0,
    ) -> SlotOutcome:
        """Run FUNC for JOB's SLOT unless another instance has it or is running JOB.

        LOCK names the lock when the job shares one with others (a source's
        scan and its full rescan); LOCK_WAIT is how long to wait for it.
        """
        deadline = time.monotonic() + lock_wait
        while True:
            with job_lock(self.engine, lock or job) as held:
                if held:
                    return self._claimed_run(job, slot, func)
            if time.monotonic() >= deadline:
                log.info("job %s slot %s skipped: its lock is held", job, slot.isoformat())
                return SlotOutcome(LOCKED)
            time.sleep(min(1.0, max(deadline - time.monotonic(), 0.0)))

    def _claimed_run(self, job: str, slot: dt.datetime, func: JobFunc) -> SlotOutcome:
        started = utcnow()
        try:
            with session_scope(self.engine, write=True) as session:
                repo = JobRepository(session)
                run_id = repo.claim(job, slot, self.instance, started)
                repo.abandon(job, run_id, started)
        except IntegrityError:
            log.info("job %s slot %s already run by another instance", job, slot.isoformat())
            return SlotOutcome(CLAIMED)
        clock = time.perf_counter_ns()
        try:
            ok, detail = func(slot)
        except Exception as exc:
            # A job's failure is recorded and shown; it never stops the scheduler.
            log.exception("job %s failed", job)
            ok, detail = False, f"{type(exc).__name__}: {exc}"
        duration_us = (time.perf_counter_ns() - clock) // 1000
        with session_scope(self.engine, write=True) as session:
            JobRepository(session).finish(
                run_id, OK if ok else FAILED, utcnow(), duration_us, detail
            )
        log.log(
            logging.INFO if ok else logging.WARNING,
            "job %s slot %s %s in %.3f s: %s",
            job,
            slot.isoformat(),
            "done" if ok else "FAILED",
            duration_us / 1e6,
            detail,
            # Fields of their own in JSON logs, for whoever graphs the jobs.
            extra={
                "slot": slot.isoformat(),
                "outcome": OK if ok else FAILED,
                "duration_us": duration_us,
                "run_id": run_id,
            },
        )
        return SlotOutcome(RAN, ok, detail, run_id)


def job_summaries(session: Session) -> list[JobSummary]:
    """Every job on record: its latest run and its runs per outcome."""
    return JobRepository(session).summaries()
