"""A member's total usage over time, at whole hours or days (GET /me/usage/history).

The usage of a resource is a step function (INTERFACE.md section 5): each
sample holds from its `measured_at` (its scan's finished_at) until the next
sample of that resource. A resource counts 0 before its first sample, 0 once
a complete scan zeroed it, and 0 while its latest sample is charged to
another member. The member's usage at an instant is the sum over resources.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from sqlalchemy.orm import Session

from quotad.errors import InvalidInput
from quotad.ledger.repository import SamplePoint
from quotad.ledger.service import LedgerService
from quotad.members.service import MemberService

STEPS = {"hour": dt.timedelta(hours=1), "day": dt.timedelta(days=1)}
# Default range when no start is given: 48 points of hours, 30 of days.
DEFAULT_SPAN = {"hour": dt.timedelta(hours=48), "day": dt.timedelta(days=30)}
# At most this many points per answer (a year of hours is 8,784 at most).
MAX_POINTS = 10_000


def boundaries(start: dt.datetime, end: dt.datetime, step: str) -> list[dt.datetime]:
    """Every whole hour or UTC midnight from START to END, both included."""
    if step not in STEPS:
        raise InvalidInput(f"step must be hour or day, not {step!r}")
    if start >= end:
        raise InvalidInput("start must be before end")
    size = STEPS[step]
    start = start.astimezone(dt.UTC)
    end = end.astimezone(dt.UTC)
    first = start.replace(minute=0, second=0, microsecond=0)
    if step == "day":
        first = first.replace(hour=0)
    if first < start:
        first += size
    count = (end - first) // size + 1 if first <= end else 0
    if count > MAX_POINTS:
        raise InvalidInput(
            f"the range holds {count} {step}s; at most {MAX_POINTS} points per request"
        )
    return [first + i * size for i in range(count)]


def replay(
    points: Sequence[SamplePoint], member_id: int, instants: Sequence[dt.datetime]
) -> list[tuple[dt.datetime, int]]:
    """The member's total at each instant, from samples oldest first."""
    values: dict[int, int] = {}
    total = 0
    index = 0
    result = []
    for at in instants:
        while index < len(points) and points[index].measured_at <= at:
            p = points[index]
            total -= values.get(p.resource_id, 0)
            values[p.resource_id] = p.bytes if p.member_id == member_id else 0
            total += values[p.resource_id]
            index += 1
        result.append((at, total))
    return result


def usage_history(
    session: Session,
    name: str,
    *,
    start: dt.datetime | None,
    end: dt.datetime | None,
    step: str,
    now: dt.datetime,
    actor: str = "quotad",
) -> list[tuple[dt.datetime, int]]:
    """NAME's total bytes at each step boundary in [start, end]."""
    if step not in STEPS:
        raise InvalidInput(f"step must be hour or day, not {step!r}")
    end = end or now
    start = start or end - DEFAULT_SPAN[step]
    instants = boundaries(start, end, step)
    member = MemberService(session, actor).get(name)
    if not instants:
        return []
    # One query: the member's resources' samples up to the last instant.
    samples = LedgerService(session, actor=actor).member_history(member.id)
    return replay([p for p in samples if p.measured_at <= instants[-1]], member.id, instants)
