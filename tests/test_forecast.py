"""The usage forecast on constructed histories: flat, growing, shrinking, too little data."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable
from typing import Any

from quotad.db import session_scope
from quotad.ledger.service import LedgerService, ScanInput
from quotad.quotas.forecast import FLAT, GROWING, SHRINKING, UNKNOWN, fit, forecast, reaches
from scanners.base import Measurement
from tests.conftest import Ledger

MIB = 2**20
GIB = 2**30
# A midnight, so that the instants are the window's midnights alone.
NOW = dt.datetime(2026, 11, 30, tzinfo=dt.UTC)
DAY = dt.timedelta(days=1)
LIMITS = """
[defaults.quota.total]
soft = "10GiB"
hard = "12GiB"
[defaults.quota.maildir]
soft = "1GiB"
hard = "2GiB"
"""


def record(ledger: Ledger, at: dt.datetime, member: str, size: int, kind: str = "tree") -> None:
    scan = ScanInput(
        scan_id=uuid.uuid4(),
        source=kind,
        source_kind=kind,
        started_at=at - dt.timedelta(seconds=30),
        finished_at=at,
        measurements=[Measurement(member=member, kind=kind, name=member, bytes=size, files=1)],
    )
    with session_scope(ledger.engine, write=True) as session:
        LedgerService(session, auto_register=True).record(scan)


def history(ledger: Ledger, member: str, days: int, size: Callable[[int], int]) -> None:
    """One scan a day at 03:00 for the DAYS days before NOW, SIZE(day) bytes on day 0, 1, ..."""
    first = NOW - days * DAY + dt.timedelta(hours=3)
    for day in range(days):
        record(ledger, first + day * DAY, member, size(day))


def total(ledger: Ledger, member: str) -> dict[str, Any]:
    with session_scope(ledger.engine) as session:
        result = forecast(session, ledger.settings(LIMITS), member, NOW)
    scopes = {f["scope"]: f for f in result["forecasts"]}
    found: dict[str, Any] = scopes["total"]
    return found


# the arithmetic alone


def line(days: int, start: int, per_day: int) -> list[tuple[dt.datetime, int]]:
    return [(NOW - (days - d) * DAY, start + d * per_day) for d in range(days + 1)]


def test_fit_of_a_straight_line_is_its_slope_exactly() -> None:
    trend = fit(line(30, GIB, 100 * MIB))
    assert (trend.trend, trend.bytes_per_day, trend.points) == (GROWING, 100 * MIB, 31)
    assert fit(line(30, 5 * GIB, -7)).bytes_per_day == -7
    assert fit(line(30, 5 * GIB, 0)).trend == FLAT


def test_too_few_points_or_too_short_a_span_says_nothing() -> None:
    assert fit([]).trend == UNKNOWN
    assert fit(line(1, GIB, MIB)).trend == UNKNOWN  # two points
    assert fit(line(6, GIB, MIB)).trend == UNKNOWN  # six days
    assert fit(line(7, GIB, MIB)).trend == GROWING


def test_a_limit_is_reached_where_the_line_meets_it() -> None:
    trend = fit(line(30, GIB, GIB))
    assert reaches(trend, 5 * GIB, 10 * GIB, NOW) == {
        "limit_bytes": 10 * GIB,
        "over": False,
        "reaches_at": "2026-12-05T00:00:00Z",
    }
    assert reaches(trend, 10 * GIB, 10 * GIB, NOW) == {
        "limit_bytes": 10 * GIB,
        "over": True,
        "reaches_at": None,
    }
    # A byte a day: the limit is centuries away, which is no forecast.
    slow = fit(line(30, GIB, 1))
    assert reaches(slow, GIB, 10 * GIB, NOW) == {
        "limit_bytes": 10 * GIB,
        "over": False,
        "reaches_at": None,
    }
    assert reaches(trend, GIB, None, NOW) is None


# constructed histories in the ledger, on both engines


def test_linear_growth_reaches_the_soft_limit_on_the_day_the_arithmetic_says(
    ledger: Ledger,
) -> None:
    history(ledger, "alice", 30, lambda day: GIB + day * 100 * MIB)
    found = total(ledger, "alice")
    assert found["trend"] == GROWING
    assert found["growth_bytes_per_day"] == 100 * MIB
    # At midnight the day-29 scan holds: 1 GiB + 2,900 MiB = 3,924 MiB. The
    # soft limit (10,240 MiB) is 6,316 MiB away, at 100 MiB a day:
    # 63.16 days = 5,457,024 s.
    assert found["used_bytes"] == 3924 * MIB
    reach = NOW + dt.timedelta(seconds=5_457_024)
    assert found["soft"] == {
        "limit_bytes": 10 * GIB,
        "over": False,
        "reaches_at": "2027-02-01T03:50:24Z",
    }
    assert reach == dt.datetime(2027, 2, 1, 3, 50, 24, tzinfo=dt.UTC)
    assert found["summary"] == "At this rate you reach your soft limit around 1 February 2027."
    assert found["points"] == 30  # the midnights from the first measurement on


def test_flat_history_is_steady(ledger: Ledger) -> None:
    history(ledger, "bob", 30, lambda _day: 3 * GIB)
    found = total(ledger, "bob")
    assert (found["trend"], found["growth_bytes_per_day"]) == (FLAT, 0)
    assert found["soft"] == {"limit_bytes": 10 * GIB, "over": False, "reaches_at": None}
    assert found["summary"] == "Your usage is steady."


def test_shrinking_history_reaches_no_limit(ledger: Ledger) -> None:
    history(ledger, "carol", 30, lambda day: 8 * GIB - day * 50 * MIB)
    found = total(ledger, "carol")
    assert (found["trend"], found["growth_bytes_per_day"]) == (SHRINKING, -50 * MIB)
    assert found["hard"] == {"limit_bytes": 12 * GIB, "over": False, "reaches_at": None}
    assert found["summary"] == "Your usage is shrinking."


def test_a_new_member_has_too_little_data(ledger: Ledger) -> None:
    # Three days of fast growth: from nothing before the first measurement
    # would look like a trend; it is not one yet.
    history(ledger, "dave", 3, lambda day: (day + 1) * GIB)
    found = total(ledger, "dave")
    assert (found["trend"], found["growth_bytes_per_day"]) == (UNKNOWN, None)
    assert found["points"] == 3
    assert found["soft"]["reaches_at"] is None
    assert found["summary"].startswith("Too little history")


def test_over_the_limit_says_so(ledger: Ledger) -> None:
    history(ledger, "erin", 30, lambda day: 11 * GIB + day * MIB)
    found = total(ledger, "erin")
    assert found["soft"]["over"] is True
    assert found["summary"] == "You are over your soft limit."


def test_each_quota_scope_has_its_own_forecast(ledger: Ledger) -> None:
    first = NOW - 30 * DAY + dt.timedelta(hours=3)
    for day in range(30):
        record(ledger, first + day * DAY, "frank", 2 * GIB, kind="tree")
        record(ledger, first + day * DAY, "frank", 100 * MIB + day * 10 * MIB, kind="maildir")
    with session_scope(ledger.engine) as session:
        result = forecast(session, ledger.settings(LIMITS), "frank", NOW)
    scopes = {f["scope"]: f for f in result["forecasts"]}
    assert list(scopes) == ["total", "maildir"]
    assert scopes["maildir"]["growth_bytes_per_day"] == 10 * MIB
    assert scopes["total"]["growth_bytes_per_day"] == 10 * MIB
    assert scopes["maildir"]["used_bytes"] == 390 * MIB
    assert scopes["total"]["used_bytes"] == 2 * GIB + 390 * MIB
    # 1 GiB - 390 MiB = 634 MiB at 10 MiB a day: 63.4 days.
    assert scopes["maildir"]["soft"]["reaches_at"] == "2027-02-01T09:36:00Z"
