"""The billing arithmetic of INTERFACE.md section 5, with no database.

Exact throughout: time in whole microseconds, usage in byte-microseconds
(Python integers), averages rounded half-even to whole bytes once, money in
`Decimal` computed exactly and rounded half-even to the currency's minor unit
once, at the end. Every figure a statement shows is an input of the figures
after it, so anyone can check a statement with a pencil:
`billable_gib_months = (average_bytes - free_bytes) / 2**30` and
`amount = billable_gib_months * price`, rounded.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Context, Decimal

from quotad.config import RatePlan
from quotad.errors import InvalidInput

GIB = 2**30
MICROSECOND = dt.timedelta(microseconds=1)
PERIOD_RE = re.compile(r"^(\d{4})-(\d{2})$")

# Enough digits that no product or quotient here is ever rounded: a price has
# a few digits, a byte count at most 20, and dividing by 2**30 adds at most 30.
EXACT = Context(prec=120)

# ISO 4217 currencies whose minor unit is not the hundredth.
_MINOR_UNITS = {
    **dict.fromkeys(
        [
            "BIF",
            "CLP",
            "DJF",
            "GNF",
            "ISK",
            "JPY",
            "KMF",
            "KRW",
            "PYG",
            "RWF",
            "UGX",
            "UYI",
            "VND",
            "VUV",
            "XAF",
            "XOF",
            "XPF",
        ],
        0,
    ),
    **dict.fromkeys(["BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"], 3),
    **dict.fromkeys(["CLF", "UYW"], 4),
}


def minor_unit(currency: str) -> Decimal:
    """The smallest amount of CURRENCY: Decimal("0.01") for most."""
    return Decimal(1).scaleb(-_MINOR_UNITS.get(currency, 2))


def round_money(amount: Decimal, currency: str) -> Decimal:
    return amount.quantize(minor_unit(currency), rounding=ROUND_HALF_EVEN, context=EXACT)


def exact_sum(values: Iterable[Decimal]) -> Decimal:
    """A sum that is never rounded (the default context keeps only 28 digits)."""
    total = Decimal(0)
    for value in values:
        total = EXACT.add(total, value)
    return total


def micros(delta: dt.timedelta) -> int:
    return delta // MICROSECOND


def divide_half_even(numerator: int, denominator: int) -> int:
    """NUMERATOR / DENOMINATOR rounded half-even to a whole number (DENOMINATOR > 0).

    In integers: a Fraction per figure cost more than the rest of a statement.
    """
    quotient, remainder = divmod(numerator, denominator)
    twice = 2 * remainder
    if twice > denominator or (twice == denominator and quotient % 2):
        quotient += 1
    return quotient


def gib_months(billable_bytes: int) -> Decimal:
    """BILLABLE_BYTES / 2**30, exact: a power of two always divides to a finite decimal."""
    return EXACT.divide(Decimal(billable_bytes), Decimal(GIB))


def decimal_text(value: Decimal) -> str:
    """A Decimal as a plain string without exponent or trailing zeros ("52900", "0.5")."""
    if value == 0:
        return "0"
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


@dataclass(frozen=True, slots=True, order=True)
class Period:
    """A calendar month in UTC, `YYYY-MM`: [start, end)."""

    year: int
    month: int

    @classmethod
    def parse(cls, text: str) -> Period:
        match = PERIOD_RE.fullmatch(text.strip()) if isinstance(text, str) else None
        if match is None:
            raise InvalidInput(f"a billing period is a month written YYYY-MM, not {text!r}")
        year, month = int(match[1]), int(match[2])
        if not 1 <= month <= 12:  # noqa: PLR2004 - months of the year
            raise InvalidInput(f"no month {month} in {text!r}")
        if not 1970 <= year <= 9998:  # noqa: PLR2004 - the ledger's calendar
            raise InvalidInput(f"period {text!r} is out of range (1970-01 to 9998-12)")
        return cls(year, month)

    @classmethod
    def containing(cls, at: dt.datetime) -> Period:
        at = at.astimezone(dt.UTC)
        return cls(at.year, at.month)

    def __str__(self) -> str:
        return f"{self.year:04d}-{self.month:02d}"

    @property
    def start(self) -> dt.datetime:
        return _bounds(self.year, self.month)[0]

    @property
    def end(self) -> dt.datetime:
        return _bounds(self.year, self.month)[1]

    def next(self) -> Period:
        return Period(self.year + self.month // 12, self.month % 12 + 1)

    def previous(self) -> Period:
        return Period(self.year - (self.month == 1), (self.month - 2) % 12 + 1)

    @property
    def length(self) -> int:
        """The period's length in microseconds."""
        return _bounds(self.year, self.month)[2]


# A list of statements asks for one period's bounds tens of thousands of times.
@functools.lru_cache(maxsize=256)
def _bounds(year: int, month: int) -> tuple[dt.datetime, dt.datetime, int]:
    start = dt.datetime(year, month, 1, tzinfo=dt.UTC)
    end = dt.datetime(year + month // 12, month % 12 + 1, 1, tzinfo=dt.UTC)
    return start, end, micros(end - start)


@dataclass(frozen=True, slots=True)
class Interval:
    """A span of one resource's step function: BYTES from START until END."""

    resource_id: int
    member_id: int | None
    kind: str
    start: dt.datetime
    end: dt.datetime
    bytes: int


@dataclass(frozen=True, slots=True)
class Sample:
    """One ledger sample as the arithmetic needs it."""

    resource_id: int
    member_id: int | None
    kind: str
    at: dt.datetime
    bytes: int


def step_intervals(samples: Iterable[Sample], end: dt.datetime) -> list[Interval]:
    """Each sample's span: from its time until the next sample of its resource, or END.

    SAMPLES must be ordered by resource, then time, then the order they were
    recorded in (so that of two samples at one instant the later counts).
    """
    result: list[Interval] = []
    previous: Sample | None = None
    for sample in samples:
        if previous is not None:
            until = sample.at if sample.resource_id == previous.resource_id else end
            result.append(_interval(previous, until))
        previous = sample
    if previous is not None:
        result.append(_interval(previous, end))
    return result


def _interval(sample: Sample, until: dt.datetime) -> Interval:
    return Interval(
        sample.resource_id, sample.member_id, sample.kind, sample.at, until, sample.bytes
    )


@dataclass(frozen=True, slots=True)
class Segment:
    """A part of a period under one rate plan, within one member's membership.

    `plan_index` is the plan's place in the settings' list: usage is keyed
    by it, so that one query can integrate every member against the same cuts.
    """

    start: dt.datetime
    end: dt.datetime
    plan: RatePlan
    plan_index: int


def segments(
    period: Period, plans: Sequence[RatePlan], start: dt.datetime, end: dt.datetime
) -> list[Segment]:
    """[START, END) within PERIOD, cut where a rate plan begins; empty if nothing is left."""
    start = max(start, period.start)
    end = min(end, period.end)
    result: list[Segment] = []
    for index, plan in enumerate(plans):
        plan_start = plan.starts_at or start
        plan_end = plans[index + 1].starts_at if index + 1 < len(plans) else None
        lo = max(start, plan_start)
        hi = end if plan_end is None else min(end, plan_end)
        if lo < hi:
            result.append(Segment(lo, hi, plan, index))
    return result


def integrate(
    intervals: Iterable[Interval], cuts: Mapping[int, Sequence[Segment]]
) -> dict[int, dict[tuple[int, str], int]]:
    """Byte-microseconds per member, per (plan index, kind), in one pass.

    CUTS maps each member to bill to their segments. An interval counts for a
    member only while attributed to them; a kind appears once any attributed
    interval overlaps a segment, even at 0 bytes.
    """
    totals: dict[int, dict[tuple[int, str], int]] = {m: {} for m in cuts}
    for iv in intervals:
        if iv.member_id is None or iv.member_id not in cuts:
            continue
        usage = totals[iv.member_id]
        for seg in cuts[iv.member_id]:
            lo = max(iv.start, seg.start)
            hi = min(iv.end, seg.end)
            if lo < hi:
                key = (seg.plan_index, iv.kind)
                usage[key] = usage.get(key, 0) + iv.bytes * micros(hi - lo)
    return totals


@dataclass(frozen=True, slots=True)
class Charge:
    """One priced part of a statement: a segment, for all kinds or for one."""

    start: dt.datetime
    end: dt.datetime
    kind: str | None  # None: every kind at the plan's one price
    average_bytes: int
    free_bytes: int
    price_per_gib_month: Decimal
    # Derived once, when made (Charge.of): a statement reads each of them
    # several times, and Decimal division is the dearest step of pricing.
    billable_gib_months: Decimal = Decimal(0)
    amount: Decimal = Decimal(0)  # exact, unrounded: the statement rounds the sum once

    @classmethod
    def of(
        cls,
        start: dt.datetime,
        end: dt.datetime,
        kind: str | None,
        *,
        average_bytes: int,
        free_bytes: int,
        price: Decimal,
    ) -> Charge:
        billable = gib_months(max(0, average_bytes - free_bytes))
        amount = EXACT.multiply(billable, price)
        return cls(start, end, kind, average_bytes, free_bytes, price, billable, amount)


@dataclass(frozen=True, slots=True)
class Figures:
    """A member's usage charge for one period, before adjustments."""

    average_bytes: int
    free_bytes: int
    billable_gib_months: Decimal
    usage_amount: Decimal  # rounded to the minor unit
    lines: Mapping[str, int]  # kind -> average bytes
    charges: Sequence[Charge] = field(default_factory=tuple)


@dataclass(slots=True)
class _Line:
    """A charge being built: how much of its average the allowance covers so far."""

    start: dt.datetime
    end: dt.datetime
    kind: str | None
    average: int
    price: Decimal
    covered: int = 0

    def frozen(self) -> Charge:
        return Charge.of(
            self.start,
            self.end,
            self.kind,
            average_bytes=self.average,
            free_bytes=self.covered,
            price=self.price,
        )


def charge(
    period: Period,
    cuts: Sequence[Segment],
    usage: Mapping[tuple[int, str], int],
    currency: str,
) -> Figures:
    """Price a member's byte-microseconds per (segment, kind) over PERIOD.

    Each segment (a part of the period under one plan) is priced on its own:
    its usage averaged over the period's length, at its plan's price, and its
    plan's free allowance prorated by the segment's length. With prices per
    kind each kind is a line of its own. An allowance covers the dearest
    lines first (ties by kind name); what a segment leaves unused covers the
    other segments' lines, dearest first, so splitting a period where nothing
    changes never changes the bill. The statement's figures are the sums:
    `billable = max(0, average_bytes - free_bytes)` holds for them exactly.
    """
    length = period.length
    lines: list[_Line] = []
    free_total = 0
    left_over = 0
    for seg in cuts:
        plan = seg.plan
        index = seg.plan_index
        kinds = sorted(kind for i, kind in usage if i == index)
        free = divide_half_even(plan.free_bytes * micros(seg.end - seg.start), length)
        free_total += free
        if not plan.prices or not kinds:
            total = sum(usage[(index, k)] for k in kinds)
            average = divide_half_even(total, length)
            part = [_Line(seg.start, seg.end, None, average, plan.price_per_gib_month)]
        else:
            part = [
                _Line(
                    seg.start,
                    seg.end,
                    kind,
                    divide_half_even(usage[(index, kind)], length),
                    plan.price_of(kind),
                )
                for kind in sorted(kinds, key=lambda k: (-plan.price_of(k), k))
            ]
        left_over += _cover(part, free)
        lines.extend(part)
    _cover(sorted(lines, key=lambda line: (-line.price, line.start, line.kind or "")), left_over)
    charges = tuple(line.frozen() for line in lines)
    kinds_total: dict[str, int] = {}
    for (_, kind), value in usage.items():
        kinds_total[kind] = kinds_total.get(kind, 0) + value
    return Figures(
        average_bytes=sum(c.average_bytes for c in charges),
        free_bytes=free_total,
        billable_gib_months=exact_sum(c.billable_gib_months for c in charges),
        usage_amount=round_money(exact_sum(c.amount for c in charges), currency),
        lines={k: divide_half_even(v, length) for k, v in sorted(kinds_total.items())},
        charges=charges,
    )


def _cover(lines: Sequence[_Line], allowance: int) -> int:
    """Spend ALLOWANCE on LINES' uncovered bytes, in their order; return what is left."""
    for line in lines:
        take = min(line.average - line.covered, allowance)
        line.covered += take
        allowance -= take
    return allowance
