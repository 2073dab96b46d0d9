"""The member registry over HTTP: list, create, update, audited."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.api.conftest import Api, bearer


@pytest.fixture
def staff(api: Api) -> dict[str, str]:
    return bearer(api.token("portal", label="portal"))


def member_audit(api: Api) -> list[dict[str, Any]]:
    response = api.client.get("/audit", headers=bearer(api.token("admin")))
    assert response.status_code == 200, response.text
    return [e for e in response.json() if e["action"].startswith("member.")]


def test_create_then_update_then_list(api: Api, staff: dict[str, str]) -> None:
    created = api.client.put(
        "/members/alice",
        json={"email": "alice@example.org", "joined_at": "2026-01-01"},
        headers=staff,
    )
    assert created.status_code == 201, created.text
    assert created.json() == {
        "name": "alice",
        "email": "alice@example.org",
        "joined_at": "2026-01-01T00:00:00Z",
        "left_at": None,
    }
    # Only what is sent changes; null clears.
    updated = api.client.put(
        "/members/alice",
        json={"left_at": "2026-11-30T12:00:00+01:00", "email": None},
        headers=staff,
    )
    assert updated.status_code == 200, updated.text
    assert updated.json() == {
        "name": "alice",
        "email": None,
        "joined_at": "2026-01-01T00:00:00Z",
        "left_at": "2026-11-30T11:00:00Z",
    }
    api.client.put("/members/bob", json={}, headers=staff)
    listed = api.client.get("/members", headers=staff)
    assert listed.status_code == 200
    assert listed.json() == [
        updated.json(),
        {"name": "bob", "email": None, "joined_at": None, "left_at": None},
    ]
    # The same PUT again changes nothing and records nothing.
    again = api.client.put("/members/alice", json={"email": None}, headers=staff)
    assert again.status_code == 200
    entries = member_audit(api)
    assert [(e["action"], e["subject"]) for e in entries] == [
        ("member.add", "member:bob"),
        ("member.update", "member:alice"),
        ("member.add", "member:alice"),
    ]
    assert entries[1]["detail"] == {
        "before": {"email": "alice@example.org", "left_at": None},
        "after": {"email": None, "left_at": "2026-11-30T11:00:00Z"},
    }
    assert all(e["actor"].startswith("api:portal:token ") for e in entries)
    assert entries[0]["actor"].endswith("(portal)")


@pytest.mark.parametrize(
    ("path", "body", "fragment"),
    [
        ("/members/Alice", {}, "invalid member name"),
        ("/members/alice", {"email": "not an address"}, "invalid email"),
        ("/members/alice", {"joined_at": "2026-13-01"}, "joined_at"),
        ("/members/alice", {"joined_at": "2026-01-01T00:00:00"}, "zone"),
        ("/members/alice", {"joined_at": 1700000000}, "RFC 3339"),
        ("/members/alice", {"joined_at": "2026-02-01", "left_at": "2026-01-01"}, "leave"),
        ("/members/alice", {"nickname": "al"}, "nickname"),
        ("/members/alice", {"email": "x" * 300 + "@example.org"}, "email"),
    ],
)
def test_invalid_member_input_is_422(
    api: Api, staff: dict[str, str], path: str, body: dict[str, Any], fragment: str
) -> None:
    response = api.client.put(path, json=body, headers=staff)
    assert response.status_code == 422, response.text
    result = response.json()
    assert result["error"] == "invalid_input"
    assert fragment in result["detail"]
    assert api.client.get("/members", headers=staff).json() == []


def test_leaving_before_joining_on_update_is_422(api: Api, staff: dict[str, str]) -> None:
    api.client.put("/members/alice", json={"joined_at": "2026-02-01"}, headers=staff)
    response = api.client.put("/members/alice", json={"left_at": "2026-01-01"}, headers=staff)
    assert response.status_code == 422
    assert response.json() == {
        "error": "invalid_input",
        "detail": "a member cannot leave before joining",
    }


@pytest.mark.parametrize(
    "name", ["_", "a" * 64, "a" * 65, "x.y-z_0", "0a", "-a", "Alice", "al ice", "é"]
)
def test_the_published_name_rule_is_the_one_checked(
    api: Api, staff: dict[str, str], name: str
) -> None:
    # Without the rule in the schema a client (or a fuzzer) cannot tell which
    # names are refused.
    operation = api.client.get("/openapi.json").json()["paths"]["/members/{name}"]["put"]
    (parameter,) = operation["parameters"]
    published = re.search(parameter["schema"]["pattern"], name) is not None
    response = api.client.put(f"/members/{name}", json={}, headers=staff)
    assert response.status_code == (201 if published else 422), response.text
