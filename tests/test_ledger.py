"""Recording scans: all or nothing, idempotent, authoritative, never silently lower."""

from __future__ import annotations

import dataclasses
import datetime as dt
import random
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, text

from quotad.db import make_engine, session_scope, table_of
from quotad.errors import Conflict, InvalidInput
from quotad.ledger import repository
from quotad.ledger.models import CurrentUsage, MeasurementFailure, Resource, Scan, UsageSample
from quotad.ledger.service import LedgerService, RecordResult, ScanInput, over_since
from quotad.members.models import Member
from quotad.members.service import MemberService
from scanners.base import Measurement, ResourceFailure
from tests.conftest import Ledger

T0 = dt.datetime(2026, 11, 1, 3, 0, tzinfo=dt.UTC)


def scan(
    at: dt.datetime,
    measurements: Sequence[Measurement] = (),
    failures: Sequence[ResourceFailure] = (),
    *,
    error: str | None = None,
    source: str = "homes",
    scan_id: uuid.UUID | None = None,
) -> ScanInput:
    return ScanInput(
        scan_id=scan_id or uuid.uuid4(),
        source=source,
        source_kind="tree",
        started_at=at - dt.timedelta(seconds=30),
        finished_at=at,
        measurements=list(measurements),
        failures=list(failures),
        error=error,
    )


def m(member: str | None, size: int, files: int = 1, name: str | None = None) -> Measurement:
    return Measurement(
        member=member, kind="tree", name=name or member or "x", bytes=size, files=files
    )


def record(ledger: Ledger, item: ScanInput, *, auto_register: bool = True) -> RecordResult:
    with session_scope(ledger.engine, write=True) as session:
        return LedgerService(session, auto_register=auto_register).record(item)


def current(ledger: Ledger) -> dict[str, tuple[int, int, str | None, str | None]]:
    """resource name -> (bytes, files, member, error) for resources still present."""
    with session_scope(ledger.engine) as session:
        names = {mem.id: mem.name for mem in session.scalars(select(Member))}
        return {
            r.name: (r.bytes, r.files, names.get(r.member_id) if r.member_id else None, r.error)
            for r in LedgerService(session).current()
        }


def count(ledger: Ledger, model: type) -> int:
    with session_scope(ledger.engine) as session:
        return session.scalar(select(func.count()).select_from(model)) or 0


def test_complete_scan_is_recorded_and_registers_members(ledger: Ledger) -> None:
    result = record(ledger, scan(T0, [m("alice", 1000, 3), m("bob", 2500, 7)]))
    assert result.created
    assert result.status == "complete"
    assert current(ledger) == {"alice": (1000, 3, "alice", None), "bob": (2500, 7, "bob", None)}
    with session_scope(ledger.engine) as session:
        assert [x.name for x in MemberService(session, "t").list()] == ["alice", "bob"]


def test_same_scan_twice_counts_once(ledger: Ledger) -> None:
    item = scan(T0, [m("alice", 1000)])
    assert record(ledger, item).created
    again = record(ledger, item)
    assert not again.created
    assert again.status == "complete"
    assert count(ledger, UsageSample) == 1
    assert count(ledger, Scan) == 1
    assert current(ledger) == {"alice": (1000, 1, "alice", None)}


def test_same_scan_id_with_other_content_conflicts(ledger: Ledger) -> None:
    scan_id = uuid.uuid4()
    record(ledger, scan(T0, [m("alice", 1000)], scan_id=scan_id))
    with pytest.raises(Conflict):
        record(ledger, scan(T0, [m("alice", 1001)], scan_id=scan_id))
    assert current(ledger) == {"alice": (1000, 1, "alice", None)}


def test_failed_source_keeps_previous_values(ledger: Ledger) -> None:
    record(ledger, scan(T0, [m("alice", 1000), m("bob", 2000)]))
    failed = record(ledger, scan(T0 + dt.timedelta(hours=6), error="root /srv/home is missing"))
    assert failed.status == "failed"
    assert current(ledger) == {"alice": (1000, 1, "alice", None), "bob": (2000, 1, "bob", None)}
    with session_scope(ledger.engine) as session:
        statuses = LedgerService(session).source_status()
    assert [(s.source, s.status, s.error) for s in statuses] == [
        ("homes", "failed", "root /srv/home is missing")
    ]


def test_failed_resource_keeps_its_value_and_the_rest_counts(ledger: Ledger) -> None:
    record(ledger, scan(T0, [m("alice", 1000), m("bob", 2000)]))
    later = T0 + dt.timedelta(hours=6)
    result = record(
        ledger,
        scan(
            later,
            [m("alice", 1500)],
            [
                ResourceFailure(
                    "bob", "tree", "bob", "cannot read /srv/home/bob/x: Permission denied"
                )
            ],
        ),
    )
    assert result.status == "partial"
    assert current(ledger) == {
        "alice": (1500, 1, "alice", None),
        "bob": (2000, 1, "bob", "cannot read /srv/home/bob/x: Permission denied"),
    }
    # Once measurable again, the error is gone and the new value counts.
    record(ledger, scan(later + dt.timedelta(hours=6), [m("alice", 1500), m("bob", 100)]))
    assert current(ledger)["bob"] == (100, 1, "bob", None)


def test_complete_scan_is_authoritative(ledger: Ledger) -> None:
    record(ledger, scan(T0, [m("alice", 1000), m("bob", 2000)]))
    result = record(ledger, scan(T0 + dt.timedelta(hours=6), [m("alice", 1000)]))
    assert result.zeroed == 1
    assert current(ledger) == {"alice": (1000, 1, "alice", None)}
    with session_scope(ledger.engine) as session:
        zero = session.scalars(select(UsageSample).where(UsageSample.present.is_(False))).one()
    assert (zero.bytes, zero.files) == (0, 0)
    # Absent stays absent: the next scan writes no second zero.
    assert record(ledger, scan(T0 + dt.timedelta(hours=12), [m("alice", 1000)])).zeroed == 0
    # Other sources are not touched by this source's authority.
    record(ledger, scan(T0 + dt.timedelta(hours=13), [m("carol", 5, name="carol")], source="mail"))
    assert set(current(ledger)) == {"alice", "carol"}


def test_partial_scan_does_not_zero_the_failed_resource(ledger: Ledger) -> None:
    record(ledger, scan(T0, [m("alice", 1000), m("bob", 2000)]))
    record(
        ledger,
        scan(
            T0 + dt.timedelta(hours=1),
            [m("alice", 1000)],
            [ResourceFailure("bob", "tree", "bob", "busy")],
        ),
    )
    assert current(ledger)["bob"][:2] == (2000, 1)


def test_late_scan_never_overrides_a_newer_one(ledger: Ledger) -> None:
    record(ledger, scan(T0 + dt.timedelta(hours=6), [m("alice", 2000)]))
    record(ledger, scan(T0, [m("alice", 1000), m("bob", 10)]))
    now = current(ledger)
    assert now["alice"] == (2000, 1, "alice", None)
    # The late scan still adds its history and its new resource.
    assert now["bob"] == (10, 1, "bob", None)
    assert count(ledger, UsageSample) == 3


def test_unknown_members_stay_unattributed_without_auto_register(ledger: Ledger) -> None:
    with session_scope(ledger.engine, write=True) as session:
        MemberService(session, "t").add("alice")
    record(
        ledger,
        scan(T0, [m("alice", 1000), m("mallory", 99), m(None, 5, name="Weird")]),
        auto_register=False,
    )
    assert current(ledger) == {
        "alice": (1000, 1, "alice", None),
        "mallory": (99, 1, None, None),
        "Weird": (5, 1, None, None),
    }
    with session_scope(ledger.engine) as session:
        assert [x.name for x in MemberService(session, "t").list()] == ["alice"]
        unattributed = LedgerService(session).current(unattributed=True)
    assert sorted(r.name for r in unattributed) == ["Weird", "mallory"]


def test_invalid_scans_are_refused_whole(ledger: Ledger) -> None:
    with pytest.raises(InvalidInput):
        record(ledger, scan(T0, [m("alice", 1), m("alice", 2)]))
    with pytest.raises(InvalidInput):
        record(ledger, scan(T0, [m("Not A Member", 1)]))
    bad_times = ScanInput(uuid.uuid4(), "homes", "tree", T0, T0 - dt.timedelta(seconds=1))
    with pytest.raises(InvalidInput):
        record(ledger, bad_times)
    assert count(ledger, Scan) == 0
    assert count(ledger, Member) == 0


def test_source_kind_cannot_change(ledger: Ledger) -> None:
    record(ledger, scan(T0, [m("alice", 1)]))
    other = ScanInput(uuid.uuid4(), "homes", "maildir", T0, T0 + dt.timedelta(seconds=1))
    with pytest.raises(Conflict):
        record(ledger, other)


def test_failure_in_the_middle_rolls_back_everything(ledger: Ledger) -> None:
    record(ledger, scan(T0, [m("alice", 1000)]))
    before = (count(ledger, UsageSample), count(ledger, Scan), count(ledger, Member))

    def crash() -> None:
        with session_scope(ledger.engine, write=True) as session:
            LedgerService(session).record(
                scan(T0 + dt.timedelta(hours=1), [m("alice", 5), m("zed", 7)])
            )
            raise RuntimeError("crash after the inserts, before the commit")

    with pytest.raises(RuntimeError):
        crash()
    assert (count(ledger, UsageSample), count(ledger, Scan), count(ledger, Member)) == before
    assert current(ledger) == {"alice": (1000, 1, "alice", None)}


def test_current_usage_rebuilds_from_the_samples(ledger: Ledger) -> None:
    record(ledger, scan(T0, [m("alice", 1000), m("bob", 2000), m("carol", 1)]))
    record(
        ledger,
        scan(
            T0 + dt.timedelta(hours=1),
            [m("alice", 1100), m("carol", 2)],
            [ResourceFailure("bob", "tree", "bob", "unreadable")],
        ),
    )
    record(
        ledger,
        scan(
            T0 + dt.timedelta(hours=2),
            [m("alice", 1200), m("dave", 3, name="dave")],
            [ResourceFailure("bob", "tree", "bob", "still unreadable")],
        ),
    )

    def snapshot() -> list[tuple[object, ...]]:
        with session_scope(ledger.engine) as session:
            return [
                (
                    c.resource_id,
                    c.member_id,
                    c.bytes,
                    c.files,
                    c.present,
                    c.measured_at,
                    c.error,
                    c.error_at,
                )
                for c in session.scalars(select(CurrentUsage).order_by(CurrentUsage.resource_id))
            ]

    incremental = snapshot()
    with session_scope(ledger.engine, write=True) as session:
        session.execute(text("DELETE FROM current_usage"))
    assert snapshot() == []
    with session_scope(ledger.engine, write=True) as session:
        LedgerService(session).rebuild_current_usage()
    assert snapshot() == incremental
    assert count(ledger, MeasurementFailure) == 2


def test_scans_in_the_same_second_count_in_the_order_they_were_recorded(
    ledger: Ledger,
) -> None:
    # Scan times are whole seconds: two scans of one source can share one.
    record(ledger, scan(T0, [m("alice", 10), m("bob", 20), m("carol", 30)]))
    # The later one is authoritative all the same: bob has gone.
    record(ledger, scan(T0, [m("alice", 11), m("carol", 31)]))
    assert current(ledger) == {"alice": (11, 1, "alice", None), "carol": (31, 1, "carol", None)}
    # A failure in that second is shown, over the value it keeps.
    record(ledger, scan(T0, [m("alice", 12)], [ResourceFailure("carol", "tree", "carol", "busy")]))
    assert current(ledger) == {
        "alice": (12, 1, "alice", None),
        "carol": (31, 1, "carol", "busy"),
    }
    # And a measurement after it, still in that second, clears it.
    record(ledger, scan(T0, [m("alice", 13), m("carol", 32)]))
    assert current(ledger) == {"alice": (13, 1, "alice", None), "carol": (32, 1, "carol", None)}
    record(ledger, scan(T0, [m("alice", 14)], [ResourceFailure("carol", "tree", "carol", "again")]))
    live = current(ledger)

    with session_scope(ledger.engine, write=True) as session:
        LedgerService(session).rebuild_current_usage()
    assert (
        current(ledger)
        == live
        == {
            "alice": (14, 1, "alice", None),
            "carol": (32, 1, "carol", "again"),
        }
    )


def test_sqlite_runs_in_wal_mode_with_foreign_keys(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path}/new/ledger.db")
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    finally:
        engine.dispose()


# Names a scanner can report: tabs, newlines, backslashes (and COPY's own
# `\N` for NULL), quotes, spaces, non-ASCII and characters outside the BMP.
ODD_NAMES = (
    "tab\there",
    "new\nline",
    "carriage\rreturn",
    "back\\slash",
    "\\N",
    "\\.",
    'it\'s "quoted"',
    " leading and trailing ",
    "r\\xe9sum\\xe9",
    "Ünïcödé ☃ 日本語",
    "emoji 📁\u2028sep",
    "a;b,c|d",
)


def snapshot_rows(ledger: Ledger) -> dict[str, list[tuple[object, ...]]]:
    """Every row the recording wrote, ids included, with SQL NULL and JSON null told apart."""
    res, smp = table_of(Resource), table_of(UsageSample)
    fail, cur = table_of(MeasurementFailure), table_of(CurrentUsage)
    queries: dict[str, Any] = {
        "resources": select(res.c.id, res.c.source_id, res.c.kind, res.c.name).order_by(res.c.id),
        "usage_samples": select(
            smp.c.id,
            smp.c.resource_id,
            smp.c.member_id,
            smp.c.measured_at,
            smp.c.bytes,
            smp.c.files,
            smp.c.present,
            smp.c.detail,
            smp.c.detail.is_(None),
        ).order_by(smp.c.id),
        "measurement_failures": select(
            fail.c.id, fail.c.resource_id, fail.c.member_id, fail.c.failed_at, fail.c.error
        ).order_by(fail.c.id),
        "current_usage": select(
            cur.c.resource_id,
            cur.c.source_id,
            cur.c.member_id,
            cur.c.measured_at,
            cur.c.bytes,
            cur.c.files,
            cur.c.present,
            cur.c.detail,
            cur.c.detail.is_(None),
            cur.c.error,
            cur.c.error_at,
        ).order_by(cur.c.resource_id),
    }
    with ledger.engine.connect() as conn:
        # SQLite answers IS NULL with 0 or 1.
        return {
            table: [
                tuple(
                    bool(v) if isinstance(v, int) and v in (0, 1) and i == 8 else v
                    for i, v in enumerate(row)
                )
                for row in conn.execute(query)
            ]
            for table, query in queries.items()
        }


def test_bulk_writes_store_the_same_rows_on_every_ledger(ledger: Ledger) -> None:
    """PostgreSQL writes with COPY, SQLite with INSERT: the rows stored are the same."""
    first = [
        Measurement(
            f"m{i % 7}" if i % 5 else None,
            "tree",
            f"{ODD_NAMES[i % len(ODD_NAMES)]} {i}",
            i * 1000 + 1,
            i,
            {"note": ODD_NAMES[i % len(ODD_NAMES)], "n": i} if i % 3 == 0 else {},
        )
        for i in range(2500)  # more than one CHUNK: the INSERT path sends several
    ]
    broken = ResourceFailure("m1", "tree", "tab\there failed", "cannot read\tit\\ \n")
    record(ledger, scan(T0, first, [broken]))
    # A rescan: most resources known, some new, some gone, one failing.
    later = T0 + dt.timedelta(days=1)
    second = [
        Measurement(m.member, m.kind, m.name, m.bytes + 1, m.files, m.detail) for m in first[:2000]
    ] + [Measurement("m2", "tree", f"new {name}", 5, 1) for name in ODD_NAMES]
    busy = ResourceFailure(None, "tree", first[2100].name, "busy")
    result = record(ledger, scan(later, second, [busy]))
    # Gone: first[2000:2100], first[2101:] and the resource that only ever failed.
    assert (result.measurements, result.failures, result.zeroed) == (len(second), 1, 500)

    rows = snapshot_rows(ledger)
    with session_scope(ledger.engine) as session:
        ids = {member.name: member.id for member in session.scalars(select(Member))}
    names = [m.name for m in first] + [broken.name] + [f"new {name}" for name in ODD_NAMES]
    assert rows["resources"] == [(i + 1, 1, "tree", name) for i, name in enumerate(names)]
    at0, at1 = T0, later

    def sample(id_: int, rid: int, m: Measurement, at: dt.datetime) -> tuple[object, ...]:
        member = ids[m.member] if m.member else None
        detail = dict(m.detail) or None
        return (id_, rid, member, at, m.bytes, m.files, True, detail, False)

    gone = [*range(2001, 2101), *range(2102, 2501), 2501]
    expected = (
        [sample(i + 1, i + 1, m, at0) for i, m in enumerate(first)]
        + [sample(2501 + i, i + 1, m, at1) for i, m in enumerate(second[:2000])]
        + [sample(4501 + i, 2502 + i, m, at1) for i, m in enumerate(second[2000:])]
        # No detail is JSON null, never SQL NULL, on both ledgers.
        + [
            (4501 + len(ODD_NAMES) + i, rid, None, at1, 0, 0, False, None, False)
            for i, rid in enumerate(gone)
        ]
    )
    assert rows["usage_samples"] == expected
    assert rows["measurement_failures"] == [
        (1, 2501, ids["m1"], at0, broken.error),
        (2, 2101, None, at1, "busy"),
    ]
    current_rows = {r[0]: r[1:] for r in rows["current_usage"]}
    assert len(current_rows) == len(names)
    assert current_rows[1] == (
        1,
        None,
        at1,
        2,
        0,
        True,
        {"note": ODD_NAMES[0], "n": 0},
        False,
        None,
        None,
    )
    assert current_rows[2101] == (
        1,
        None,
        at0,
        2100 * 1000 + 1,
        2100,
        True,
        {"note": ODD_NAMES[0], "n": 2100},
        False,
        "busy",
        at1,
    )
    for rid in gone:
        assert current_rows[rid][1:] == (None, at1, 0, 0, False, None, False, None, None)
    for i in range(len(ODD_NAMES)):
        assert current_rows[2502 + i] == (1, ids["m2"], at1, 5, 1, True, None, False, None, None)


def test_over_since_in_the_database_replays_history_as_python_does(ledger: Ledger) -> None:
    """LedgerService.over_since against over_since() of member_history, on random histories."""
    rng = random.Random(20261130)
    sources = {"homes": ("tree", ["h1", "h2", "h3"]), "mail": ("maildir", ["m1", "m2"])}
    owners = ["alice", "alice", "alice", "bob", None]
    at = T0
    for _ in range(40):
        # Mostly forward, sometimes the same second, sometimes a late scan.
        step = rng.choice([0, 60, 3600, 3600, 86400, -7200])
        at += dt.timedelta(seconds=step)
        source = rng.choice(list(sources))
        kind, names = sources[source]
        found = [n for n in names if rng.random() < 0.8]
        failed = [n for n in found if rng.random() < 0.1]
        measured = [
            Measurement(rng.choice(owners), kind, n, rng.choice([0, 5, 10, 50, 100]), 1)
            for n in found
            if n not in failed
        ]
        failures = [ResourceFailure("alice", kind, n, "busy") for n in failed]
        item = ScanInput(uuid.uuid4(), source, kind, at - dt.timedelta(seconds=5), at, measured)
        record(ledger, dataclasses.replace(item, failures=failures))

    with session_scope(ledger.engine) as session:
        service = LedgerService(session)
        alice = MemberService(session, "t").get("alice").id
        for kinds in (None, ["tree"], ["maildir"]):
            history = service.member_history(alice, kinds)
            flags = None if kinds is None else dict.fromkeys(kinds, True)
            for limit in (-1, 0, 5, 10, 50, 99, 100, 150, 200, 250, 300, 1000):
                want = over_since(history, alice, limit, flags)
                assert service.over_since(alice, limit, kinds) == want, (kinds, limit)
        # A member without samples is over nothing.
        assert service.over_since(alice + 1000, -1) is None


def test_copy_conversions_are_remembered_per_type_and_value() -> None:
    calls: list[object] = []

    def convert(value: object) -> str:
        calls.append(value)
        return repr(value)

    remembered = repository._remembering(convert)
    assert remembered is not None
    assert [remembered(v) for v in (1, True, 1, True, 1.0)] == ["1", "True", "1", "True", "1.0"]
    assert calls == [1, True, 1.0]
    # Unhashable values (a detail) are converted every time.
    assert remembered({"a": 1}) == remembered({"a": 1}) == "{'a': 1}"
    assert len(calls) == 5
    assert repository._remembering(None) is None
