"""GET /me/usage/history and /members/{name}/usage/history: exact points, on both ledgers."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from quotad.quotas.history import MAX_POINTS
from tests.api.conftest import NOW, Api, bearer, z

T0 = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
H = dt.timedelta(hours=1)
D = dt.timedelta(days=1)


@pytest.fixture
def history(api: Api) -> Api:
    """Two resources of alice's, one carried in from before T0, one zeroed at T0+2h."""
    api.record("homes", T0 - 3 * H, [("alice", 100, 1), ("bob", 50, 1)])
    api.record("projects", T0 + H / 2, [("alice", 1000, 1)])
    api.record("homes", T0 + H + H / 2, [("alice", 300, 1), ("bob", 50, 1)])
    # A complete scan that no longer finds alice: her project counts 0 from then.
    api.record("projects", T0 + 2 * H, [("bob", 9, 1)])
    # A sample exactly at a boundary counts at that boundary.
    api.record("homes", T0 + 3 * H, [("alice", 400, 1), ("bob", 50, 1)])
    return api


def get(api: Api, token: str, path: str = "/me/usage/history", **params: str) -> Any:
    return api.client.get(path, params=params, headers=bearer(token))


def points(*pairs: tuple[dt.datetime, int]) -> list[dict[str, Any]]:
    return [{"at": z(at), "bytes": b} for at, b in pairs]


def test_hour_steps(history: Api) -> None:
    token = history.token("member", "alice")
    response = get(history, token, start=z(T0), end=z(T0 + 4 * H), step="hour")
    assert response.status_code == 200, response.text
    assert response.json() == {
        "member": "alice",
        "points": points(
            (T0, 100),
            (T0 + H, 1100),
            (T0 + 2 * H, 300),
            (T0 + 3 * H, 400),
            (T0 + 4 * H, 400),
        ),
    }


def test_day_steps_count_zero_before_the_first_sample(history: Api) -> None:
    token = history.token("member", "alice")
    response = get(history, token, start=z(T0 - D), end=z(T0 + D), step="day")
    assert response.status_code == 200, response.text
    assert response.json()["points"] == points((T0 - D, 0), (T0, 100), (T0 + D, 400))


def test_another_members_history_is_its_own(history: Api) -> None:
    token = history.token("member", "bob")
    response = get(history, token, start=z(T0), end=z(T0 + 3 * H), step="hour")
    assert response.json() == {
        "member": "bob",
        "points": points((T0, 50), (T0 + H, 50), (T0 + 2 * H, 59), (T0 + 3 * H, 59)),
    }


def test_unaligned_range_and_zone_offsets(history: Api) -> None:
    token = history.token("member", "alice")
    response = get(
        history,
        token,
        start="2026-03-01T01:10:00+01:00",  # T0 + 10 min
        end=z(T0 + 2 * H + H / 2),
        step="hour",
    )
    assert response.json()["points"] == points((T0 + H, 1100), (T0 + 2 * H, 300))
    # A range inside one step holds no boundary: no points.
    response = get(history, token, start=z(T0 + H / 4), end=z(T0 + H / 2), step="hour")
    assert response.status_code == 200
    assert response.json()["points"] == []


def test_defaults_are_thirty_days_up_to_now(history: Api) -> None:
    token = history.token("member", "alice")
    response = get(history, token)
    assert response.status_code == 200, response.text
    got = response.json()["points"]
    assert len(got) in (30, 31)
    midnight = NOW.replace(hour=0, minute=0, second=0)
    assert got[-1] == {"at": z(midnight), "bytes": 400}
    response = get(history, token, step="hour")
    assert len(response.json()["points"]) in (48, 49)


def test_staff_read_a_members_history(history: Api) -> None:
    for role in ("admin", "portal"):
        token = history.token(role, label=role)
        path = "/members/alice/usage/history"
        response = get(history, token, path, start=z(T0), end=z(T0 + H), step="hour")
        assert response.json() == {"member": "alice", "points": points((T0, 100), (T0 + H, 1100))}
    response = get(history, token, "/members/carol/usage/history")
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"


def test_the_largest_range_is_served_and_one_more_point_is_refused(history: Api) -> None:
    token = history.token("member", "alice")
    end = T0 + (MAX_POINTS - 1) * H
    response = get(history, token, start=z(T0), end=z(end), step="hour")
    assert response.status_code == 200
    assert len(response.json()["points"]) == MAX_POINTS
    response = get(history, token, start=z(T0), end=z(end + H), step="hour")
    assert response.status_code == 422
    assert response.json()["error"] == "invalid_input"
    assert "10000" in response.json()["detail"]


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        # The default start, a span before END, would be before the calendar's first day.
        ({"end": "0001-01-01T01:15:23Z"}, [{"at": "0001-01-01T00:00:00Z", "bytes": 0}]),
        (
            {"end": "0001-01-02T00:00:00Z", "step": "hour"},
            [{"at": f"0001-01-01T{h:02}:00:00Z", "bytes": 0} for h in range(24)]
            + [{"at": "0001-01-02T00:00:00Z", "bytes": 0}],
        ),
        # No whole hour or day follows START before the calendar ends.
        ({"start": "9999-12-31T23:30:00Z", "end": "9999-12-31T23:59:59Z", "step": "hour"}, []),
        ({"start": "9999-12-31T05:00:00Z", "end": "9999-12-31T23:59:59Z"}, []),
    ],
)
def test_the_ends_of_the_calendar(
    history: Api, params: dict[str, str], expected: list[dict[str, Any]]
) -> None:
    response = get(history, history.token("member", "alice"), **params)
    assert response.status_code == 200, response.text
    assert response.json() == {"member": "alice", "points": expected}


@pytest.mark.parametrize(
    "params",
    [
        {"step": "week"},
        {"step": ""},
        {"start": "yesterday"},
        {"start": "2026-03-01T00:00:00"},  # no zone
        {"end": "2026-02-30T00:00:00Z"},
        {"start": z(T0), "end": z(T0)},
        {"start": z(T0 + H), "end": z(T0)},
        {"start": "9999-12-31T23:00:00-05:00"},
    ],
)
def test_bad_parameters_are_422(history: Api, params: dict[str, str]) -> None:
    response = get(history, history.token("member", "alice"), **params)
    assert response.status_code == 422, response.text
    body = response.json()
    assert set(body) == {"error", "detail"}
    assert body["error"] == "invalid_input"


def test_carry_in_is_the_latest_sample_before_start(history: Api) -> None:
    token = history.token("member", "alice")
    # Both homes samples before T0+2h, the newer wins; the project was zeroed at T0+2h.
    response = get(history, token, start=z(T0 + 2 * H), end=z(T0 + 3 * H), step="hour")
    assert response.json()["points"] == points((T0 + 2 * H, 300), (T0 + 3 * H, 400))
    response = get(history, token, start=z(T0 + 3 * H), end=z(T0 + 5 * H), step="hour")
    assert response.json()["points"] == points(
        (T0 + 3 * H, 400), (T0 + 4 * H, 400), (T0 + 5 * H, 400)
    )
