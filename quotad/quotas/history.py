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

from sqlalchemy import and_, func, select
from sqlalchemy.orm import Session

from quotad.errors import InvalidInput
from quotad.ledger.models import Resource, UsageSample
from quotad.ledger.repository import SamplePoint
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
        try:
            first += size
        except OverflowError:
            # START is in the calendar's last hour or day: no boundary follows it.
            return []
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
    if start is None:
        try:
            start = end - DEFAULT_SPAN[step]
        except OverflowError:
            # An END in the calendar's first days: the span starts with the calendar.
            start = dt.datetime.min.replace(tzinfo=dt.UTC)
    instants = boundaries(start, end, step)
    member = MemberService(session, actor).get(name)
    if not instants:
        return []
    return replay(
        samples_between(session, member.id, instants[0], instants[-1]), member.id, instants
    )


def samples_between(
    session: Session, member_id: int, first: dt.datetime, last: dt.datetime
) -> list[SamplePoint]:
    """The samples replay needs, oldest first: those in (FIRST, LAST] and the carry-in.

    The carry-in is each resource's latest sample at or before FIRST. Resources
    are those ever charged to the member, as in LedgerRepository.member_history;
    two queries whatever the number of points.
    """
    theirs = select(UsageSample.resource_id).where(UsageSample.member_id == member_id).distinct()
    columns = (
        UsageSample.resource_id,
        UsageSample.member_id,
        UsageSample.measured_at,
        UsageSample.bytes,
        Resource.kind,
    )
    latest = (
        select(UsageSample.resource_id, func.max(UsageSample.measured_at).label("at"))
        .where(UsageSample.resource_id.in_(theirs), UsageSample.measured_at <= first)
        .group_by(UsageSample.resource_id)
        .subquery()
    )
    carry_in = (
        select(*columns)
        .join(Resource, Resource.id == UsageSample.resource_id)
        .join(
            latest,
            and_(
                latest.c.resource_id == UsageSample.resource_id,
                latest.c.at == UsageSample.measured_at,
            ),
        )
        .order_by(UsageSample.measured_at, UsageSample.id)
    )
    in_range = (
        select(*columns)
        .join(Resource, Resource.id == UsageSample.resource_id)
        .where(
            UsageSample.resource_id.in_(theirs),
            UsageSample.measured_at > first,
            UsageSample.measured_at <= last,
        )
        .order_by(UsageSample.measured_at, UsageSample.id)
    )
    return [
        SamplePoint(r, m, at, b, k)
        for query in (carry_in, in_range)
        for r, m, at, b, k in session.execute(query)
    ]
