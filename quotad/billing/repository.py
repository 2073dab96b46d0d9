"""SQL for billing: the period's samples, members' membership, frozen statements."""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal

from sqlalchemy import and_, func, select, text, tuple_
from sqlalchemy.orm import Session

from quotad.billing.arithmetic import Period, Sample, Segment
from quotad.billing.models import Adjustment, BillingPeriod, Statement
from quotad.ledger.models import Resource, UsageSample
from quotad.locks import lock_key
from quotad.members.models import Member

# Readers of a period (scans landing in it, adjustments aimed at it) hold this
# lock shared; finalizing holds it exclusive, so that nothing lands in a
# period between the moment its statements are computed and their commit.
PERIODS_LOCK = lock_key("billing-periods")
# Ids per IN list: far below every engine's limit on parameters.
CHUNK = 5000


@dataclass(frozen=True, slots=True)
class MemberRow:
    id: int
    name: str
    joined_at: dt.datetime | None
    left_at: dt.datetime | None
    created_at: dt.datetime


def _naive(value: dt.datetime) -> dt.datetime:
    """The ledger's columns hold naive UTC (quotad.db.UTCDateTime)."""
    return value.astimezone(dt.UTC).replace(tzinfo=None)


# Every sample that counts in the period on PostgreSQL, integrated by the
# server: each sample of the period, plus each resource's last one before it
# (the carry-in), spans until the resource's next sample or the period's end;
# that span is clipped to the member's membership and each plan's part of the
# period, and bytes x microseconds summed per member, plan and kind. The
# numbers are exact: extract(epoch) of an interval is numeric with
# microseconds, and bigint x numeric is numeric. Sending the rows to Python
# instead costs several times the server's work (bench/billing.py).
_PG_USAGE = """
WITH m AS (
    SELECT * FROM unnest(CAST(:member_ids AS integer[]), CAST(:member_from AS timestamp[]),
                         CAST(:member_until AS timestamp[])) AS m(member_id, a, b)
), g AS (
    SELECT * FROM unnest(CAST(:plan_index AS integer[]), CAST(:plan_from AS timestamp[]),
                         CAST(:plan_until AS timestamp[])) AS g(plan_index, s, e)
), r AS (
    SELECT id, kind FROM resources {resource_filter}
), carry AS (
    SELECT c.* FROM r CROSS JOIN LATERAL (
        SELECT us.id, us.resource_id, us.member_id, us.measured_at, us.bytes
        FROM usage_samples us
        WHERE us.resource_id = r.id AND us.measured_at < :p0
        ORDER BY us.measured_at DESC, us.id DESC LIMIT 1
    ) c
), rows AS (
    SELECT us.id, us.resource_id, us.member_id, us.measured_at, us.bytes
    FROM usage_samples us
    WHERE us.measured_at >= :p0 AND us.measured_at < :p1 {sample_filter}
    UNION ALL
    SELECT * FROM carry
), iv AS (
    SELECT member_id, resource_id, bytes,
           greatest(measured_at, :p0) AS t0,
           coalesce(lead(measured_at) OVER (PARTITION BY resource_id ORDER BY measured_at, id),
                    :p1) AS t1
    FROM rows
)
SELECT iv.member_id, g.plan_index, r.kind,
       sum(iv.bytes * extract(epoch FROM least(iv.t1, m.b, g.e) - greatest(iv.t0, m.a, g.s)))
FROM iv
JOIN m ON m.member_id = iv.member_id
JOIN g ON g.s < least(iv.t1, m.b) AND g.e > greatest(iv.t0, m.a)
JOIN r ON r.id = iv.resource_id
WHERE least(iv.t1, m.b, g.e) > greatest(iv.t0, m.a, g.s)
GROUP BY iv.member_id, g.plan_index, r.kind
"""


class BillingRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    @property
    def dialect(self) -> str:
        return self.session.get_bind().dialect.name

    # -- locks ---------------------------------------------------------------

    def lock_periods(self, *, exclusive: bool) -> None:
        """Hold the periods lock until the transaction ends (PostgreSQL).

        On SQLite every writing transaction begins IMMEDIATE, which already
        serializes them.
        """
        if self.dialect != "postgresql":
            return
        function = "pg_advisory_xact_lock" if exclusive else "pg_advisory_xact_lock_shared"
        self.session.execute(text(f"SELECT {function}(:key)"), {"key": PERIODS_LOCK})

    # -- members -------------------------------------------------------------

    def members(self, period: Period, member_id: int | None = None) -> list[MemberRow]:
        """Members who may have existed in PERIOD (membership is then worked out exactly)."""
        query = select(
            Member.id, Member.name, Member.joined_at, Member.left_at, Member.created_at
        ).where(
            (Member.left_at.is_(None)) | (Member.left_at > period.start),
            (Member.joined_at.is_(None)) | (Member.joined_at < period.end),
        )
        if member_id is not None:
            query = query.where(Member.id == member_id)
        return [MemberRow(*row) for row in self.session.execute(query.order_by(Member.name))]

    def first_measured(self, member_ids: Collection[int]) -> dict[int, dt.datetime]:
        """Each member's first sample: where an unset joined_at begins."""
        result: dict[int, dt.datetime] = {}
        ids = sorted(member_ids)
        for start in range(0, len(ids), CHUNK):
            query = (
                select(UsageSample.member_id, func.min(UsageSample.measured_at))
                .where(UsageSample.member_id.in_(ids[start : start + CHUNK]))
                .group_by(UsageSample.member_id)
            )
            for member_id, at in self.session.execute(query):
                # min() over a TypeDecorator column comes back as the column's type
                # on some engines and raw on others.
                result[member_id] = at if at.tzinfo else at.replace(tzinfo=dt.UTC)
        return result

    # -- usage ---------------------------------------------------------------

    def _charged_resources(self, member_id: int) -> list[int]:
        return list(
            self.session.scalars(
                select(UsageSample.resource_id).where(UsageSample.member_id == member_id).distinct()
            )
        )

    def samples(self, period: Period, member_id: int | None = None) -> list[Sample]:
        """The period's samples and each resource's carry-in, by resource, time, id."""
        resources: list[int] | None = None
        if member_id is not None:
            resources = self._charged_resources(member_id)
            if not resources:
                return []
        latest = select(
            UsageSample.resource_id, func.max(UsageSample.measured_at).label("at")
        ).where(UsageSample.measured_at < period.start)
        in_period = and_(
            UsageSample.measured_at >= period.start, UsageSample.measured_at < period.end
        )
        if resources is not None:
            latest = latest.where(UsageSample.resource_id.in_(resources))
            in_period = and_(in_period, UsageSample.resource_id.in_(resources))
        carry = latest.group_by(UsageSample.resource_id).subquery()
        carried = tuple_(UsageSample.resource_id, UsageSample.measured_at).in_(
            select(carry.c.resource_id, carry.c.at)
        )
        query = (
            select(
                UsageSample.resource_id,
                UsageSample.member_id,
                Resource.kind,
                UsageSample.measured_at,
                UsageSample.bytes,
            )
            .join(Resource, Resource.id == UsageSample.resource_id)
            .where(in_period | carried)
            .order_by(UsageSample.resource_id, UsageSample.measured_at, UsageSample.id)
        )
        return [Sample(*row) for row in self.session.execute(query)]

    def usage_in_database(
        self,
        period: Period,
        cuts: Mapping[int, Sequence[Segment]],
        plans: Sequence[tuple[int, dt.datetime, dt.datetime]],
        member_id: int | None = None,
    ) -> dict[int, dict[tuple[int, str], int]]:
        """integrate() of the period's samples, computed by PostgreSQL.

        CUTS gives each member's membership (their segments' outer bounds);
        PLANS each plan's (index, start, end) within the period.
        """
        totals: dict[int, dict[tuple[int, str], int]] = {m: {} for m in cuts}
        if not cuts:
            return totals
        params: dict[str, object] = {
            "p0": _naive(period.start),
            "p1": _naive(period.end),
            "member_ids": list(cuts),
            "member_from": [_naive(c[0].start) for c in cuts.values()],
            "member_until": [_naive(c[-1].end) for c in cuts.values()],
            "plan_index": [p[0] for p in plans],
            "plan_from": [_naive(p[1]) for p in plans],
            "plan_until": [_naive(p[2]) for p in plans],
        }
        resource_filter = sample_filter = ""
        if member_id is not None:
            resources = self._charged_resources(member_id)
            if not resources:
                return totals
            params["resources"] = resources
            resource_filter = "WHERE id = ANY(CAST(:resources AS integer[]))"
            sample_filter = "AND us.resource_id = ANY(CAST(:resources AS integer[]))"
        sql = text(_PG_USAGE.format(resource_filter=resource_filter, sample_filter=sample_filter))
        # The window sorts the period's samples; given the memory, the sort
        # stays in memory instead of spilling to disk.
        self.session.execute(text("SET LOCAL work_mem = '256MB'"))
        for member, plan_index, kind, byte_seconds in self.session.execute(sql, params):
            micro = Decimal(byte_seconds).scaleb(6)
            if micro != micro.to_integral_value():  # pragma: no cover - exact by construction
                raise ArithmeticError(f"byte-seconds {byte_seconds} is not whole microseconds")
            totals[member][(plan_index, kind)] = int(micro)
        return totals

    # -- finalized periods ---------------------------------------------------

    def finalized(self, period: Period) -> BillingPeriod | None:
        return self.session.get(BillingPeriod, str(period))

    def is_finalized(self, period: Period) -> bool:
        query = select(BillingPeriod.period).where(BillingPeriod.period == str(period))
        return self.session.scalar(query) is not None

    def finalized_after(self, period: Period) -> set[str]:
        query = select(BillingPeriod.period).where(BillingPeriod.period >= str(period))
        return set(self.session.scalars(query))

    def add_period(self, row: BillingPeriod, statements: Iterable[Statement]) -> None:
        self.session.add(row)
        self.session.flush()
        self.session.add_all(list(statements))
        self.session.flush()

    def statements(self, period: Period, member_id: int | None = None) -> list[Statement]:
        query = select(Statement).where(Statement.period == str(period))
        if member_id is not None:
            query = query.where(Statement.member_id == member_id)
        return list(self.session.scalars(query.order_by(Statement.id)))

    # -- adjustments ---------------------------------------------------------

    def add_adjustment(self, row: Adjustment) -> Adjustment:
        self.session.add(row)
        self.session.flush()
        return row

    def adjustments(
        self, period: Period | None = None, member_id: int | None = None
    ) -> list[tuple[Adjustment, str]]:
        query = select(Adjustment, Member.name).join(Member, Member.id == Adjustment.member_id)
        if period is not None:
            query = query.where(Adjustment.period == str(period))
        if member_id is not None:
            query = query.where(Adjustment.member_id == member_id)
        rows = self.session.execute(query.order_by(Adjustment.id)).tuples()
        return [(adjustment, name) for adjustment, name in rows]
