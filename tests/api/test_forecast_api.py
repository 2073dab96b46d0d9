"""GET /me/forecast and /members/{name}/forecast: shape and who may see it."""

from __future__ import annotations

import datetime as dt

from tests.api.conftest import Api, bearer


def test_me_forecast_and_who_may_see_it(api: Api) -> None:
    api.record("homes", dt.datetime.now(dt.UTC) - dt.timedelta(hours=1), [("alice", 500, 1)])
    api.record("homes2", dt.datetime.now(dt.UTC) - dt.timedelta(hours=1), [("bob", 500, 1)])
    alice = api.token("member", "alice")
    answer = api.client.get("/me/forecast", headers=bearer(alice))
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["member"] == "alice"
    assert body["window_days"] == 30
    (only,) = body["forecasts"]
    assert only["scope"] == "total"
    assert only["trend"] == "unknown"
    assert only["used_bytes"] == 500
    assert only["soft"] == {"limit_bytes": 1000, "over": False, "reaches_at": None}
    assert api.client.get("/members/alice/forecast", headers=bearer(alice)).status_code == 200
    assert api.client.get("/members/bob/forecast", headers=bearer(alice)).status_code == 403
    assert api.client.get("/members/nobody/forecast", headers=bearer(alice)).status_code == 403
    admin = api.token("admin")
    assert api.client.get("/members/bob/forecast", headers=bearer(admin)).status_code == 200
    assert api.client.get("/members/nobody/forecast", headers=bearer(admin)).status_code == 404
    assert api.client.get("/me/forecast").status_code == 401

    paths = api.client.get("/openapi.json").json()["paths"]
    assert {"/me/forecast", "/members/{name}/forecast"} <= set(paths)
