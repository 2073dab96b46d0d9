"""Retention (quotad/retention): old samples thinned without changing a figure a user sees."""

from __future__ import annotations

import datetime as dt
import functools
import json
import random
import uuid
from collections import defaultdict
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from quotad.audit.models import AuditEntry
from quotad.billing.arithmetic import Period
from quotad.billing.service import BillingService
from quotad.cli import main
from quotad.config import BillingSettings, RatePlan, RetentionSettings
from quotad.db import session_scope
from quotad.jobs.models import JobRun
from quotad.ledger.models import UsageSample
from quotad.ledger.repository import LedgerRepository
from quotad.ledger.service import LedgerService, ScanInput
from quotad.members.service import MemberService
from quotad.models import metadata
from quotad.quotas.history import usage_history
from quotad.retention.service import RetentionResult, RetentionService
from scanners.base import Measurement
from tests.conftest import Ledger

GIB = 2**30
DAY = 86_400
NOW = dt.datetime(2026, 11, 30, 12, tzinfo=dt.UTC)
# A retention run a year on: 400 days back is 2026-10-27, so every finalized
# month below lies wholly before the cutoff.
LATER = dt.datetime(2027, 12, 1, 3, tzinfo=dt.UTC)
# A plan change mid-August (an open month): drafts are cut there too.
BILLING = BillingSettings(
    currency="USD",
    free_bytes=GIB,
    price_per_gib_month=Decimal("0.10"),
    changes=(RatePlan(dt.datetime(2026, 8, 20, 7, tzinfo=dt.UTC), GIB, Decimal("0.25")),),
)
PERIODS = ("2026-06", "2026-07", "2026-08", "2026-09", "2026-10")
# Finalized with a gap: 2026-08 and 2026-10 stay open drafts, so two carry-ins
# (the last samples before 08-01 and 10-01) must survive.
FINAL = ("2026-06", "2026-07", "2026-09")
MEMBERS = ("ann", "bob", "cy", "dee", "eve")
SOURCES = {"homes": "tree", "mail": "maildir"}
RESOURCES = ("r1", "r2", "r3")


def at(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC)


def sessions(ledger: Ledger) -> Any:
    return functools.partial(session_scope, ledger.engine)


def retention(ledger: Ledger, raw_samples: int | None = 400 * DAY, job_runs: int = 90 * DAY) -> Any:
    settings = RetentionSettings(raw_samples=raw_samples, job_runs=job_runs)
    return RetentionService(sessions(ledger), settings, actor="test")


def record(
    ledger: Ledger, source: str, when: dt.datetime, sizes: dict[str, tuple[str, int]]
) -> None:
    kind = SOURCES[source]
    item = ScanInput(
        scan_id=uuid.uuid4(),
        source=source,
        source_kind=kind,
        started_at=when - dt.timedelta(seconds=5),
        finished_at=when,
        measurements=[
            Measurement(member=who, kind=kind, name=name, bytes=size, files=1)
            for name, (who, size) in sizes.items()
        ],
    )
    with session_scope(ledger.engine, write=True) as session:
        LedgerService(session, actor="test").record(item)


def build(
    ledger: Ledger,
    *,
    seed: int = 8,
    final: tuple[str, ...] = FINAL,
    gaps: tuple[int, ...] = (1, 1, 2, 3),
) -> None:
    """Several scans a day on some days of 2026-06..10; owners change, resources vanish.

    ann is a member all along, bob joins mid-July (a finalized month), dee
    joins mid-August and leaves in October (open months), cy has no join
    date (the first measurement counts), and eve, with no join date either,
    is measured once only, in the middle of a finalized day whose last scan
    gives her resource to ann: her membership rests on that one sample.
    """
    with session_scope(ledger.engine, write=True) as session:
        members = MemberService(session, "test")
        members.add("ann", joined_at=at("2026-01-01"))
        members.add("bob", joined_at=at("2026-07-10T05:00:00"))
        members.add("cy")
        members.add("dee", joined_at=at("2026-08-15T12:00:00"), left_at=at("2026-10-20T00:00:00"))
        members.add("eve")
    rng = random.Random(seed)
    owners = {(s, r): "ann" for s in SOURCES for r in RESOURCES}
    day = at("2026-06-01")
    while day < at("2026-11-01"):
        times = sorted(rng.sample(range(1, 24 * 60 - 1), rng.randint(1, 4)))
        for minute in times:
            when = day + dt.timedelta(minutes=minute, seconds=rng.randint(0, 59))
            source = rng.choice(tuple(SOURCES))
            sizes = {}
            for name in RESOURCES:
                if rng.random() < 0.15:
                    continue  # a complete scan that no longer finds it: a zero row
                if rng.random() < 0.2:
                    owners[source, name] = rng.choice(("ann", "bob", "cy", "dee"))
                sizes[name] = (owners[source, name], rng.randint(0, 3 * GIB))
            record(ledger, source, when, sizes)
        day += dt.timedelta(days=rng.choice(gaps))
    record(ledger, "mail", at("2026-06-05T10:00:00"), {"r3": ("eve", 5 * GIB)})
    record(ledger, "mail", at("2026-06-05T18:00:00"), {"r3": ("ann", 2 * GIB)})
    # The day's last samples at one instant: the higher id is the later one.
    record(ledger, "homes", at("2026-09-12T23:59:59"), {"r1": ("cy", GIB)})
    record(ledger, "homes", at("2026-09-12T23:59:59"), {"r1": ("bob", 2 * GIB)})
    for period in final:
        with session_scope(ledger.engine, write=True) as session:
            BillingService(session, BILLING, "admin", now=NOW).finalize(Period.parse(period))


def figures(ledger: Ledger) -> dict[str, Any]:
    """Everything a user sees that rests on the samples."""
    result: dict[str, Any] = {}
    with session_scope(ledger.engine) as session:
        billing = BillingService(session, BILLING, now=NOW)
        for period in PERIODS:
            docs = billing.statements(Period.parse(period))
            result[period] = [(d.member, d.status, d.text) for d in docs]
        for name in MEMBERS:
            result[f"history {name}"] = usage_history(
                session,
                name,
                start=at("2026-05-30"),
                end=at("2026-11-02"),
                step="day",
                now=NOW,
            )
        result["current"] = LedgerRepository(session).current_rows()
    return result


def samples(ledger: Ledger) -> list[tuple[int, int, dt.datetime, int | None]]:
    with session_scope(ledger.engine) as session:
        rows = session.execute(
            select(
                UsageSample.id,
                UsageSample.resource_id,
                UsageSample.measured_at,
                UsageSample.member_id,
            ).order_by(UsageSample.id)
        )
        return [(i, r, m_at, m) for i, r, m_at, m in rows]


def in_periods(rows: list[Any], periods: tuple[str, ...]) -> list[Any]:
    return [r for r in rows if f"{r[2]:%Y-%m}" in periods]


@pytest.fixture
def built(ledger: Ledger) -> Ledger:
    build(ledger)
    return ledger


def test_thinning_changes_no_statement_history_point_or_current_usage(built: Ledger) -> None:
    ledger = built
    before = figures(ledger)
    rows_before = samples(ledger)
    result = retention(ledger).run(LATER)
    rows_after = samples(ledger)
    assert figures(ledger) == before
    assert result.samples_deleted == len(rows_before) - len(rows_after) > 100
    assert result.periods == list(FINAL)
    # Open months keep every sample.
    open_months = ("2026-08", "2026-10", "2026-11")
    assert in_periods(rows_after, open_months) == in_periods(rows_before, open_months)
    # In finalized months each resource keeps its last sample of each day, and
    # beyond it only a member's first sample.
    last: dict[tuple[int, dt.date], tuple[dt.datetime, int]] = {}
    for id_, resource, measured, _ in in_periods(rows_before, FINAL):
        key = (resource, measured.date())
        last[key] = max(last.get(key, (measured, id_)), (measured, id_))
    firsts: dict[int, tuple[dt.datetime, int]] = {}
    for id_, _, measured, member in rows_before:
        if member is not None:
            firsts[member] = min(firsts.get(member, (measured, id_)), (measured, id_))
    kept = {r[0] for r in in_periods(rows_after, FINAL)}
    assert {id_ for _, id_ in last.values()} <= kept
    assert kept - {id_ for _, id_ in last.values()} <= {id_ for _, id_ in firsts.values()}
    per_day: dict[tuple[int, dt.date], int] = defaultdict(int)
    for _, resource, measured, _ in in_periods(rows_after, FINAL):
        per_day[resource, measured.date()] += 1
    assert max(per_day.values()) <= 2
    assert sum(per_day.values()) == len(last) + 1  # eve's one sample is the extra


def test_a_second_run_deletes_nothing_and_a_dry_run_changes_nothing(built: Ledger) -> None:
    ledger = built
    rows = samples(ledger)
    dry = retention(ledger).run(LATER, dry_run=True)
    assert samples(ledger) == rows
    assert dry.samples_deleted > 0
    with session_scope(ledger.engine) as session:
        assert (
            session.scalar(
                select(func.count()).select_from(AuditEntry).where(AuditEntry.action == "retention")
            )
            == 0
        )
    done = retention(ledger).run(LATER)
    assert done.samples_deleted == dry.samples_deleted
    thinned = samples(ledger)
    assert done.periods_complete == list(FINAL)
    again = retention(ledger).run(LATER)
    assert again.samples_deleted == 0
    assert again.periods_complete == []  # done once: not read again
    assert samples(ledger) == thinned
    with session_scope(ledger.engine) as session:
        entries = session.scalars(select(AuditEntry).where(AuditEntry.action == "retention")).all()
    assert len(entries) == 1
    assert entries[0].detail is not None
    assert entries[0].detail["samples_deleted"] == done.samples_deleted


def test_nothing_is_thinned_before_the_cutoff_or_with_retention_off(built: Ledger) -> None:
    ledger = built
    rows = samples(ledger)
    # 400 days before this is 2026-08-27: only 2026-06 and 07 lie before it.
    early = retention(ledger).run(at("2027-10-01"), dry_run=True)
    assert early.periods == ["2026-06", "2026-07"]
    off = retention(ledger, raw_samples=None).run(LATER)
    assert (off.samples_deleted, off.periods) == (0, [])
    assert samples(ledger) == rows


def test_old_job_runs_are_pruned_but_each_jobs_latest_run_stays(ledger: Ledger) -> None:
    start = at("2026-01-01")
    with session_scope(ledger.engine, write=True) as session:
        for day in range(300):
            slot = start + dt.timedelta(days=day)
            session.add(
                JobRun(job="scan:mail", slot=slot, instance="a", started_at=slot, outcome="ok")
            )
        session.add(JobRun(job="rare", slot=start, instance="a", started_at=start, outcome="ok"))
    now = start + dt.timedelta(days=300)
    result = retention(ledger).run(now)
    with session_scope(ledger.engine) as session:
        left = session.execute(select(JobRun.job, JobRun.started_at)).all()
    cutoff = now - dt.timedelta(days=90)
    assert result.job_runs_deleted == 300 - 90
    assert ("rare", start) in left
    assert sorted(t for j, t in left if j == "scan:mail") == [
        start + dt.timedelta(days=d) for d in range(210, 300)
    ]
    assert all(t >= cutoff for j, t in left if j == "scan:mail")
    assert retention(ledger).run(now).job_runs_deleted == 0


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(list(args))
    return code, capsys.readouterr().out


def test_retention_command(ledger: Ledger, capsys: pytest.CaptureFixture[str]) -> None:
    with session_scope(ledger.engine, write=True) as session:
        MemberService(session, "test").add("ann", joined_at=at("2024-01-01"))
    for hour in (3, 9, 15, 21):
        record(ledger, "homes", at(f"2025-01-10T{hour:02d}:00:00"), {"r1": ("ann", hour * GIB)})
    with session_scope(ledger.engine, write=True) as session:
        BillingService(session, BILLING, "admin", now=NOW).finalize(Period.parse("2025-01"))
    config = ledger.config_file('[retention]\nraw_samples = "400d"\n')
    code, out = run_cli(capsys, "--config", str(config), "retention", "--dry-run", "--json")
    assert code == 0
    # The day's last sample stays, and ann's first (where her membership could begin).
    assert json.loads(out)["samples_deleted"] == 2
    assert len(samples(ledger)) == 4
    code, out = run_cli(capsys, "--config", str(config), "retention")
    assert code == 0
    assert "usage samples deleted: 2 (periods thinned: 2025-01)" in out
    assert [r[2] for r in samples(ledger)] == [at("2025-01-10T03:00:00"), at("2025-01-10T21:00:00")]


def test_result_as_json() -> None:
    result = RetentionResult(now=NOW, dry_run=True, thinned_before=at("2025-10-26"))
    assert result.as_json()["samples_thinned_before"] == "2025-10-26T00:00:00Z"


def test_a_carry_in_from_months_before_the_period_counts(ledger: Ledger) -> None:
    """Billing looks for a carry-in in the month before first (on PostgreSQL), then earlier."""
    with session_scope(ledger.engine, write=True) as session:
        MemberService(session, "test").add("ann", joined_at=at("2026-01-01"))
    record(ledger, "homes", at("2026-02-10T10:00:00"), {"r1": ("ann", 10 * GIB)})
    record(ledger, "mail", at("2026-08-31T23:59:59"), {"r2": ("ann", 3 * GIB)})
    with session_scope(ledger.engine) as session:
        doc = BillingService(session, BILLING, now=NOW).statement("ann", Period.parse("2026-09"))
    assert doc.body["average_bytes"] == 13 * GIB
    assert {line["kind"]: line["average_bytes"] for line in doc.body["lines"]} == {
        "tree": 10 * GIB,
        "maildir": 3 * GIB,
    }


def empty(ledger: Ledger) -> None:
    with ledger.engine.begin() as conn:
        for table in reversed(metadata.sorted_tables):
            conn.execute(table.delete())


@settings(
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=6,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    seed=st.integers(0, 10_000),
    final=st.sets(st.sampled_from(PERIODS)).map(lambda s: tuple(sorted(s))),
    cutoff_days=st.integers(0, 160),
)
def test_any_finalized_months_and_cutoff_change_no_figure(
    ledger: Ledger, seed: int, final: tuple[str, ...], cutoff_days: int
) -> None:
    """Whatever months are final and wherever the cutoff falls (mid-month too)."""
    empty(ledger)
    build(ledger, seed=seed, final=final, gaps=(2, 3, 5))
    before = figures(ledger)
    rows = samples(ledger)
    cutoff = at("2026-06-10") + dt.timedelta(days=cutoff_days)
    now = cutoff + dt.timedelta(days=2, hours=5)
    result = retention(ledger, raw_samples=2 * DAY).run(now)
    assert figures(ledger) == before
    left = samples(ledger)
    assert len(rows) - len(left) == result.samples_deleted
    gone = [r for r in rows if r not in left]
    assert all(f"{r[2]:%Y-%m}" in final and r[2] < cutoff for r in gone)
    assert retention(ledger, raw_samples=2 * DAY).run(now).samples_deleted == 0
