"""Two `quotad serve` processes on one PostgreSQL ledger: every job slot runs exactly once."""

from __future__ import annotations

import datetime as dt
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import defaultdict
from pathlib import Path

import pytest
from sqlalchemy import func, select

from quotad.db import session_scope
from quotad.jobs.models import JobRun
from quotad.ledger.models import Scan, Source
from quotad.sources import cron_trigger
from tests.api.test_serve import free_port
from tests.conftest import Ledger

# Short cycles so that a few seconds hold many slots. The mail source's scan
# and its full rescan share a lock, so they are kept off each other's seconds.
SCHEDULES = {
    "scan:homes": "*/2 * * * * *",
    "scan:mail": "*/4 * * * * *",
    "full-rescan:mail": "2-58/4 * * * * *",
    "enforce": "*/2 * * * * *",
    "billing": "*/3 * * * * *",
}
RUN_SECONDS = 14


def config(ledger: Ledger, base: Path) -> Path:
    for name in ("alice", "bob"):
        (base / "homes" / name).mkdir(parents=True)
        (base / "homes" / name / "notes").write_bytes(b"n" * 4096)
        for sub in ("cur", "new", "tmp"):
            (base / "mail" / name / "Maildir" / sub).mkdir(parents=True)
        (base / "mail" / name / "Maildir" / "cur" / "1.M1P1.host,S=10:2,S").write_bytes(b"m" * 10)
    return ledger.config_file(
        f"""
[scheduler]
enforce = "{SCHEDULES["enforce"]}"
billing = "{SCHEDULES["billing"]}"
full_rescan = "{SCHEDULES["full-rescan:mail"]}"
retention = false
misfire_grace = "10s"
[[sources]]
name = "homes"
kind = "tree"
path = "{base}/homes/{{member}}"
schedule = "{SCHEDULES["scan:homes"]}"
[[sources]]
name = "mail"
kind = "maildir"
path = "{base}/mail/{{member}}/Maildir"
schedule = "{SCHEDULES["scan:mail"]}"
workers = 1
"""
    )


def start(config_file: Path, port: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "api", "--config", str(config_file), "serve", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_up(process: subprocess.Popen[str], port: int) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2):
                return
        except (urllib.error.URLError, ConnectionError):
            assert process.poll() is None, process.communicate()[0]
            assert time.monotonic() < deadline, "quotad serve did not start in 30 s"
            time.sleep(0.1)


def grid(schedule: str, first: dt.datetime, last: dt.datetime) -> list[dt.datetime]:
    """Every fire time of SCHEDULE from FIRST to LAST."""
    trigger = cron_trigger(schedule)
    times = []
    at = trigger.get_next_fire_time(None, first)
    while at is not None and at <= last:
        times.append(at)
        at = trigger.get_next_fire_time(at, at + dt.timedelta(seconds=1))
    return times


@pytest.mark.slow
@pytest.mark.parametrize("ledger", ["postgresql"], indirect=True)
def test_two_serve_instances_run_every_slot_exactly_once(ledger: Ledger, tmp_path: Path) -> None:
    config_file = config(ledger, tmp_path)
    ports = [free_port(), free_port()]
    processes = [start(config_file, port) for port in ports]
    outputs: list[str] = []
    try:
        for process, port in zip(processes, ports, strict=True):
            wait_up(process, port)
        time.sleep(RUN_SECONDS)
        # Either instance shows what both ran: the metrics come from the ledger.
        with urllib.request.urlopen(f"http://127.0.0.1:{ports[1]}/metrics", timeout=10) as r:
            metrics = r.read().decode()
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        outputs.extend(process.communicate(timeout=60)[0] for process in processes)
    for process, output in zip(processes, outputs, strict=True):
        assert process.returncode in {0, -signal.SIGTERM}, output
    with session_scope(ledger.engine) as session:
        runs = list(session.scalars(select(JobRun).order_by(JobRun.job, JobRun.slot)))
        counted = session.execute(
            select(Source.name, func.count(Scan.id))
            .join(Scan, Scan.source_id == Source.id)
            .group_by(Source.name)
        )
        scans = {str(row[0]): int(row[1]) for row in counted}
    by_job: dict[str, list[JobRun]] = defaultdict(list)
    for run in runs:
        by_job[run.job].append(run)
    assert set(by_job) == set(SCHEDULES)
    for job, job_runs in by_job.items():
        assert all(r.outcome == "ok" for r in job_runs), [(r.slot, r.detail) for r in job_runs]
        slots = [r.slot for r in job_runs]
        # Several cycles, each slot on the schedule's grid, and every slot
        # between the first and the last run once: none twice, none missed.
        assert len(slots) >= 3, (job, slots)
        assert slots == grid(SCHEDULES[job], slots[0], slots[-1]), (job, slots, outputs)
    # The work itself happened once per slot: one scan per scan or rescan run.
    assert scans["homes"] == len(by_job["scan:homes"])
    assert scans["mail"] == len(by_job["scan:mail"]) + len(by_job["full-rescan:mail"])
    instances = {r.instance for r in runs}
    assert 1 <= len(instances) <= 2
    for job in SCHEDULES:
        # The latest slot may be one still running when /metrics was asked
        # (scan:homes starts every 2 s); it is never a failure.
        assert (
            f'quotad_job_last_outcome{{job="{job}",outcome="ok"}} 1' in metrics
            or f'quotad_job_last_outcome{{job="{job}",outcome="running"}} 1' in metrics
        ), metrics
        assert f'quotad_job_last_outcome{{job="{job}",outcome="failed"}} 0' in metrics
        assert f'quotad_job_runs{{job="{job}",outcome="failed"}} 0' in metrics


def test_quotad_scheduler_runs_jobs_alone_and_stops_on_sigterm(ledger: Ledger) -> None:
    config_file = ledger.config_file(
        """
[scheduler]
enforce = "*/1 * * * * *"
billing = false
full_rescan = false
retention = false
"""
    )
    listed = subprocess.run(
        [sys.executable, "-m", "api", "--config", str(config_file), "scheduler", "--list"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert listed.stdout.split("\n")[0].split() == ["job", "schedule", "next", "run"]
    assert "enforce" in listed.stdout
    process = subprocess.Popen(
        [sys.executable, "-m", "api", "--config", str(config_file), "scheduler"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            with session_scope(ledger.engine) as session:
                done = session.scalar(select(func.count(JobRun.id)).where(JobRun.outcome == "ok"))
            if done:
                break
            assert process.poll() is None, process.communicate()[0]
            assert time.monotonic() < deadline, "quotad scheduler ran nothing in 30 s"
            time.sleep(0.2)
    finally:
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=30)[0]
    assert process.returncode == 0, output
    with session_scope(ledger.engine) as session:
        outcomes = set(session.scalars(select(JobRun.outcome)))
    # Stopped between runs or after letting the one in progress end.
    assert outcomes == {"ok"}
