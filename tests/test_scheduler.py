"""The scheduler: slots, claiming, locks, the jobs it runs, and its view in /metrics."""

from __future__ import annotations

import datetime as dt
import threading
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import select

from quotad.billing.arithmetic import Period
from quotad.billing.service import BillingService
from quotad.db import session_scope, utcnow
from quotad.jobs.models import JobRun
from quotad.jobs.repository import JobRepository
from quotad.jobs.service import CLAIMED, LOCKED, RAN, JobResult, JobRunner
from quotad.ledger.models import Scan
from quotad.locks import job_lock
from quotad.scheduler import Scheduler, jobs, slot_of
from quotad.sources import cron_trigger
from tests.conftest import Ledger

UTC = dt.UTC
T0 = dt.datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def at(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=UTC)


# slots


@pytest.mark.parametrize(
    ("schedule", "now", "slot"),
    [
        # On time, a moment late, and late past the next slot (coalesced into it).
        ("*/15 * * * *", "2026-11-30T12:15:00", "2026-11-30T12:15:00"),
        ("*/15 * * * *", "2026-11-30T12:15:00.9", "2026-11-30T12:15:00"),
        ("*/15 * * * *", "2026-11-30T12:31:10", "2026-11-30T12:30:00"),
        ("*/2 * * * * *", "2026-11-30T12:00:05.5", "2026-11-30T12:00:04"),
        # Crontab's Sunday is 0: 2026-11-29 is a Sunday.
        ("0 3 * * 0", "2026-11-29T03:00:01", "2026-11-29T03:00:00"),
    ],
)
def test_slot_is_the_latest_fire_time(schedule: str, now: str, slot: str) -> None:
    lookback = dt.timedelta(minutes=20)
    assert slot_of(cron_trigger(schedule), at(now), lookback) == at(slot)


def test_no_slot_beyond_the_lookback() -> None:
    trigger = cron_trigger("0 3 * * *")
    assert slot_of(trigger, at("2026-11-30T04:00:00"), dt.timedelta(minutes=15)) is None


# the runner, on both ledgers


def counting(calls: list[dt.datetime], result: JobResult = (True, "done")):  # type: ignore[no-untyped-def]
    def run(slot: dt.datetime) -> JobResult:
        calls.append(slot)
        return result

    return run


def test_a_slot_runs_once_and_records_its_outcome(ledger: Ledger) -> None:
    calls: list[dt.datetime] = []
    first = JobRunner(ledger.engine, "host-a:1")
    second = JobRunner(ledger.engine, "host-b:2")
    assert first.run_slot("enforce", T0, counting(calls)).what == RAN
    assert second.run_slot("enforce", T0, counting(calls)).what == CLAIMED
    assert first.run_slot("enforce", T0, counting(calls)).what == CLAIMED
    assert second.run_slot("enforce", T0 + dt.timedelta(minutes=15), counting(calls)).what == RAN
    assert calls == [T0, T0 + dt.timedelta(minutes=15)]
    with session_scope(ledger.engine) as session:
        runs = JobRepository(session).runs("enforce")
    assert [(r.slot, r.instance, r.outcome, r.detail) for r in runs] == [
        (T0, "host-a:1", "ok", "done"),
        (T0 + dt.timedelta(minutes=15), "host-b:2", "ok", "done"),
    ]
    assert all(r.finished_at is not None and r.duration_us is not None for r in runs)


def test_a_failing_job_is_recorded_as_failed(ledger: Ledger) -> None:
    def broken(_slot: dt.datetime) -> JobResult:
        raise RuntimeError("vos not found")

    runner = JobRunner(ledger.engine, "host-a:1")
    outcome = runner.run_slot("scan:afs", T0, broken)
    assert (outcome.what, outcome.ok) == (RAN, False)
    assert runner.run_slot("scan:mail", T0, counting([], (False, "source failed"))).ok is False
    with session_scope(ledger.engine) as session:
        summaries = {s.job: s for s in JobRepository(session).summaries()}
    assert summaries["scan:afs"].outcome == "failed"
    assert summaries["scan:afs"].detail == "RuntimeError: vos not found"
    assert summaries["scan:mail"].detail == "source failed"
    assert summaries["scan:mail"].runs == {"running": 0, "ok": 0, "failed": 1}


def test_a_job_whose_lock_is_held_skips_its_slot(ledger: Ledger) -> None:
    calls: list[dt.datetime] = []
    runner = JobRunner(ledger.engine, "host-a:1")
    with job_lock(ledger.engine, "enforce") as held:
        assert held
        assert runner.run_slot("enforce", T0, counting(calls)).what == LOCKED
    assert calls == []
    # Skipped without a claim: the slot is still free once the lock is.
    assert runner.run_slot("enforce", T0, counting(calls)).what == RAN


def test_a_waiting_job_runs_when_the_lock_comes_free(ledger: Ledger) -> None:
    calls: list[dt.datetime] = []
    runner = JobRunner(ledger.engine, "host-a:1")
    release = threading.Event()

    def hold() -> None:
        with job_lock(ledger.engine, "scan:mail"):
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        threading.Timer(1.5, release.set).start()
        outcome = runner.run_slot(
            "full-rescan:mail", T0, counting(calls), lock="scan:mail", lock_wait=10
        )
    finally:
        release.set()
        holder.join()
    assert outcome.what == RAN
    assert calls == [T0]


def test_runs_left_running_by_a_dead_process_are_marked_failed(ledger: Ledger) -> None:
    with session_scope(ledger.engine, write=True) as session:
        JobRepository(session).claim("enforce", T0, "host-dead:9", T0)
    JobRunner(ledger.engine, "host-a:1").run_slot(
        "enforce", T0 + dt.timedelta(minutes=15), counting([])
    )
    with session_scope(ledger.engine) as session:
        runs = JobRepository(session).runs("enforce")
    assert [(r.instance, r.outcome) for r in runs] == [
        ("host-dead:9", "failed"),
        ("host-a:1", "ok"),
    ]
    assert runs[0].detail is not None
    assert "abandoned" in runs[0].detail


def test_many_instances_racing_for_one_slot_run_it_once(ledger: Ledger) -> None:
    calls: list[dt.datetime] = []
    lock = threading.Lock()
    # All six fire for each slot at the same moment, as schedulers on one
    # cron grid do.
    each_slot = threading.Barrier(6)
    outcomes: list[str] = []

    def job(slot: dt.datetime) -> JobResult:
        with lock:
            calls.append(slot)
        return True, "done"

    def race(index: int) -> None:
        runner = JobRunner(ledger.engine, f"host-{index}:1")
        for minute in range(0, 60, 15):
            each_slot.wait()
            outcome = runner.run_slot("enforce", T0 + dt.timedelta(minutes=minute), job)
            with lock:
                outcomes.append(outcome.what)

    threads = [threading.Thread(target=race, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(calls) == [T0 + dt.timedelta(minutes=m) for m in range(0, 60, 15)]
    counted = Counter(outcomes)
    assert counted[RAN] == 4
    assert counted[LOCKED] + counted[CLAIMED] == 20
    with session_scope(ledger.engine) as session:
        assert len(JobRepository(session).runs("enforce")) == 4


# the jobs themselves


def tree(base: Path, *members: str) -> Path:
    for name in members:
        (base / "homes" / name).mkdir(parents=True)
        (base / "homes" / name / "data").write_bytes(b"x" * 1000)
    return base / "homes"


def test_the_configuration_names_the_jobs(ledger: Ledger, tmp_path: Path) -> None:
    homes = tree(tmp_path, "alice")
    (tmp_path / "mail").mkdir()
    settings = ledger.settings(
        f"""
[scheduler]
billing = false
retention = false
[[sources]]
name = "homes"
kind = "tree"
path = "{homes}/{{member}}"
schedule = "0 * * * *"
[[sources]]
name = "mail"
kind = "maildir"
path = "{tmp_path}/mail/{{member}}/Maildir"
schedule = "*/30 * * * *"
[[sources]]
name = "unscheduled"
kind = "tree"
path = "{homes}/{{member}}"
"""
    )
    found = {j.name: (j.schedule, j.lock) for j in jobs(ledger.engine, settings)}
    assert found == {
        "scan:homes": ("0 * * * *", None),
        "scan:mail": ("*/30 * * * *", None),
        "full-rescan:mail": ("0 3 * * 0", "scan:mail"),
        "enforce": ("*/15 * * * *", None),
    }


def test_scan_and_enforce_jobs_do_their_work(ledger: Ledger, tmp_path: Path) -> None:
    homes = tree(tmp_path, "alice", "bob")
    settings = ledger.settings(
        f"""
[defaults.quota.total]
soft = "500B"
hard = "2KiB"
[[sources]]
name = "homes"
kind = "tree"
path = "{homes}/{{member}}"
schedule = "0 * * * *"
enforce = false
"""
    )
    by_name = {j.name: j for j in jobs(ledger.engine, settings)}
    runner = JobRunner(ledger.engine, "host-a:1")
    scan = by_name["scan:homes"]
    outcome = runner.run_slot(scan.name, T0, scan.func)
    assert outcome.ok, outcome.detail
    assert outcome.detail is not None
    assert "complete: 2 measured" in outcome.detail
    enforce = by_name["enforce"]
    outcome = runner.run_slot(enforce.name, T0, enforce.func)
    assert outcome.ok, outcome.detail
    with session_scope(ledger.engine) as session:
        assert session.scalar(select(Scan.status)) == "complete"
        from quotad.quotas.service import QuotaService  # noqa: PLC0415

        states = {
            u["member"]: u["quotas"][0]["state"]
            for u in QuotaService(session, settings, "test").report(utcnow())
        }
    assert states == {"alice": "soft", "bob": "soft"}


def test_a_failed_source_fails_its_job(ledger: Ledger, tmp_path: Path) -> None:
    settings = ledger.settings(
        f"""
[[sources]]
name = "homes"
kind = "tree"
path = "{tmp_path}/missing/{{member}}"
schedule = "0 * * * *"
"""
    )
    (scan,) = [j for j in jobs(ledger.engine, settings) if j.name == "scan:homes"]
    outcome = JobRunner(ledger.engine, "host-a:1").run_slot(scan.name, T0, scan.func)
    assert outcome.ok is False
    assert outcome.detail is not None
    assert "failed" in outcome.detail


def test_billing_job_finalizes_last_month_after_the_delay(ledger: Ledger) -> None:
    now = utcnow()
    last = Period.containing(now).previous()
    # Half a day ago, last month had ended long enough for "finalize_after =
    # 0s" but, for a delay longer than the time since then, not yet.
    since = int((now - last.end).total_seconds())
    waiting = ledger.settings(f'[billing]\nfinalize_after = "{since + 3600}s"')
    due = ledger.settings('[billing]\nfinalize_after = "0s"')
    runner = JobRunner(ledger.engine, "host-a:1")
    (job,) = [j for j in jobs(ledger.engine, waiting) if j.name == "billing"]
    outcome = runner.run_slot("billing", T0, job.func)
    assert outcome.ok, outcome.detail
    with session_scope(ledger.engine) as session:
        assert not BillingService(session, waiting.billing).is_finalized(last)
    (job,) = [j for j in jobs(ledger.engine, due) if j.name == "billing"]
    outcome = runner.run_slot("billing", T0 + dt.timedelta(hours=1), job.func)
    assert outcome.ok, outcome.detail
    assert outcome.detail is not None
    assert f"finalized {last}" in outcome.detail
    with session_scope(ledger.engine) as session:
        assert BillingService(session, due.billing).is_finalized(last)


def test_scheduler_runs_jobs_on_their_schedule(ledger: Ledger, tmp_path: Path) -> None:
    homes = tree(tmp_path, "alice")
    settings = ledger.settings(
        f"""
[scheduler]
enforce = "*/1 * * * * *"
billing = false
full_rescan = false
retention = false
misfire_grace = "5s"
[[sources]]
name = "homes"
kind = "tree"
path = "{homes}/{{member}}"
schedule = "*/1 * * * * *"
"""
    )
    seen = threading.Event()
    done: list[str] = []

    def note(job: object, outcome: object) -> None:
        done.append(getattr(job, "name", ""))
        if done.count("scan:homes") >= 2 and done.count("enforce") >= 2:
            seen.set()

    scheduler = Scheduler(ledger.engine, settings, "host-a:1")
    scheduler.on_outcome = note
    scheduler.start()
    try:
        assert seen.wait(20), done
    finally:
        scheduler.shutdown(wait=True)
    with session_scope(ledger.engine) as session:
        runs = list(session.scalars(select(JobRun)))
        scans = session.scalar(select(Scan.id).limit(1))
    assert {r.job for r in runs} == {"scan:homes", "enforce"}
    assert all(r.outcome == "ok" for r in runs), [(r.job, r.detail) for r in runs]
    assert all(r.slot.microsecond == 0 for r in runs)
    assert scans is not None


def test_quotad_scan_skips_a_source_whose_scheduled_scan_is_running(
    ledger: Ledger, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from quotad import cli  # noqa: PLC0415

    homes = tree(tmp_path, "alice")
    config = ledger.config_file(
        f"""
[[sources]]
name = "homes"
kind = "tree"
path = "{homes}/{{member}}"
[[sources]]
name = "other"
kind = "tree"
path = "{homes}/{{member}}"
"""
    )
    with job_lock(ledger.engine, "scan:homes") as held:
        assert held
        assert cli.main(["--config", str(config), "scan", "--json"]) == 0
    out, err = capsys.readouterr()
    assert "another scan of homes is running" in err
    assert '"source": "other"' in out
    assert '"source": "homes"' not in out
    with session_scope(ledger.engine) as session:
        assert len(list(session.scalars(select(Scan.id)))) == 1


def test_retention_job_prunes_old_job_runs_but_each_jobs_latest(ledger: Ledger) -> None:
    now = utcnow()
    old = now - dt.timedelta(days=200)
    with session_scope(ledger.engine, write=True) as session:
        repo = JobRepository(session)
        repo.claim("enforce", old, "host-a:1", old)
        repo.claim("enforce", old + dt.timedelta(minutes=15), "host-a:1", old)
        repo.claim("billing", old, "host-a:1", old)
    settings = ledger.settings('[retention]\njob_runs = "90d"')
    (job,) = [j for j in jobs(ledger.engine, settings) if j.name == "retention"]
    outcome = JobRunner(ledger.engine, "host-a:1").run_slot("retention", T0, job.func)
    assert outcome.ok, outcome.detail
    assert outcome.detail is not None
    assert "1 job runs pruned" in outcome.detail
    with session_scope(ledger.engine) as session:
        left = {(r.job, r.slot) for r in JobRepository(session).runs()}
    assert left == {
        ("enforce", old + dt.timedelta(minutes=15)),
        ("billing", old),
        ("retention", T0),
    }


def test_missed_slots_are_coalesced_into_one_run(ledger: Ledger) -> None:
    settings = ledger.settings(
        """
[scheduler]
enforce = "*/3 * * * * *"
billing = false
full_rescan = false
retention = false
misfire_grace = "30s"
"""
    )
    scheduler = Scheduler(ledger.engine, settings, "host-a:1")
    ran = threading.Event()
    scheduler.on_outcome = lambda _job, _outcome: ran.set()
    trigger = cron_trigger("*/3 * * * * *")
    # A process that was busy (or stopped) over several slots: paused, then
    # resumed 1.5 s after the last slot it missed.
    paused_at = utcnow()
    scheduler._aps.start(paused=True)
    try:
        threading.Event().wait(4)
        last_missed = slot_of(trigger, utcnow(), dt.timedelta(seconds=10))
        assert last_missed is not None
        resume_at = last_missed + dt.timedelta(seconds=4.5)
        threading.Event().wait((resume_at - utcnow()).total_seconds())
        resumed_at = utcnow()
        scheduler._aps.resume()
        assert ran.wait(10)
    finally:
        scheduler.shutdown(wait=True)
    with session_scope(ledger.engine) as session:
        slots = [r.slot for r in JobRepository(session).runs("enforce")]
    # The missed slots ran once, promptly, as the latest of them (1.5 s late,
    # within the grace); none of the earlier ones ran on its own.
    assert slots
    assert slots[0] == slot_of(trigger, resumed_at, dt.timedelta(seconds=10))
    assert resumed_at - dt.timedelta(seconds=2) < slots[0] < resumed_at
    assert paused_at < slots[0]
