"""Properties of the billing arithmetic (INTERFACE.md section 5), pure and on both ledgers.

The ledger properties build random ledgers from a small model of what scans
mean (each measurement holds until the resource's next one; a complete scan
zeroes what it no longer finds), so that the usage each path integrates is
checked against figures worked out without the ledger's code.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from fractions import Fraction

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from quotad.billing.arithmetic import (
    Period,
    Sample,
    Segment,
    charge,
    integrate,
    segments,
    step_intervals,
)
from quotad.billing.repository import BillingRepository
from quotad.billing.service import BillingService, StatementDoc, membership
from quotad.config import BillingSettings, RatePlan
from quotad.db import session_scope
from quotad.ledger.service import LedgerService, ScanInput
from quotad.members.service import MemberService
from quotad.models import metadata
from scanners.base import Measurement
from tests.conftest import Ledger
from tests.test_billing import NOW

GIB = 2**30
US = dt.timedelta(microseconds=1)
DAY_US = 86_400 * 1_000_000
BIG = 2**50
NAMES = ("ann", "bob", "cy", "dee")
# Source -> the kind of its resources (a source measures one kind).
SOURCES = {"homes": "tree", "mail": "maildir", "proj": "tree"}
RESOURCES = ("r1", "r2", "r3")
QUANTUM = {"USD": Decimal("0.01"), "JPY": Decimal(1), "KWD": Decimal("0.001")}
END_OF_TIME = dt.datetime.max.replace(tzinfo=dt.UTC)

# Derandomized, so a run in CI is the run a developer repeats. Each ledger example
# empties the ledger first, which is what makes the function-scoped fixture safe.
PURE = settings(derandomize=True, database=None, deadline=None, max_examples=300)
ON_LEDGER = settings(
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=60,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


def half_even(value: Fraction) -> int:
    """VALUE rounded to a whole number, ties to even, written out from the definition."""
    floor, rest = divmod(value.numerator, value.denominator)
    twice = 2 * rest
    if twice > value.denominator or (twice == value.denominator and floor % 2):
        return floor + 1
    return floor


def span(start: dt.datetime, end: dt.datetime) -> int:
    return (end - start) // US


# -- pure level ----------------------------------------------------------------

PERIODS = st.builds(Period, st.integers(2024, 2027), st.integers(1, 12))
PLAN = RatePlan(None, 0, Decimal(1))


@st.composite
def step_functions(draw: st.DrawFn, period: Period) -> list[Sample]:
    """Samples of a few resources at random instants, in the order step_intervals needs.

    Ownership moves between a few members (and none); carry-ins lie before
    the period; some samples share an instant, where the later one counts.
    """
    length = period.length
    instants = st.one_of(
        st.integers(-3 * DAY_US, length - 1),
        st.sampled_from([0, 1, length // 2, length - 1, -1]),
    )
    rows = draw(
        st.lists(
            st.tuples(
                st.integers(1, 4),
                st.sampled_from([1, 2, 3, None]),
                instants,
                st.integers(0, BIG),
            ),
            max_size=25,
        )
    )
    # A sort is stable: samples of one instant keep the order they were drawn (recorded) in.
    rows.sort(key=lambda r: (r[0], r[2]))
    kinds = {1: "tree", 2: "tree", 3: "maildir", 4: "mailbox"}
    return [
        Sample(rid, owner, kinds[rid], period.start + offset * US, size)
        for rid, owner, offset, size in rows
    ]


@st.composite
def periods_with_samples(draw: st.DrawFn) -> tuple[Period, list[Sample]]:
    period = draw(PERIODS)
    return period, draw(step_functions(period))


def reference_integral(
    samples: Sequence[Sample], member: int, start: dt.datetime, end: dt.datetime
) -> dict[str, int]:
    """Byte-microseconds of MEMBER in [START, END), by kind, from the definition alone."""
    totals: dict[str, int] = {}
    by_resource: dict[int, list[Sample]] = {}
    for s in samples:
        by_resource.setdefault(s.resource_id, []).append(s)
    for rows in by_resource.values():
        # Of samples at one instant the last recorded holds; each holds until the next instant.
        holding: dict[dt.datetime, Sample] = {s.at: s for s in rows}
        times = sorted(holding)
        for here, following in zip(times, [*times[1:], END_OF_TIME], strict=True):
            s = holding[here]
            lo, hi = max(here, start), min(following, end)
            if s.member_id == member and lo < hi:
                totals[s.kind] = totals.get(s.kind, 0) + s.bytes * span(lo, hi)
    return totals


@PURE
@given(periods_with_samples(), st.data())
def test_integrating_two_parts_equals_integrating_the_whole(
    case: tuple[Period, list[Sample]], data: st.DataObject
) -> None:
    period, samples = case
    intervals = step_intervals(samples, period.end)
    whole: dict[int, list[Segment]] = {}
    halves: dict[int, list[Segment]] = {}
    for member in (1, 2, 3):
        a = data.draw(st.integers(0, period.length))
        b = data.draw(st.integers(a, period.length))
        m = data.draw(st.one_of(st.integers(a, b), st.sampled_from([a, b])))
        at_a, at_m, at_b = (period.start + x * US for x in (a, m, b))
        whole[member] = [Segment(at_a, at_b, PLAN, 0)]
        halves[member] = [Segment(at_a, at_m, PLAN, 0), Segment(at_m, at_b, PLAN, 1)]
    once = integrate(intervals, whole)
    split = integrate(intervals, halves)
    for member in (1, 2, 3):
        kinds = {kind for _, kind in once[member]}
        assert kinds == {kind for _, kind in split[member]}
        for kind in kinds:
            parts = split[member].get((0, kind), 0) + split[member].get((1, kind), 0)
            assert once[member][(0, kind)] == parts
        # And the whole is the integral of the step function by its definition.
        expected = reference_integral(samples, member, whole[member][0].start, whole[member][0].end)
        assert {k: v for (_, k), v in once[member].items() if v} == {
            k: v for k, v in expected.items() if v
        }


@PURE
@given(
    PERIODS,
    st.data(),
    st.integers(0, 2**45),
    st.decimals(Decimal(0), Decimal(100), places=4),
    st.sampled_from(sorted(QUANTUM)),
)
def test_one_plan_charges_the_average_above_the_allowance_at_the_price(
    period: Period, data: st.DataObject, free: int, price: Decimal, currency: str
) -> None:
    # The member exists in [a, b), a part of the period that is not empty.
    a = data.draw(st.one_of(st.integers(0, period.length - 1), st.just(0)))
    b = data.draw(st.one_of(st.integers(a + 1, period.length), st.just(period.length)))
    plan = RatePlan(None, free, price)
    cuts = segments(period, [plan], period.start + a * US, period.start + b * US)
    usage = data.draw(
        st.dictionaries(
            st.tuples(st.just(0), st.sampled_from(["tree", "maildir", "mailbox"])),
            st.integers(0, BIG * (b - a)),
            max_size=3,
        )
    )
    figures = charge(period, cuts, usage, currency)

    average = half_even(Fraction(sum(usage.values()), period.length))
    prorated = half_even(Fraction(free * (b - a), period.length))
    billable = Fraction(max(0, average - prorated), GIB)
    quantum = Fraction(QUANTUM[currency])
    assert figures.average_bytes == average
    assert figures.free_bytes == prorated
    assert Fraction(figures.billable_gib_months) == billable
    amount = half_even(billable * Fraction(price) / quantum) * quantum
    assert Fraction(figures.usage_amount) == amount
    # Written to the currency's minor unit: "0.10", not "0.1".
    assert figures.usage_amount.as_tuple().exponent == QUANTUM[currency].as_tuple().exponent


@PURE
@given(PERIODS, st.data(), st.integers(0, 2**50))
def test_free_allowance_prorates_by_the_part_of_the_period_a_member_existed(
    period: Period, data: st.DataObject, free: int
) -> None:
    # Membership may begin before the period and end after it, or never.
    start = period.start + data.draw(st.integers(-DAY_US * 40, period.length)) * US
    end = data.draw(
        st.one_of(
            st.just(END_OF_TIME),
            st.integers(0, period.length + DAY_US * 40).map(lambda x: start + x * US),
        )
    )
    plan = RatePlan(None, free, Decimal("0.10"))
    cuts = segments(period, [plan], start, end)
    part = max(0, span(max(start, period.start), min(end, period.end)))
    assert sum(span(c.start, c.end) for c in cuts) == part
    figures = charge(period, cuts, {}, "USD")
    assert figures.free_bytes == half_even(Fraction(free * part, period.length))
    assert figures.billable_gib_months == 0
    assert figures.usage_amount == 0


@PURE
@given(PERIODS, st.data(), st.integers(0, 2**40), st.booleans())
def test_a_plan_change_that_changes_nothing_never_changes_the_bill(
    period: Period, data: st.DataObject, free: int, per_kind: bool
) -> None:
    # The same plan again from a moment inside the period: usage concentrated
    # on either side of it must keep the whole allowance.
    prices = {"maildir": Decimal("0.50")} if per_kind else {}
    plan = RatePlan(None, free, Decimal("0.10"), prices)
    cut = period.start + data.draw(st.integers(1, period.length - 1)) * US
    again = RatePlan(cut, free, Decimal("0.10"), prices)
    usage_of = st.dictionaries(
        st.sampled_from(["tree", "maildir"]), st.integers(0, BIG * period.length), max_size=2
    )
    before, after = data.draw(usage_of), data.draw(usage_of)
    whole = charge(
        period,
        segments(period, [plan], period.start, period.end),
        {(0, k): before.get(k, 0) + after.get(k, 0) for k in {*before, *after}},
        "USD",
    )
    split = charge(
        period,
        segments(period, [plan, again], period.start, period.end),
        {**{(0, k): v for k, v in before.items()}, **{(1, k): v for k, v in after.items()}},
        "USD",
    )
    for figures in (whole, split):
        # The statement's own figures always obey the contract's formula.
        assert Fraction(figures.billable_gib_months) == Fraction(
            max(0, figures.average_bytes - figures.free_bytes), GIB
        )
    # Equal but for each part's rounding to whole bytes (one per line and part).
    billable = [Fraction(f.billable_gib_months) * GIB for f in (whole, split)]
    assert abs(billable[0] - billable[1]) <= len(split.charges) + 2


# -- ledger level --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MemberPlan:
    name: str
    joined: dt.datetime | None
    left: dt.datetime | None


@dataclass(frozen=True, slots=True)
class ScanPlan:
    """A complete scan of SOURCE finishing AT: (resource, owner, bytes) per resource found."""

    source: str
    at: dt.datetime
    sizes: tuple[tuple[str, str | None, int], ...]


@dataclass(frozen=True, slots=True)
class ModelSample:
    at: dt.datetime
    seq: int  # the order it was recorded in
    owner: str | None
    bytes: int
    present: bool


@dataclass(frozen=True, slots=True)
class LedgerPlan:
    period: Period
    members: tuple[MemberPlan, ...]
    scans: tuple[ScanPlan, ...]
    billing: BillingSettings
    instants: tuple[dt.datetime, ...] = field(default=())

    def samples(self, extra: Sequence[ScanPlan] = ()) -> dict[tuple[str, str], list[ModelSample]]:
        """Every resource's samples as the ledger should hold them after the scans, in order."""
        result: dict[tuple[str, str], list[ModelSample]] = {}
        seq = 0
        for scan in (*self.scans, *extra):
            seen = set()
            for name, owner, size in scan.sizes:
                seen.add((scan.source, name))
                result.setdefault((scan.source, name), []).append(
                    ModelSample(scan.at, seq, owner, size, present=True)
                )
                seq += 1
            # A complete scan zeroes what it no longer finds, unless a newer scan found it.
            for key, rows in sorted(result.items()):
                latest = max(rows, key=lambda s: (s.at, s.seq))
                if key[0] != scan.source or key in seen:
                    continue
                if latest.present and latest.at <= scan.at:
                    rows.append(ModelSample(scan.at, seq, None, 0, present=False))
                    seq += 1
        return result

    def state(self, source: str, at: dt.datetime) -> dict[str, ModelSample]:
        """What SOURCE's resources held at AT: each one's latest sample then."""
        found: dict[str, ModelSample] = {}
        for (src, name), rows in self.samples().items():
            before = [s for s in rows if s.at <= at]
            if src == source and before:
                found[name] = max(before, key=lambda s: (s.at, s.seq))
        return found


def model_usage(
    plan: LedgerPlan, extra: Sequence[ScanPlan] = ()
) -> dict[str, dict[tuple[int, str], int]]:
    """integrate() worked out from the model: byte-microseconds per member, (plan, kind)."""
    period = plan.period
    samples = plan.samples(extra)
    first: dict[str, dt.datetime] = {}
    for rows in samples.values():
        for s in rows:
            if s.owner is not None:
                first[s.owner] = min(s.at, first.get(s.owner, s.at))
    result: dict[str, dict[tuple[int, str], int]] = {}
    for member in plan.members:
        # Unset joined_at: the first measurement (the member's creation is after every period).
        start = member.joined or first.get(member.name)
        if start is None:
            continue
        cuts = segments(period, plan.billing.plans, start, member.left or END_OF_TIME)
        if not cuts:
            continue
        usage: dict[tuple[int, str], int] = {}
        for (source, _), rows in samples.items():
            holding = {s.at: s for s in sorted(rows, key=lambda s: (s.at, s.seq))}
            times = sorted(holding)
            for here, following in zip(times, [*times[1:], END_OF_TIME], strict=True):
                s = holding[here]
                if s.owner != member.name:
                    continue
                for seg in cuts:
                    lo, hi = max(here, seg.start), min(following, seg.end)
                    if lo < hi:
                        key = (seg.plan_index, SOURCES[source])
                        usage[key] = usage.get(key, 0) + s.bytes * span(lo, hi)
        result[member.name] = usage
    return result


@st.composite
def ledger_plans(draw: st.DrawFn) -> LedgerPlan:
    """A few members joining and leaving around one period, scans of three sources, plans."""
    period = Period(2026, draw(st.sampled_from([2, 3, 4])))
    length = period.length

    def instant(offset: int) -> dt.datetime:
        return period.start + offset * US

    anywhere = st.integers(-10 * DAY_US, length + 3 * DAY_US).map(instant)
    inside = st.integers(0, length - 1).map(instant)
    edges = [period.start, period.start - US, period.end - US, period.end]

    changes: tuple[RatePlan, ...] = ()
    if draw(st.booleans()):
        starts = draw(st.one_of(inside, st.sampled_from(edges)))
        edges.append(starts)
        changes = (
            RatePlan(
                starts,
                draw(st.integers(0, 2**40)),
                draw(st.decimals(Decimal(0), Decimal(1), places=3)),
                draw(st.sampled_from([{}, {"maildir": Decimal("0.5")}])),
            ),
        )
    billing = BillingSettings(
        currency="USD",
        free_bytes=draw(st.integers(0, 2**40)),
        price_per_gib_month=draw(st.decimals(Decimal(0), Decimal(1), places=3)),
        prices=draw(st.sampled_from([{}, {"tree": Decimal("0.02")}])),
        changes=changes,
    )

    members = []
    for name in NAMES[: draw(st.integers(2, len(NAMES)))]:
        joined = draw(st.one_of(st.none(), st.just(period.start - 30 * DAY_US * US), inside))
        left = draw(st.one_of(st.none(), inside, st.just(period.end + DAY_US * US)))
        if joined is not None and left is not None and left < joined:
            joined, left = left, joined
        members.append(MemberPlan(name, joined, left))
        edges.extend(t for t in (joined, left) if t is not None)

    owners = st.one_of(st.sampled_from([m.name for m in members]), st.none())
    scans: list[ScanPlan] = []
    for _ in range(draw(st.integers(1, 8))):
        # Scans arrive in any order; some finish at the same instant as an earlier one.
        pool = [*edges, *(s.at for s in scans)]
        at = draw(st.one_of(anywhere, st.sampled_from(pool)))
        source = draw(st.sampled_from(sorted(SOURCES)))
        if scans and draw(st.integers(0, 2)) == 0:
            # Another scan of an earlier scan's source finishing at the same instant.
            again = draw(st.sampled_from(scans))
            at, source = again.at, again.source
        found = draw(
            st.dictionaries(
                st.sampled_from(RESOURCES), st.tuples(owners, st.integers(0, BIG)), max_size=3
            )
        )
        sizes = tuple((name, owner, size) for name, (owner, size) in sorted(found.items()))
        scans.append(ScanPlan(source, at, sizes))
    return LedgerPlan(period, tuple(members), tuple(scans), billing, tuple(edges))


def _march(day: int, hour: int = 0) -> dt.datetime:
    return dt.datetime(2026, 3, 1, tzinfo=dt.UTC) + dt.timedelta(days=day - 1, hours=hour)


# Every case the two paths must agree on, in one ledger: carry-ins from before the
# period (two of one resource at one instant there, the later counting), a sample
# exactly at the period's start, two at one instant inside it, ownership moving,
# a resource zeroed by a complete scan, members joining and leaving mid-period,
# a member dated by their first measurement, and a rate plan starting mid-period.
EDGES = LedgerPlan(
    Period(2026, 3),
    (
        MemberPlan("ann", _march(-30), None),
        MemberPlan("bob", _march(10, 6), _march(25)),
        MemberPlan("cy", None, None),
    ),
    (
        ScanPlan("homes", _march(-3), (("r1", "ann", 7 * GIB), ("r2", "bob", 3 * GIB))),
        ScanPlan("homes", _march(-3), (("r1", "ann", 5 * GIB), ("r2", "bob", 11 * GIB))),
        ScanPlan("mail", _march(1), (("r1", "cy", 2 * GIB + 1),)),
        ScanPlan("homes", _march(8, 3), (("r1", "bob", 13 * GIB), ("r2", "bob", 1))),
        ScanPlan("homes", _march(8, 3), (("r1", "ann", 17 * GIB + 3), ("r2", "bob", 2))),
        ScanPlan("mail", _march(20, 12), ()),
        ScanPlan("proj", _march(15), (("r3", "bob", BIG),)),
        ScanPlan("homes", _march(22), (("r2", "ann", 19 * GIB),)),
    ),
    BillingSettings(
        currency="USD",
        free_bytes=GIB,
        price_per_gib_month=Decimal("0.10"),
        changes=(RatePlan(_march(12, 18), 2 * GIB, Decimal("0.2"), {"maildir": Decimal("0.5")}),),
    ),
)


def empty(ledger: Ledger) -> None:
    """Every example starts from an empty ledger."""
    # A few rows each: deleting them is quicker than TRUNCATE on PostgreSQL.
    with ledger.engine.begin() as conn:
        for table in reversed(metadata.sorted_tables):
            conn.execute(table.delete())


def record(ledger: Ledger, scans: Sequence[ScanPlan]) -> None:
    for scan in scans:
        kind = SOURCES[scan.source]
        item = ScanInput(
            scan_id=uuid.uuid4(),
            source=scan.source,
            source_kind=kind,
            started_at=scan.at - dt.timedelta(seconds=10),
            finished_at=scan.at,
            measurements=[
                Measurement(member=owner, kind=kind, name=name, bytes=size, files=1)
                for name, owner, size in scan.sizes
            ],
        )
        with session_scope(ledger.engine, write=True) as session:
            LedgerService(session).record(item)


def build(ledger: Ledger, plan: LedgerPlan) -> None:
    empty(ledger)
    with session_scope(ledger.engine, write=True) as session:
        members = MemberService(session, "test")
        for m in plan.members:
            members.add(m.name, email=f"{m.name}@example.org", joined_at=m.joined, left_at=m.left)
    record(ledger, plan.scans)


def drafts(ledger: Ledger, plan: LedgerPlan) -> list[StatementDoc]:
    with session_scope(ledger.engine) as session:
        return BillingService(session, plan.billing, now=NOW).statements(plan.period)


@ON_LEDGER
@given(ledger_plans(), st.data())
def test_a_measurement_of_one_member_never_changes_another_members_statement(
    ledger: Ledger, plan: LedgerPlan, data: st.DataObject
) -> None:
    build(ledger, plan)
    before = {d.member: d.text for d in drafts(ledger, plan)}

    who = data.draw(st.sampled_from([m.name for m in plan.members]))
    at = data.draw(
        st.one_of(
            st.sampled_from([*plan.instants, *(s.at for s in plan.scans)]),
            st.integers(-DAY_US, plan.period.length).map(lambda x: plan.period.start + x * US),
        )
    )
    source = data.draw(st.sampled_from(sorted(SOURCES)))
    # The scan finds the source as it was at that instant, but for one resource of WHO's
    # (one they hold, one gone, or a new one), so that no one else's resource changes.
    state = {n: s for n, s in plan.state(source, at).items() if s.present}
    mine = sorted(n for n in RESOURCES if n not in state or state[n].owner == who)
    name = data.draw(st.sampled_from([*mine, "new"]))
    sizes = {n: (s.owner, s.bytes) for n, s in state.items()}
    sizes[name] = (who, data.draw(st.integers(0, BIG)))
    record(
        ledger,
        [ScanPlan(source, at, tuple((n, o, b) for n, (o, b) in sorted(sizes.items())))],
    )

    after = {d.member: d.text for d in drafts(ledger, plan)}
    assert {n: t for n, t in after.items() if n != who} == {
        n: t for n, t in before.items() if n != who
    }


@ON_LEDGER
@given(ledger_plans())
@example(EDGES)
def test_a_draft_computed_again_is_the_same_document(ledger: Ledger, plan: LedgerPlan) -> None:
    build(ledger, plan)
    first = drafts(ledger, plan)
    again = drafts(ledger, plan)
    assert [(d.member, d.text, d.etag) for d in again] == [
        (d.member, d.text, d.etag) for d in first
    ]
    # One member's statement alone is the one in the list of all.
    with session_scope(ledger.engine) as session:
        service = BillingService(session, plan.billing, now=NOW)
        for doc in first:
            alone = service.statement(doc.member, plan.period)
            assert (alone.text, alone.etag) == (doc.text, doc.etag)


def ledger_cuts(repo: BillingRepository, plan: LedgerPlan) -> dict[int, list[Segment]]:
    """Each member's segments, as the statements cut them."""
    period = plan.period
    rows = repo.members(period)
    first = repo.first_measured([r.id for r in rows if r.joined_at is None])
    cuts = {}
    for row in rows:
        found = segments(period, plan.billing.plans, *membership(row, first.get(row.id)))
        if found:
            cuts[row.id] = found
    return cuts


@ON_LEDGER
@given(ledger_plans())
@example(EDGES)
def test_usage_is_the_integral_of_the_measurements_on_every_path(
    ledger: Ledger, plan: LedgerPlan
) -> None:
    build(ledger, plan)
    period = plan.period
    expected = model_usage(plan)
    with session_scope(ledger.engine) as session:
        repo = BillingRepository(session)
        names = {r.id: r.name for r in repo.members(period)}
        cuts = ledger_cuts(repo, plan)
        in_python = integrate(step_intervals(repo.samples(period), period.end), cuts)
        assert {names[m]: u for m, u in in_python.items()} == expected
        alone = {
            m: integrate(step_intervals(repo.samples(period, m), period.end), {m: c})[m]
            for m, c in cuts.items()
        }
        assert alone == in_python
        if ledger.backend != "postgresql":
            return
        windows = [
            (s.plan_index, s.start, s.end)
            for s in segments(period, plan.billing.plans, period.start, period.end)
        ]
        assert repo.usage_in_database(period, cuts, windows) == in_python
        for m, c in cuts.items():
            assert repo.usage_in_database(period, {m: c}, windows, m) == {m: in_python[m]}
