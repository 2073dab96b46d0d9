"""SQL for billing: the period's samples, members' membership, frozen statements."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, and_, func, select, text, tuple_
from sqlalchemy.orm import Session

from quotad.billing.arithmetic import Period, Sample, Segment
from quotad.billing.models import Adjustment, BillingPeriod, Statement
from quotad.ledger.models import Resource, UsageSample
from quotad.ledger.repository import LedgerRepository
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
# server: each sample of the period spans until its resource's next sample or
# the period's end, and each resource's last sample before the period (the
# carry-in) from the period's start until the resource's first sample in it.
# Each span is clipped to each plan's part of the period ({plan_sums}: one
# column per plan; null where no span overlapped that part) and, for members
# whose membership covers only part of the period, to that part
# ({clip_from}, {clip_until}); bytes x seconds are summed per member and kind.
#
# Why it is shaped so: each resource's samples, from its carry-in to the
# period's end, are read from the covering index ix_usage_samples_resource_at
# in the window's order, so nothing is sorted, and each resource's spans are
# summed as they come; memberships are arrays indexed by member id and plans
# are columns, so no join multiplies or reorders millions of rows (the
# planner cannot estimate such joins, and picked sorts and merge joins costing
# several times the rest). Members who were members all period, nearly all
# of them in most months, are summed without looking their membership up
# (bench/billing.py: that lookup cost a fifth of the query). The numbers are
# exact: extract(epoch) of an interval is numeric with microseconds, and
# bigint x numeric is numeric.
#
# The carry-in is looked for in the month before the period first, and in
# all earlier months only if that month has none: usage_samples is
# partitioned by month (migration 7e3b1d5a9c42), and an unbounded "latest
# before" visits every month's partition for each resource (bench on two
# years of history: the query took 2.3 times as long; bounded, 1.3 times).
_PG_USAGE = """
SELECT x.member_id, r.kind, {outer_sums}
FROM resources r
LEFT JOIN LATERAL (
    SELECT coalesce(
        (SELECT c.measured_at FROM usage_samples c
         WHERE c.resource_id = r.id
           AND c.measured_at >= CAST(:p0 AS timestamp) - interval '1 month'
           AND c.measured_at < CAST(:p0 AS timestamp)
         ORDER BY c.measured_at DESC, c.id DESC LIMIT 1),
        (SELECT c.measured_at FROM usage_samples c
         WHERE c.resource_id = r.id
           AND c.measured_at < CAST(:p0 AS timestamp) - interval '1 month'
         ORDER BY c.measured_at DESC, c.id DESC LIMIT 1)
    ) AS measured_at
) carry ON true
CROSS JOIN LATERAL (
    SELECT spans.member_id, {plan_sums}
    FROM (
        SELECT us.member_id, us.bytes,
               greatest(us.measured_at, CAST(:p0 AS timestamp){clip_from}) AS t0,
               least(coalesce(lead(us.measured_at) OVER (ORDER BY us.measured_at, us.id),
                              CAST(:p1 AS timestamp)){clip_until}) AS t1
        FROM usage_samples us
        WHERE us.resource_id = r.id AND us.measured_at < CAST(:p1 AS timestamp)
          AND us.measured_at >= coalesce(carry.measured_at, CAST(:p0 AS timestamp))
    ) spans
    WHERE spans.t1 > spans.t0 AND spans.member_id {members}
    GROUP BY spans.member_id
) x
{resource_filter}
GROUP BY x.member_id, r.kind
"""
_CLIP_FROM = """,
                        (CAST(:member_from AS timestamp[]))
                        [us.member_id - CAST(:member_base AS integer)]"""
_CLIP_UNTIL = """,
                     (CAST(:member_until AS timestamp[]))
                     [us.member_id - CAST(:member_base AS integer)]"""
_PG_PLAN_SUM = """sum(CASE WHEN least(t1, CAST(:plan_until_{i} AS timestamp))
                  > greatest(t0, CAST(:plan_from_{i} AS timestamp))
         THEN bytes * extract(epoch FROM least(t1, CAST(:plan_until_{i} AS timestamp))
                                         - greatest(t0, CAST(:plan_from_{i} AS timestamp)))
         END) AS s{i}"""
# A plan in force the whole period clips nothing.
_PG_WHOLE_PERIOD_SUM = "sum(bytes * extract(epoch FROM t1 - t0)) AS s{i}"
# A ledger with this many members of the whole period is integrated in
# SLICES queries at once (BillingRepository._in_slices); a small one gains
# nothing from the extra connections.
PARALLEL_FROM = 1000
SLICES = 2
SNAPSHOT_RE = re.compile(r"^[0-9A-F]+-[0-9A-F]+(-[0-9]+)?$")
# Where a member id has no membership in the period: an empty one.
_NO_MEMBERSHIP = _naive(dt.datetime(1, 1, 1, tzinfo=dt.UTC))
# The planner cannot estimate how many samples lie between a resource's
# carry-in and the period's end (it guesses one); given the memory, whatever
# it sorts or hashes stays in memory.
_PG_WORK_MEM = "SELECT set_config('work_mem', :work_mem, true)"


def _plan_sums(
    period: Period, plans: Sequence[tuple[int, dt.datetime, dt.datetime]], params: dict[str, object]
) -> list[str]:
    """One sum column per plan, its bounds added to PARAMS."""
    sums = []
    for i, (_, start, end) in enumerate(plans):
        whole = (start, end) == (period.start, period.end)
        sums.append((_PG_WHOLE_PERIOD_SUM if whole else _PG_PLAN_SUM).format(i=i))
        params[f"plan_from_{i}"] = _naive(start)
        params[f"plan_until_{i}"] = _naive(end)
    return sums


def _membership_params(cuts: Mapping[int, Sequence[Segment]]) -> dict[str, object]:
    # Element i - base is member i's membership (PostgreSQL arrays count from
    # 1); no nulls in them, so that finding an element is one step.
    base = min(cuts) - 1
    size = max(cuts) - base
    member_from = [_NO_MEMBERSHIP] * size
    member_until = [_NO_MEMBERSHIP] * size
    for member, segs in cuts.items():
        member_from[member - base - 1] = _naive(segs[0].start)
        member_until[member - base - 1] = _naive(segs[-1].end)
    return {"member_base": base, "member_from": member_from, "member_until": member_until}


def _micro(byte_seconds: Decimal) -> int:
    micro = Decimal(byte_seconds).scaleb(6)
    if micro != micro.to_integral_value():  # pragma: no cover - exact by construction
        raise ArithmeticError(f"byte-seconds {byte_seconds} is not whole microseconds")
    return int(micro)


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

    def samples(self, period: Period, member_id: int | None = None) -> list[Sample]:
        """The period's samples and each resource's carry-in, by resource, time, id."""
        resources: list[int] | None = None
        if member_id is not None:
            resources = list(LedgerRepository(self.session).charged_resources(member_id))
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
        if not cuts or not plans:
            return totals
        whole = {
            m for m, c in cuts.items() if (c[0].start, c[-1].end) == (period.start, period.end)
        }
        partial = {m: c for m, c in cuts.items() if m not in whole}
        self.session.execute(text(_PG_WORK_MEM), {"work_mem": "256MB"})
        if whole:
            self._sum_spans(period, plans, totals, whole, None, member_id)
        if partial:
            self._sum_spans(period, plans, totals, set(partial), partial, member_id)
        return totals

    def _sum_spans(  # noqa: PLR0917 - one private call site, in order
        self,
        period: Period,
        plans: Sequence[tuple[int, dt.datetime, dt.datetime]],
        totals: dict[int, dict[tuple[int, str], int]],
        members: set[int],
        clip: Mapping[int, Sequence[Segment]] | None,
        member_id: int | None,
    ) -> None:
        """Add MEMBERS' byte-microseconds to TOTALS, clipped to their memberships in CLIP."""
        params: dict[str, object] = {"p0": _naive(period.start), "p1": _naive(period.end)}
        sums = _plan_sums(period, plans, params)
        resource_filter = ""
        if member_id is not None:
            params["resources"] = list(LedgerRepository(self.session).charged_resources(member_id))
            resource_filter = "WHERE r.id = ANY(CAST(:resources AS integer[]))"
        elif clip is not None:
            # Only the resources ever charged to these members.
            params["resources"] = self._charged_to(members)
            resource_filter = "WHERE r.id = ANY(CAST(:resources AS integer[]))"
        if clip is not None:
            params.update(_membership_params(clip))
        # A member id on its own is a cheap test; a list of ten thousand is not.
        if len(members) == 1:
            params["member"] = next(iter(members))
            member_test = "= CAST(:member AS integer)"
        else:
            member_test = "IS NOT NULL"
        sliced = not resource_filter and len(members) >= PARALLEL_FROM
        if sliced:
            resource_filter = "WHERE r.id % CAST(:slices AS integer) = CAST(:slice AS integer)"
        sql = _PG_USAGE.format(
            outer_sums=", ".join(f"sum(x.s{i})" for i in range(len(plans))),
            plan_sums=", ".join(sums),
            clip_from=_CLIP_FROM if clip is not None else "",
            clip_until=_CLIP_UNTIL if clip is not None else "",
            members=member_test,
            resource_filter=resource_filter,
        )
        rows = self._in_slices(sql, params) if sliced else self.session.execute(text(sql), params)
        for member, kind, *byte_seconds in rows:
            usage = totals.get(member)
            if usage is None or member not in members:  # not a member in the period
                continue
            for (plan_index, _, _), value in zip(plans, byte_seconds, strict=True):
                if value is not None:
                    key = (plan_index, kind)
                    usage[key] = usage.get(key, 0) + _micro(value)

    def _in_slices(self, sql: str, params: Mapping[str, object]) -> list[Any]:
        """SQL's rows, run as SLICES queries at once over disjoint resources.

        PostgreSQL 15 runs none of the per-resource walk in parallel, so a
        large ledger is split by resource over connections of their own, each
        in this transaction's snapshot (pg_export_snapshot), so that together
        they read exactly what one query here would.
        """
        snapshot = str(self.session.scalar(text("SELECT pg_export_snapshot()")))
        if not SNAPSHOT_RE.fullmatch(snapshot):  # pragma: no cover - PostgreSQL's own format
            raise ValueError(f"unexpected snapshot id {snapshot!r}")
        bind = self.session.get_bind()
        engine = bind.engine if isinstance(bind, Connection) else bind

        def run(index: int) -> list[Any]:
            with engine.connect() as plain:
                conn = plain.execution_options(isolation_level="REPEATABLE READ")
                with conn.begin():
                    # Must be the transaction's first statement; a literal by
                    # PostgreSQL's grammar (checked against SNAPSHOT_RE above).
                    conn.exec_driver_sql(f"SET TRANSACTION SNAPSHOT '{snapshot}'")
                    conn.execute(text(_PG_WORK_MEM), {"work_mem": "256MB"})
                    query = text(sql)
                    return list(conn.execute(query, {**params, "slices": SLICES, "slice": index}))

        with ThreadPoolExecutor(SLICES, thread_name_prefix="quotad-billing") as pool:
            return [row for rows in pool.map(run, range(SLICES)) for row in rows]

    def _charged_to(self, members: Collection[int]) -> list[int]:
        query = text(
            "SELECT DISTINCT resource_id FROM usage_samples"
            " WHERE member_id = ANY(CAST(:members AS integer[]))"
        )
        return list(self.session.scalars(query, {"members": sorted(members)}))

    # -- finalized periods ---------------------------------------------------

    def finalized(self, period: Period) -> BillingPeriod | None:
        return self.session.get(BillingPeriod, str(period))

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
