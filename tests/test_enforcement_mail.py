"""Warning mail from enforcement runs, received by a real SMTP server (aiosmtpd) in the test."""

from __future__ import annotations

import dataclasses
from decimal import Decimal

import pytest

from quotad.db import session_scope
from quotad.members.service import MemberService
from tests.conftest import Ledger
from tests.smtp_server import SmtpServer, smtp_server
from tests.test_enforcement import DAY, HOUR, MiB, World

__all__ = ["smtp_server"]

ADMINS = "admins@coop.example"


@pytest.fixture
def world(ledger: Ledger, smtp_server: SmtpServer) -> World:
    extra = f"""
[smtp]
host = "{smtp_server.host}"
port = {smtp_server.port}
sender = "quota@coop.example"
"""
    world = World(ledger, extra, mail=True)
    enforcement = dataclasses.replace(
        world.settings.enforcement,
        notify_at=(Decimal("0.8"), Decimal("0.9")),
        notify_admins=(ADMINS,),
    )
    world.settings = dataclasses.replace(world.settings, enforcement=enforcement)
    with session_scope(ledger.engine, write=True) as session:
        members = MemberService(session, "test")
        members.add("alice", email="alice@members.example")
        members.add("bob", email="bob@members.example")
        members.add("nomail")
    return world


def mail(server: SmtpServer) -> list[tuple[str, str, str | None, tuple[str, ...]]]:
    """(member, event, level, envelope recipients) of each mail received since the last call."""
    got = [
        (
            str(m.message["X-Quotad-Member"]),
            str(m.message["X-Quotad-Event"]),
            m.message["X-Quotad-Level"],
            tuple(sorted(m.rcpt_tos)),
        )
        for m in server.messages
    ]
    server.clear()
    return sorted(got)


ALICE = ("alice@members.example",)
ALICE_AND_ADMINS = (ADMINS, "alice@members.example")


def test_thresholds_state_changes_and_all_clear_without_duplicates(
    world: World, smtp_server: SmtpServer
) -> None:
    world.scan({"alice": 50 * MiB, "bob": 10 * MiB, "nomail": 10 * MiB})
    world.run()
    assert mail(smtp_server) == []

    world.scan({"alice": 85 * MiB, "bob": 10 * MiB, "nomail": 95 * MiB})
    plan = world.run()
    assert mail(smtp_server) == [("alice", "warning", "0.8", ALICE)]
    # A member without an address is recorded as skipped, not failed.
    assert plan.failed == 0
    assert [(c.member, c.status) for c in plan.changes if c.type == "mail"] == [
        ("alice", "done"),
        ("nomail", "skipped"),
    ]

    # Repeated runs at the same level: nothing more.
    for _ in range(3):
        world.scan({"alice": 86 * MiB, "bob": 10 * MiB, "nomail": 95 * MiB})
        world.run()
    assert mail(smtp_server) == []

    world.scan({"alice": 95 * MiB, "bob": 10 * MiB, "nomail": 95 * MiB})
    world.run()
    assert mail(smtp_server) == [("alice", "warning", "0.9", ALICE)]

    # Over soft: one state mail, copied to the admins.
    world.scan({"alice": 120 * MiB, "bob": 10 * MiB, "nomail": 95 * MiB})
    world.run()
    assert mail(smtp_server) == [("alice", "state", "0.9", ALICE_AND_ADMINS)]
    world.scan({"alice": 121 * MiB, "bob": 10 * MiB, "nomail": 95 * MiB})
    world.run()
    assert mail(smtp_server) == []

    # Over hard: another state mail.
    world.scan({"alice": 200 * MiB, "bob": 10 * MiB, "nomail": 95 * MiB})
    world.run()
    assert mail(smtp_server) == [("alice", "state", "0.9", ALICE_AND_ADMINS)]

    # Back under every level: one all clear, to the member and the admins.
    world.scan({"alice": 10 * MiB, "bob": 10 * MiB, "nomail": 95 * MiB})
    world.run()
    assert mail(smtp_server) == [("alice", "all_clear", None, ALICE_AND_ADMINS)]
    world.scan({"alice": 10 * MiB, "bob": 10 * MiB, "nomail": 95 * MiB})
    world.run()
    assert mail(smtp_server) == []


def test_a_warning_is_repeated_once_per_interval(world: World, smtp_server: SmtpServer) -> None:
    world.scan({"alice": 85 * MiB})
    world.run()
    assert mail(smtp_server) == [("alice", "warning", "0.8", ALICE)]
    for _ in range(6):
        world.scan({"alice": 85 * MiB})
        world.run(advance=DAY)
    assert mail(smtp_server) == []
    world.scan({"alice": 85 * MiB})
    world.run(advance=DAY)
    assert mail(smtp_server) == [("alice", "warning", "0.8", ALICE)]


def test_back_under_the_levels_after_a_warning_sends_an_all_clear(
    world: World, smtp_server: SmtpServer
) -> None:
    world.scan({"alice": 85 * MiB})
    world.run()
    world.scan({"alice": 50 * MiB})
    world.run()
    # A warning only (no state change): the all clear goes to the member alone.
    assert mail(smtp_server) == [
        ("alice", "all_clear", None, ALICE),
        ("alice", "warning", "0.8", ALICE),
    ]


def test_mail_that_could_not_be_sent_is_tried_again_next_run(
    world: World, smtp_server: SmtpServer
) -> None:
    world.scan({"alice": 85 * MiB})
    smtp_server.reject = {"alice@members.example"}
    plan = world.run()
    assert plan.failed == 1
    assert mail(smtp_server) == []
    smtp_server.reject = set()
    world.scan({"alice": 85 * MiB})
    plan = world.run(advance=HOUR)
    assert plan.failed == 0
    assert mail(smtp_server) == [("alice", "warning", "0.8", ALICE)]


def test_no_all_clear_while_a_measurement_is_failing(world: World, smtp_server: SmtpServer) -> None:
    world.scan({"alice": 5 * MiB, "alice-db": 80 * MiB})
    world.run()
    assert mail(smtp_server) == [("alice", "warning", "0.8", ALICE)]
    # The database shrank, but the home folder could not be read: the total
    # (6 MiB with its last value) is under every level, yet not proven.
    world.scan({"alice-db": 1 * MiB}, unreadable=["alice"])
    world.run()
    assert mail(smtp_server) == []
    world.scan({"alice": 5 * MiB, "alice-db": 1 * MiB})
    world.run()
    assert mail(smtp_server) == [("alice", "all_clear", None, ALICE)]
