"""The enforcement run on both ledgers, with a fake daemon behind the enforcer interface.

The real daemons are in tests/enforcers/; here the fake keeps a value per
resource so that what a run restricts, keeps, retries and restores is seen
exactly.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
from sqlalchemy import select

from quotad.config import Settings
from quotad.db import session_scope
from quotad.enforcement.models import EnforcementAction
from quotad.enforcement.service import EnforcementService, Plan
from quotad.enforcers.base import Enforcer, EnforcerError, Saved, Target
from quotad.enforcers.notify import Notifier
from quotad.ledger.service import LedgerService, ScanInput
from quotad.quotas.models import QuotaStateRow
from quotad.quotas.service import QuotaService
from scanners.base import Measurement, ResourceFailure
from tests.conftest import Ledger

T0 = dt.datetime(2026, 11, 2, 3, 0, tzinfo=dt.UTC)
HOUR = dt.timedelta(hours=1)
DAY = dt.timedelta(days=1)
MiB = 1 << 20

CONFIG = """
[defaults.quota.total]
soft = "100MiB"
hard = "150MiB"
grace = "7d"

[enforcement]
stale_after = "2d"
notify_at = [0.9]

[[sources]]
name = "homes"
kind = "tree"
path = "/nonexistent/{member}"
"""


class Crash(BaseException):
    """Stands for the process being killed: nothing after it runs."""


class FakeDaemon(Enforcer):
    """A daemon with one setting per resource: its write limit, None meaning unlimited."""

    source_kind = "tree"

    def __init__(self, scanner: Any) -> None:
        super().__init__(scanner)
        self.limits: dict[str, int | None] = {}
        self.calls: list[tuple[str, str]] = []
        self.fail: set[str] = set()
        self.crash_after_restrict: set[str] = set()

    def snapshot(self, target: Target) -> Saved:
        self.calls.append(("snapshot", target.name))
        return {"limit": self.limits.get(target.name)}

    def restrict(self, target: Target, saved: Saved) -> str:
        self.calls.append(("restrict", target.name))
        assert "limit" in saved, "restrict is given the snapshot"
        if target.name in self.fail:
            raise EnforcerError(f"cannot reach the daemon for {target.name}")
        self.limits[target.name] = target.bytes
        if target.name in self.crash_after_restrict:
            self.crash_after_restrict.discard(target.name)
            raise Crash
        return f"capped {target.name} at {target.bytes}"

    def lift(self, target: Target, saved: Saved) -> str:
        self.calls.append(("lift", target.name))
        if target.name in self.fail:
            raise EnforcerError(f"cannot reach the daemon for {target.name}")
        self.limits[target.name] = saved["limit"]
        return f"restored {target.name}"


class World:
    """A ledger, settings with the fake enforcer, and a clock."""

    def __init__(self, ledger: Ledger, extra: str = "", *, mail: bool = False) -> None:
        self.ledger = ledger
        base = ledger.settings(CONFIG + extra)
        self.notifier = Notifier(base.smtp, base.enforcement.templates) if mail else None
        self.daemon = FakeDaemon(base.sources[0].scanner)
        source = dataclasses.replace(base.sources[0], enforcer=self.daemon)
        self.settings: Settings = dataclasses.replace(base, sources=(source,))
        self.now = T0

    def scan(
        self, sizes: Mapping[str, int], *, failed: bool = False, unreadable: Sequence[str] = ()
    ) -> None:
        """A scan of `homes` now; a resource `alice` or `alice-...` is alice's.

        UNREADABLE resources fail alone (the scan is partial); FAILED fails
        the whole scan.
        """
        item = ScanInput(
            uuid.uuid4(),
            "homes",
            "tree",
            self.now - dt.timedelta(seconds=10),
            self.now,
            [
                Measurement(name.split("-")[0], "tree", name, size, 1)
                for name, size in sizes.items()
            ],
            [
                ResourceFailure(name.split("-")[0], "tree", name, "unreadable")
                for name in unreadable
            ],
            error="server down" if failed else None,
        )
        with session_scope(self.ledger.engine, write=True) as session:
            LedgerService(session).record(item)

    def service(self) -> EnforcementService:
        return EnforcementService(
            lambda *, write: session_scope(self.ledger.engine, write=write),
            self.settings,
            notifier=self.notifier,
        )

    def run(self, *, advance: dt.timedelta = HOUR, dry_run: bool = False) -> Plan:
        self.now += advance
        service = self.service()
        return service.apply(service.plan(self.now, dry_run=dry_run))

    def states(self, member: str) -> list[str]:
        with session_scope(self.ledger.engine) as session:
            rows = session.scalars(select(QuotaStateRow).order_by(QuotaStateRow.id)).all()
            ids = {m.id: m.name for m in QuotaService(session, self.settings).members.list()}
            return [r.state for r in rows if ids[r.member_id] == member]

    def actions(self) -> list[tuple[str, str, str]]:
        with session_scope(self.ledger.engine) as session:
            rows = session.scalars(select(EnforcementAction).order_by(EnforcementAction.id)).all()
            return [(r.resource, r.action, r.status) for r in rows]


def changes(plan: Plan, kind: str) -> list[tuple[str | None, str]]:
    return [(c.member, c.status) for c in plan.changes if c.type == kind]


@pytest.fixture
def world(ledger: Ledger) -> World:
    return World(ledger)


def test_over_hard_restricts_once_and_lifts_only_under_soft(world: World) -> None:
    world.daemon.limits = {"alice": 500 * MiB, "bob": None}
    world.scan({"alice": 160 * MiB, "bob": 10 * MiB})
    plan = world.run()
    assert changes(plan, "restrict") == [("alice", "done")]
    assert world.daemon.limits["alice"] == 160 * MiB
    assert world.states("alice") == ["hard"]

    # Nothing new: nothing happens, nothing is recorded.
    before = world.actions()
    assert world.run().changes == []
    assert world.actions() == before

    # Between soft and hard: still restricted.
    world.scan({"alice": 120 * MiB, "bob": 10 * MiB})
    assert [c.type for c in world.run().changes] == []
    assert world.daemon.limits["alice"] == 160 * MiB

    world.scan({"alice": 90 * MiB, "bob": 10 * MiB})
    plan = world.run()
    assert changes(plan, "lift") == [("alice", "done")]
    assert world.daemon.limits == {"alice": 500 * MiB, "bob": None}
    assert world.states("alice") == ["hard", "ok"]
    assert world.actions() == [
        ("alice", "restrict", "started"),
        ("alice", "restrict", "done"),
        ("alice", "lift", "started"),
        ("alice", "lift", "done"),
    ]
    assert world.daemon.calls.count(("snapshot", "alice")) == 1


def test_grace_expiry_restricts_on_the_run_after_the_deadline(world: World) -> None:
    world.scan({"alice": 120 * MiB})
    plan = world.run()
    assert changes(plan, "restrict") == []
    assert world.states("alice") == ["soft"]
    for _ in range(6):
        world.scan({"alice": 120 * MiB})
        assert changes(world.run(advance=DAY), "restrict") == []
    world.scan({"alice": 120 * MiB})
    plan = world.run(advance=DAY)
    assert changes(plan, "restrict") == [("alice", "done")]
    assert world.states("alice") == ["soft", "grace_expired"]


def test_one_members_failure_does_not_stop_the_others_and_is_retried(world: World) -> None:
    world.daemon.fail = {"alice"}
    world.scan({"alice": 200 * MiB, "bob": 200 * MiB})
    plan = world.run()
    assert sorted(changes(plan, "restrict")) == [("alice", "failed"), ("bob", "done")]
    assert plan.failed == 1
    failed = next(c for c in plan.changes if c.member == "alice" and c.type == "restrict")
    assert failed.message == "cannot reach the daemon for alice"
    assert world.daemon.limits == {"bob": 200 * MiB}

    world.daemon.fail = set()
    plan = world.run()
    assert changes(plan, "restrict") == [("alice", "done")]
    assert plan.failed == 0
    # The retry used the snapshot taken before the first attempt.
    assert world.daemon.calls.count(("snapshot", "alice")) == 1


def test_a_run_killed_after_acting_is_finished_with_the_first_snapshot(world: World) -> None:
    world.daemon.limits = {"alice": 300 * MiB}
    world.daemon.crash_after_restrict = {"alice"}
    world.scan({"alice": 200 * MiB})
    with pytest.raises(Crash):
        world.run()
    assert world.actions() == [("alice", "restrict", "started")]
    world.run()
    assert world.actions()[-1] == ("alice", "restrict", "done")
    # The second restrict must not have snapshotted the restricted state.
    world.scan({"alice": 10 * MiB})
    world.run()
    assert world.daemon.limits == {"alice": 300 * MiB}


def test_stale_or_failed_measurements_never_lift(world: World) -> None:
    world.daemon.limits = {"alice": None}
    world.scan({"alice": 200 * MiB})
    world.run()
    # Three days without a scan: the measurement is stale.
    plan = world.run(advance=3 * DAY)
    assert plan.changes == []
    # A failed scan does not lower anything either.
    world.scan({}, failed=True)
    assert world.run().changes == []
    assert world.daemon.limits == {"alice": 200 * MiB}
    world.scan({"alice": 5 * MiB})
    assert changes(world.run(), "lift") == [("alice", "done")]


def test_dry_run_records_and_changes_nothing(world: World) -> None:
    world.scan({"alice": 200 * MiB})
    plan = world.run(dry_run=True)
    assert {c.type for c in plan.changes} == {"state", "restrict", "mail"}
    assert all(c.status == "dry_run" for c in plan.changes)
    assert world.daemon.calls == []
    assert world.actions() == []
    assert world.states("alice") == []


def test_an_override_raised_mid_grace_lifts(world: World, ledger: Ledger) -> None:
    world.scan({"alice": 200 * MiB})
    world.run()
    with session_scope(ledger.engine, write=True) as session:
        QuotaService(session, world.settings, "admin").set(
            "alice", "total", soft=300 * MiB, hard=400 * MiB, grace=None, reason="more room"
        )
    plan = world.run()
    assert changes(plan, "lift") == [("alice", "done")]
    assert world.states("alice") == ["hard", "ok"]


def test_a_resource_gone_is_lifted_and_its_member_set_free(world: World) -> None:
    world.scan({"alice": 200 * MiB, "bob": 1 * MiB})
    world.run()
    world.scan({"bob": 1 * MiB})  # complete: alice's tree is gone
    plan = world.run()
    assert changes(plan, "lift") == [("alice", "done")]
    assert world.states("alice") == ["hard", "ok"]


def test_the_report_shows_the_stored_state_and_grace_end(world: World, ledger: Ledger) -> None:
    world.scan({"alice": 120 * MiB})
    world.run()
    world.now += 8 * DAY
    world.scan({"alice": 120 * MiB})
    world.run(advance=dt.timedelta(0))
    assert world.states("alice") == ["soft", "grace_expired"]
    with session_scope(ledger.engine) as session:
        report = QuotaService(session, world.settings).report(world.now)
    quota = report[0]["quotas"][0]
    # Grace from the first scan over soft (T0), not from the run that saw it.
    assert (quota["state"], quota["grace_ends_at"]) == ("grace_expired", "2026-11-09T03:00:00Z")
    # Measurements gone stale: the report still shows the stored state.
    with session_scope(ledger.engine) as session:
        report = QuotaService(session, world.settings).report(world.now + 5 * DAY)
    assert report[0]["quotas"][0]["state"] == "grace_expired"


def test_json_plan_shape(world: World) -> None:
    world.scan({"alice": 200 * MiB})
    plan = world.run()
    document = plan.json()
    assert document["failed"] == 0
    assert document["dry_run"] is False
    restrict = next(c for c in document["changes"] if c["type"] == "restrict")
    assert restrict == {
        "type": "restrict",
        "member": "alice",
        "scope": "total",
        "source": "homes",
        "kind": "tree",
        "resource": "alice",
        "reason": "total over hard: 200.0 MiB > 150.0 MiB",
        "status": "done",
        "message": f"capped alice at {200 * MiB}",
    }


class FakePusher(FakeDaemon):
    """A daemon that can hold each resource to the hard limit itself (like AFS native_quota)."""

    def push_limit(self, target: Target) -> str | None:
        if self.limits.get(target.name) == target.hard_bytes:
            return None
        self.limits[target.name] = target.hard_bytes
        return f"limit of {target.name} set to {target.hard_bytes}"


def test_native_limits_are_pushed_to_unrestricted_resources_only(ledger: Ledger) -> None:
    world = World(ledger)
    world.daemon = FakePusher(world.daemon.scanner)
    source = dataclasses.replace(world.settings.sources[0], enforcer=world.daemon)
    world.settings = dataclasses.replace(world.settings, sources=(source,))
    world.scan({"alice": 10 * MiB, "bob": 200 * MiB})
    plan = world.run()
    assert changes(plan, "push_limit") == [("alice", "done")]
    assert world.daemon.limits == {"alice": 150 * MiB, "bob": 200 * MiB}
    # Already in place: nothing to do or record.
    assert world.run().changes == []
    # An override moves the native limit on the next run.
    with session_scope(ledger.engine, write=True) as session:
        QuotaService(session, world.settings, "admin").set(
            "alice", "total", soft=200 * MiB, hard=300 * MiB, grace=None, reason="bigger plan"
        )
    assert changes(world.run(), "push_limit") == [("alice", "done")]
    assert world.daemon.limits["alice"] == 300 * MiB
    assert ("alice", "push_limit", "done") in world.actions()
