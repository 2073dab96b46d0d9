"""Where a member's usage is heading: the last 30 days' growth, and when it meets a limit.

The trend is the least-squares line through the member's usage at every UTC
midnight of the window and at the moment of asking, computed exactly (bytes
and seconds are integers, the arithmetic is in fractions). Only instants from
the scope's first measurement on count: before it the usage is unknown, not
zero, and a new member would otherwise seem to grow from nothing. Fewer than
MIN_POINTS instants, or less than MIN_SPAN between the first and the last,
is too little data to say anything.

A limit is reached at now + (limit - usage now) / slope when the usage grows;
a date beyond HORIZON is not a forecast anyone should act on, so it is left out.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from sqlalchemy.orm import Session

from quotad.config import Settings
from quotad.ledger.repository import SamplePoint
from quotad.members.service import MemberService
from quotad.quotas.history import boundaries, replay, samples_between
from quotad.quotas.service import QuotaService
from quotad.timeutil import day_words, format_time

WINDOW = dt.timedelta(days=30)
MIN_SPAN = dt.timedelta(days=7)
MIN_POINTS = 3
HORIZON = dt.timedelta(days=3653)
DAY = 86_400

GROWING = "growing"
FLAT = "flat"
SHRINKING = "shrinking"
UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class Trend:
    trend: str
    # Exact slope in bytes per second; None when there is too little data.
    slope: Fraction | None
    points: int
    since: dt.datetime | None

    @property
    def bytes_per_day(self) -> int | None:
        if self.slope is None:
            return None
        return round(self.slope * DAY)  # Fraction rounds half to even


def fit(points: Sequence[tuple[dt.datetime, int]]) -> Trend:
    """The least-squares trend of (time, bytes) POINTS, oldest first."""
    if len(points) < MIN_POINTS or points[-1][0] - points[0][0] < MIN_SPAN:
        return Trend(UNKNOWN, None, len(points), points[0][0] if points else None)
    origin = points[0][0]
    # Whole microseconds: exact integers, and the slope comes out per second.
    xs = [(at - origin) // dt.timedelta(microseconds=1) for at, _ in points]
    ys = [value for _, value in points]
    n = len(points)
    mean_x = Fraction(sum(xs), n)
    mean_y = Fraction(sum(ys), n)
    covariance = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True))
    variance = sum((x - mean_x) ** 2 for x in xs)
    slope = Fraction(covariance) / Fraction(variance) * 1_000_000
    per_day = round(slope * DAY)
    trend = GROWING if per_day > 0 else SHRINKING if per_day < 0 else FLAT
    return Trend(trend, slope, n, origin)


def reaches(trend: Trend, used: int, limit: int | None, now: dt.datetime) -> dict[str, Any] | None:
    """When usage USED, going on at TREND, meets LIMIT (None: no such limit)."""
    if limit is None:
        return None
    if used >= limit:
        return {"limit_bytes": limit, "over": True, "reaches_at": None}
    at = None
    if trend.trend == GROWING and trend.slope is not None:
        seconds = math.ceil((limit - used) / trend.slope)
        if seconds <= HORIZON.total_seconds():
            at = now + dt.timedelta(seconds=seconds)
    return {"limit_bytes": limit, "over": False, "reaches_at": format_time(at)}


def summary(trend: Trend, soft: dict[str, Any] | None, hard: dict[str, Any] | None) -> str:
    """One sentence for a person."""
    if trend.trend == UNKNOWN:
        return "Too little history yet to forecast (at least a week of measurements is needed)."
    for name, limit in (("hard", hard), ("soft", soft)):
        if limit is not None and limit["over"]:
            return f"You are over your {name} limit."
    for name, limit in (("soft", soft), ("hard", hard)):
        if limit is not None and limit["reaches_at"] is not None:
            when = dt.datetime.fromisoformat(limit["reaches_at"])
            return f"At this rate you reach your {name} limit around {day_words(when)}."
    if trend.trend == GROWING:
        return "Your usage grows, but at this rate it stays within your limits for years."
    if trend.trend == SHRINKING:
        return "Your usage is shrinking."
    return "Your usage is steady."


def scope_points(
    samples: Sequence[SamplePoint], member_id: int, scope: str, now: dt.datetime
) -> list[tuple[dt.datetime, int]]:
    """SCOPE's usage at each UTC midnight of the window and at NOW, from its first measurement."""
    chosen = [p for p in samples if scope in ("total", p.kind)]
    theirs = [p.measured_at for p in chosen if p.member_id == member_id]
    if not theirs:
        return []
    first_seen = min(theirs)
    instants = boundaries(now - WINDOW, now, "day")
    if not instants or instants[-1] != now:
        instants.append(now)
    instants = [at for at in instants if at >= first_seen]
    return replay(chosen, member_id, instants)


def forecast(session: Session, settings: Settings, name: str, now: dt.datetime) -> dict[str, Any]:
    """NAME's forecast per quota scope (GET /me/forecast)."""
    member_id = MemberService(session, "quotad").get(name).id
    usage = QuotaService(session, settings).usage(name, now)
    quotas = {q["scope"]: q for q in usage["quotas"]}
    scopes = ["total", *sorted(s for s in quotas if s != "total")]
    samples = samples_between(session, member_id, now - WINDOW, now)
    result = []
    for scope in scopes:
        points = scope_points(samples, member_id, scope, now)
        trend = fit(points)
        used = points[-1][1] if points else 0
        quota = quotas.get(scope)
        soft = reaches(trend, used, quota["soft_bytes"] if quota else None, now)
        hard = reaches(trend, used, quota["hard_bytes"] if quota else None, now)
        result.append(
            {
                "scope": scope,
                "used_bytes": used,
                "trend": trend.trend,
                "growth_bytes_per_day": trend.bytes_per_day,
                "points": trend.points,
                "since": format_time(trend.since),
                "soft": soft,
                "hard": hard,
                "summary": summary(trend, soft, hard),
            }
        )
    return {
        "member": name,
        "at": format_time(now),
        "window_days": WINDOW.days,
        "forecasts": result,
    }
