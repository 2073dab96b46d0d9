"""MemberService.put (create or update, audited) and the bounds on quota overrides."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import select

from quotad.audit.models import AuditEntry
from quotad.config import QuotaLimit
from quotad.db import session_scope
from quotad.errors import InvalidInput
from quotad.members.service import MemberService
from quotad.quotas.service import MAX_BYTES, MAX_GRACE_SECONDS, QuotaService
from quotad.timeutil import parse_time
from tests.conftest import Ledger

JAN = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
FEB = dt.datetime(2026, 2, 1, tzinfo=dt.UTC)


def actions(ledger: Ledger) -> list[tuple[str, str, dict[str, object] | None]]:
    with session_scope(ledger.engine) as session:
        return [
            (e.action, e.actor, e.detail)
            for e in session.scalars(select(AuditEntry).order_by(AuditEntry.id))
        ]


def test_put_creates_then_updates_only_what_is_given(ledger: Ledger) -> None:
    with session_scope(ledger.engine, write=True) as session:
        member, created = MemberService(session, "t").put("alice", {"joined_at": JAN})
        assert created
        assert (member.email, member.joined_at, member.left_at) == (None, JAN, None)
    with session_scope(ledger.engine, write=True) as session:
        member, created = MemberService(session, "u").put(
            "alice", {"email": " a@example.org ", "left_at": FEB}
        )
        assert not created
        assert (member.email, member.joined_at, member.left_at) == ("a@example.org", JAN, FEB)
    with session_scope(ledger.engine, write=True) as session:
        _, created = MemberService(session, "v").put("alice", {"email": "a@example.org"})
        assert not created
    assert actions(ledger) == [
        ("member.add", "t", {"email": None, "joined_at": "2026-01-01T00:00:00Z", "left_at": None}),
        (
            "member.update",
            "u",
            {
                "before": {"email": None, "left_at": None},
                "after": {"email": "a@example.org", "left_at": "2026-02-01T00:00:00Z"},
            },
        ),
    ]


@pytest.mark.parametrize(
    "changes",
    [{"left_at": dt.datetime(2025, 1, 1, tzinfo=dt.UTC)}, {"email": "nope"}, {"name": "bob"}],
)
def test_put_refuses_bad_updates(ledger: Ledger, changes: dict[str, object]) -> None:
    with session_scope(ledger.engine, write=True) as session:
        MemberService(session, "t").put("alice", {"joined_at": JAN})
    with session_scope(ledger.engine, write=True) as session, pytest.raises(InvalidInput):
        MemberService(session, "t").put("alice", changes)


def test_quota_bounds(ledger: Ledger) -> None:
    settings = ledger.settings()
    with session_scope(ledger.engine, write=True) as session:
        MemberService(session, "t").add("alice")
        service = QuotaService(session, settings, "t")
        with pytest.raises(InvalidInput, match="cannot exceed"):
            service.set("alice", "total", soft=1, hard=MAX_BYTES + 1, grace=0, reason="r")
        with pytest.raises(InvalidInput, match="100 years"):
            service.set("alice", "total", soft=1, hard=2, grace=MAX_GRACE_SECONDS + 1, reason="r")
        limit = service.set(
            "alice", "total", soft=MAX_BYTES, hard=MAX_BYTES, grace=MAX_GRACE_SECONDS, reason="r"
        )
        assert limit == QuotaLimit("total", MAX_BYTES, MAX_BYTES, MAX_GRACE_SECONDS)
    with session_scope(ledger.engine) as session:
        usage = QuotaService(session, settings, "t").usage("alice")
        assert usage["quotas"][0]["soft_bytes"] == MAX_BYTES


@pytest.mark.parametrize("text", ["9999-12-31T23:59:59-05:00", "0001-01-01T00:00:00+05:00"])
def test_times_past_the_calendar_are_invalid_input(text: str) -> None:
    with pytest.raises(ValueError, match="out of range"):
        parse_time(text)


def test_email_with_control_characters_is_refused(ledger: Ledger) -> None:
    with session_scope(ledger.engine, write=True) as session, pytest.raises(InvalidInput):
        MemberService(session, "t").put("alice", {"email": "a\x00@example.org"})
