"""Every endpoint built so far against every kind of caller: exactly the expected status.

The target of every call is alice. "other" is bob's member token: whatever it
gets back never names alice or shows her figures; alice's answers never name bob.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from quotad.db import session_scope
from quotad.members.service import MemberService
from tests.api.conftest import NOW, PLAN, Api, bearer, z
from tests.conftest import Ledger

CALLERS = ("self", "other", "portal", "admin", "scanner", "none", "malformed", "revoked")


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str
    expected: dict[str, int]
    body: dict[str, object] | None = None
    # Run before each call, so that a write can succeed once per caller.
    prepare: Callable[[Api], None] | None = field(default=None, compare=False)


def unauthenticated(ok: dict[str, int]) -> dict[str, int]:
    return {"none": 401, "malformed": 401, "revoked": 401, **ok}


def set_override(api: Api) -> None:
    response = api.client.put(
        "/members/alice/quotas/total",
        json={"soft_bytes": 5000, "hard_bytes": 6000, "reason": "setup"},
        headers=bearer(api.token("admin")),
    )
    assert response.status_code == 200, response.text


FORBIDDEN = 403
ENDPOINTS = [
    Endpoint(
        "GET",
        "/me/usage",
        unauthenticated({"self": 200, "other": 200, "portal": 403, "admin": 403, "scanner": 403}),
    ),
    Endpoint(
        "GET",
        "/members/alice/usage",
        unauthenticated({"self": 200, "other": 403, "portal": 200, "admin": 200, "scanner": 403}),
    ),
    Endpoint(
        "GET",
        "/me/usage/history",
        unauthenticated({"self": 200, "other": 200, "portal": 403, "admin": 403, "scanner": 403}),
    ),
    Endpoint(
        "GET",
        "/members/alice/usage/history",
        unauthenticated({"self": 200, "other": 403, "portal": 200, "admin": 200, "scanner": 403}),
    ),
    Endpoint(
        "GET",
        "/members",
        unauthenticated({"self": 403, "other": 403, "portal": 200, "admin": 200, "scanner": 403}),
    ),
    Endpoint(
        "PUT",
        "/members/alice",
        unauthenticated({"self": 403, "other": 403, "portal": 200, "admin": 200, "scanner": 403}),
        body={"email": "alice@example.org"},
    ),
    Endpoint(
        "PUT",
        "/members/alice/quotas/total",
        unauthenticated({"self": 403, "other": 403, "portal": 403, "admin": 200, "scanner": 403}),
        body={"soft_bytes": 3000, "hard_bytes": 4000, "grace_seconds": 60, "reason": "r"},
    ),
    Endpoint(
        "DELETE",
        "/members/alice/quotas/total",
        unauthenticated({"self": 403, "other": 403, "portal": 403, "admin": 204, "scanner": 403}),
        prepare=set_override,
    ),
    Endpoint(
        "GET",
        "/report",
        unauthenticated({"self": 403, "other": 403, "portal": 403, "admin": 200, "scanner": 403}),
    ),
    Endpoint(
        "GET",
        "/audit",
        unauthenticated({"self": 403, "other": 403, "portal": 403, "admin": 200, "scanner": 403}),
    ),
    Endpoint(
        "POST",
        "/scans",
        unauthenticated({"self": 403, "other": 403, "portal": 403, "admin": 403, "scanner": 201}),
        body={
            "scan_id": "5f0c6e1e-8d1b-4c57-9a57-3f1f2b1c9d01",
            "source": "homes",
            "started_at": z(NOW - dt.timedelta(minutes=1)),
            "finished_at": z(NOW),
            "measurements": [
                {"member": "alice", "kind": "tree", "name": "alice", "bytes": 1, "files": 1}
            ],
        },
    ),
    Endpoint("GET", "/healthz", dict.fromkeys(CALLERS, 200)),
]


def credentials(api: Api) -> dict[str, dict[str, str]]:
    revoked = api.token("member", "alice", label="old laptop")
    api.revoke(revoked)
    return {
        "self": bearer(api.token("member", "alice")),
        "other": bearer(api.token("member", "bob")),
        "portal": bearer(api.token("portal", label="portal")),
        "admin": bearer(api.token("admin", label="ops")),
        "scanner": bearer(api.token("scanner", sources=["homes"])),
        "none": {},
        "malformed": {"Authorization": "Token abc"},
        "revoked": bearer(revoked),
    }


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=lambda e: f"{e.method} {e.path}")
def test_matrix(usage_data: Api, endpoint: Endpoint) -> None:
    api = usage_data
    headers = credentials(api)
    got = {}
    for caller in CALLERS:
        if endpoint.prepare is not None:
            endpoint.prepare(api)
        response = api.client.request(
            endpoint.method, endpoint.path, json=endpoint.body, headers=headers[caller]
        )
        got[caller] = response.status_code
        if response.status_code >= 400:
            body = response.json()
            assert set(body) == {"error", "detail"}, body
        if response.status_code == 401:
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
        if caller == "other":
            assert "alice" not in response.text, (endpoint, response.text)
            assert "1600" not in response.text
            assert "1500" not in response.text
        if caller == "self":
            assert "bob" not in response.text, (endpoint, response.text)
            assert "700" not in response.text
    assert got == endpoint.expected


def test_member_asking_for_an_unknown_name_is_forbidden_not_told(usage_data: Api) -> None:
    # 403 whether or not the name exists: a member cannot probe the registry.
    token = bearer(usage_data.token("member", "bob"))
    for name in ("alice", "nobody"):
        response = usage_data.client.get(f"/members/{name}/usage", headers=token)
        assert response.status_code == FORBIDDEN
        assert response.json() == {
            "error": "forbidden",
            "detail": "a member may only see its own usage",
        }


def test_unknown_token_and_empty_bearer(api: Api) -> None:
    for value in ("Bearer nonsense", "Bearer ", "Bearer", "bearer   ", "Basic YTpi"):
        response = api.client.get("/me/usage", headers={"Authorization": value})
        assert response.status_code == 401, value
        assert response.json()["error"] == "unauthorized"


def test_identity_header_from_a_trusted_proxy_only(usage_data: Api) -> None:
    api = usage_data
    trusted = api.client_from("10.0.0.5")
    elsewhere = api.client_from("192.0.2.7")
    alice = {"X-Remote-User": "alice"}

    response = trusted.get("/me/usage", headers=alice)
    assert response.status_code == 200, response.text
    assert response.json()["member"] == "alice"
    assert trusted.get("/members/alice/usage", headers=alice).status_code == 200
    # The header makes a member, never anything more.
    assert trusted.get("/members/bob/usage", headers=alice).status_code == FORBIDDEN
    assert trusted.get("/report", headers=alice).status_code == FORBIDDEN
    assert trusted.get("/members", headers=alice).status_code == FORBIDDEN

    for client, headers in (
        (elsewhere, alice),  # an untrusted peer
        (api.client, alice),  # TestClient's own peer, "testclient", is no address
        (trusted, {"X-Remote-User": "nobody"}),  # no such member
        (trusted, {"X-Remote-User": ""}),
        (trusted, {"X-Remote-User-Other": "alice"}),  # another header
    ):
        response = client.get("/me/usage", headers=headers)
        assert response.status_code == 401, (headers, response.text)
    # A forwarded-for header from an untrusted peer changes nothing.
    response = elsewhere.get("/me/usage", headers={**alice, "X-Forwarded-For": "10.0.0.5"})
    assert response.status_code == 401


def test_bearer_token_wins_over_the_identity_header(usage_data: Api) -> None:
    trusted = usage_data.client_from("10.0.0.5")
    headers = {**bearer(usage_data.token("member", "bob")), "X-Remote-User": "alice"}
    response = trusted.get("/me/usage", headers=headers)
    assert response.status_code == 200
    assert response.json()["member"] == "bob"


def test_identity_header_name_comes_from_settings(ledger: Ledger) -> None:
    settings = ledger.settings(PLAN.replace("[server]", '[server]\nidentity_header = "X-User"'))
    with TestClient(create_app(settings), client=("10.1.2.3", 5)) as client:
        assert client.get("/me/usage", headers={"X-User": "alice"}).status_code == 401
        with session_scope(ledger.engine, write=True) as session:
            MemberService(session, "test").add("alice")
        assert client.get("/me/usage", headers={"X-User": "alice"}).status_code == 200
        assert client.get("/me/usage", headers={"X-Remote-User": "alice"}).status_code == 401


def test_a_member_who_left_is_refused(usage_data: Api) -> None:
    token = bearer(usage_data.token("member", "alice"))
    trusted = usage_data.client_from("10.0.0.5")
    assert usage_data.client.get("/me/usage", headers=token).status_code == 200
    response = usage_data.client.put(
        "/members/alice",
        json={"left_at": "2026-01-01T00:00:00Z"},
        headers=bearer(usage_data.token("admin")),
    )
    assert response.status_code == 200, response.text
    assert usage_data.client.get("/me/usage", headers=token).status_code == 401
    assert trusted.get("/me/usage", headers={"X-Remote-User": "alice"}).status_code == 401
    # Staff still see the former member's usage: records are kept.
    response = usage_data.client.get(
        "/members/alice/usage", headers=bearer(usage_data.token("portal"))
    )
    assert response.status_code == 200
    assert response.json()["total"] == {"bytes": 1600, "files": 4}
