"""Quota overrides over HTTP: validated, audited with the caller and the reason."""

from __future__ import annotations

from typing import Any

import pytest

from tests.api.conftest import Api, bearer


def test_set_then_reset(usage_data: Api) -> None:
    api = usage_data
    admin = bearer(api.token("admin", label="ops"))
    response = api.client.put(
        "/members/alice/quotas/total",
        json={"soft_bytes": 5000, "hard_bytes": 6000, "grace_seconds": 3600, "reason": "archive"},
        headers=admin,
    )
    assert response.status_code == 200, response.text
    assert response.json() == {
        "member": "alice",
        "scope": "total",
        "soft_bytes": 5000,
        "hard_bytes": 6000,
        "grace_seconds": 3600,
    }
    usage = api.client.get("/members/alice/usage", headers=admin).json()
    assert usage["quotas"] == [
        {
            "scope": "total",
            "soft_bytes": 5000,
            "hard_bytes": 6000,
            "grace_seconds": 3600,
            "used_bytes": 1600,
            "state": "ok",
            "grace_ends_at": None,
        }
    ]
    # A kind's own scope; grace left out keeps 7 days.
    response = api.client.put(
        "/members/alice/quotas/tree",
        json={"soft_bytes": 10, "hard_bytes": 10, "reason": "tight"},
        headers=admin,
    )
    assert response.status_code == 200, response.text
    assert response.json()["grace_seconds"] == 604800

    reset = api.client.delete("/members/alice/quotas/total?reason=plan+again", headers=admin)
    assert reset.status_code == 204
    assert reset.content == b""
    assert api.client.delete("/members/alice/quotas/total", headers=admin).status_code == 404
    reset = api.client.delete("/members/alice/quotas/tree", headers=admin)
    assert reset.status_code == 204
    usage = api.client.get("/members/alice/usage", headers=admin).json()
    assert [(q["scope"], q["soft_bytes"], q["state"]) for q in usage["quotas"]] == [
        ("total", 1000, "soft")
    ]

    entries = api.client.get("/audit?limit=4", headers=admin).json()
    assert [(e["action"], e["reason"], e["detail"]["scope"]) for e in entries] == [
        ("quota.reset", "reset to the default plan", "tree"),
        ("quota.reset", "plan again", "total"),
        ("quota.set", "tight", "tree"),
        ("quota.set", "archive", "total"),
    ]
    token_id = entries[0]["actor"].split("token ")[1].split(" ")[0]
    assert {e["actor"] for e in entries} == {f"api:admin:token {token_id} (ops)"}
    assert entries[3]["detail"]["before"] == {
        "soft_bytes": 1000,
        "hard_bytes": 2000,
        "grace_seconds": 604800,
    }
    assert len(api.client.get("/audit?limit=1", headers=admin).json()) == 1


@pytest.mark.parametrize(
    ("path", "body", "fragment"),
    [
        ("total", {"soft_bytes": 10, "hard_bytes": 5, "reason": "r"}, "cannot exceed the hard"),
        ("total", {"soft_bytes": -1, "hard_bytes": 5, "reason": "r"}, "soft_bytes"),
        ("total", {"soft_bytes": "10", "hard_bytes": 50, "reason": "r"}, "soft_bytes"),
        ("total", {"soft_bytes": 1.5, "hard_bytes": 50, "reason": "r"}, "soft_bytes"),
        ("total", {"soft_bytes": 1, "hard_bytes": 2**64, "reason": "r"}, "hard_bytes"),
        ("total", {"soft_bytes": 1, "hard_bytes": 2, "reason": ""}, "reason"),
        ("total", {"soft_bytes": 1, "hard_bytes": 2, "reason": "  "}, "reason is required"),
        ("total", {"soft_bytes": 1, "hard_bytes": 2}, "reason"),
        ("total", {"soft_bytes": 1, "hard_bytes": 2, "grace_seconds": -5, "reason": "r"}, "grace"),
        (
            "total",
            {"soft_bytes": 1, "hard_bytes": 2, "grace_seconds": 2**62, "reason": "r"},
            "grace",
        ),
        ("total", {"soft_bytes": 1, "hard_bytes": 2, "reason": "r", "extra": 1}, "extra"),
        ("nonsense", {"soft_bytes": 1, "hard_bytes": 2, "reason": "r"}, "unknown quota scope"),
        ("total", [], "body"),
    ],
)
def test_invalid_quota_is_422(usage_data: Api, path: str, body: Any, fragment: str) -> None:
    admin = bearer(usage_data.token("admin"))
    response = usage_data.client.put(f"/members/alice/quotas/{path}", json=body, headers=admin)
    assert response.status_code == 422, response.text
    assert response.json()["error"] == "invalid_input"
    assert fragment in response.json()["detail"]
    entries = usage_data.client.get("/audit", headers=admin).json()
    assert not [e for e in entries if e["action"].startswith("quota.")]


def test_quota_for_unknown_member_is_404(api: Api) -> None:
    admin = bearer(api.token("admin"))
    body = {"soft_bytes": 1, "hard_bytes": 2, "reason": "r"}
    response = api.client.put("/members/carol/quotas/total", json=body, headers=admin)
    assert response.status_code == 404
    assert response.json() == {"error": "not_found", "detail": "no member named 'carol'"}
    assert api.client.delete("/members/carol/quotas/total", headers=admin).status_code == 404
    response = api.client.delete("/members/carol/quotas/total?reason=", headers=admin)
    assert response.status_code == 422


def test_the_report_shows_each_members_own_limits(usage_data: Api) -> None:
    # The report reads every member's overrides at once; each member must
    # still get exactly its own, as its own usage page shows them.
    admin = bearer(usage_data.token("admin"))
    body = {"soft_bytes": 5000, "hard_bytes": 6000, "reason": "archive"}
    assert usage_data.client.put("/members/alice/quotas/total", json=body, headers=admin).is_success
    body = {"soft_bytes": 100, "hard_bytes": 200, "reason": "tight"}
    assert usage_data.client.put("/members/bob/quotas/tree", json=body, headers=admin).is_success
    assert usage_data.client.delete("/members/bob/quotas/tree", headers=admin).is_success
    body = {"soft_bytes": 300, "hard_bytes": 400, "reason": "tighter"}
    assert usage_data.client.put("/members/bob/quotas/tree", json=body, headers=admin).is_success
    report = usage_data.client.get("/report", headers=admin).json()
    limits = {
        u["member"]: [
            (q["scope"], q["soft_bytes"], q["hard_bytes"], q["state"]) for q in u["quotas"]
        ]
        for u in report
    }
    assert limits == {
        "alice": [("total", 5000, 6000, "ok")],
        "bob": [("total", 1000, 2000, "ok"), ("tree", 300, 400, "hard")],
    }
    for usage in report:
        own = usage_data.client.get(f"/members/{usage['member']}/usage", headers=admin).json()
        assert own == usage
