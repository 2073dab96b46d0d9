"""Usage endpoints with exact figures, on both ledgers."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from fastapi.testclient import TestClient

from api.app import create_app
from quotad.db import session_scope
from quotad.ledger.service import LedgerService, ScanInput
from scanners.base import Measurement, ResourceFailure
from tests.api.conftest import NOW, PLAN, Api, bearer, z


def alice_usage() -> dict[str, Any]:
    return {
        "member": "alice",
        "total": {"bytes": 1600, "files": 4},
        "resources": [
            {
                "source": "homes",
                "kind": "tree",
                "name": "alice",
                "bytes": 1500,
                "files": 3,
                "measured_at": z(NOW - dt.timedelta(hours=1)),
                "stale": False,
                "detail": {},
            },
            {
                "source": "old",
                "kind": "tree",
                "name": "alice",
                "bytes": 100,
                "files": 1,
                "measured_at": z(NOW - dt.timedelta(days=2)),
                "stale": True,
                "detail": {},
            },
        ],
        "quotas": [
            {
                "scope": "total",
                "soft_bytes": 1000,
                "hard_bytes": 2000,
                "grace_seconds": 604800,
                "used_bytes": 1600,
                "state": "soft",
                "grace_ends_at": z(NOW - dt.timedelta(hours=1) + dt.timedelta(days=7)),
            }
        ],
    }


def bob_usage() -> dict[str, Any]:
    return {
        "member": "bob",
        "total": {"bytes": 700, "files": 2},
        "resources": [
            {
                "source": "homes",
                "kind": "tree",
                "name": "bob",
                "bytes": 700,
                "files": 2,
                "measured_at": z(NOW - dt.timedelta(hours=1)),
                "stale": False,
                "detail": {},
            }
        ],
        "quotas": [
            {
                "scope": "total",
                "soft_bytes": 1000,
                "hard_bytes": 2000,
                "grace_seconds": 604800,
                "used_bytes": 700,
                "state": "ok",
                "grace_ends_at": None,
            }
        ],
    }


def by_source(usage: dict[str, Any]) -> dict[str, Any]:
    usage = dict(usage)
    usage["resources"] = sorted(usage["resources"], key=lambda r: r["source"])
    return usage


def test_me_usage_exact(usage_data: Api) -> None:
    response = usage_data.client.get(
        "/me/usage", headers=bearer(usage_data.token("member", "alice"))
    )
    assert response.status_code == 200, response.text
    assert by_source(response.json()) == alice_usage()


def test_member_usage_for_staff_and_self(usage_data: Api) -> None:
    for token in (
        usage_data.token("admin"),
        usage_data.token("portal"),
        usage_data.token("member", "bob"),
    ):
        response = usage_data.client.get("/members/bob/usage", headers=bearer(token))
        assert response.status_code == 200, response.text
        assert response.json() == bob_usage()


def test_unknown_member_usage_is_404(usage_data: Api) -> None:
    response = usage_data.client.get(
        "/members/carol/usage", headers=bearer(usage_data.token("admin"))
    )
    assert response.status_code == 404
    assert response.json() == {"error": "not_found", "detail": "no member named 'carol'"}


def test_report_every_member(usage_data: Api) -> None:
    response = usage_data.client.get("/report", headers=bearer(usage_data.token("admin")))
    assert response.status_code == 200, response.text
    assert [by_source(u) for u in response.json()] == [alice_usage(), bob_usage()]


def test_member_without_measurements(api: Api) -> None:
    api.client.put("/members/carol", json={}, headers=bearer(api.token("admin")))
    response = api.client.get("/me/usage", headers=bearer(api.token("member", "carol")))
    assert response.status_code == 200, response.text
    assert response.json() == {
        "member": "carol",
        "total": {"bytes": 0, "files": 0},
        "resources": [],
        "quotas": [
            {
                "scope": "total",
                "soft_bytes": 1000,
                "hard_bytes": 2000,
                "grace_seconds": 604800,
                "used_bytes": 0,
                "state": "ok",
                "grace_ends_at": None,
            }
        ],
    }


def test_healthz(api: Api) -> None:
    response = api.client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_failed_resource_keeps_its_value_and_says_why(usage_data: Api) -> None:
    failed_at = NOW - dt.timedelta(minutes=5)
    scan = ScanInput(
        scan_id=uuid.uuid4(),
        source="homes",
        source_kind="tree",
        started_at=failed_at - dt.timedelta(seconds=30),
        finished_at=failed_at,
        measurements=[Measurement(member="bob", kind="tree", name="bob", bytes=800, files=2)],
        failures=[ResourceFailure(member="alice", kind="tree", name="alice", error="EACCES")],
    )
    with session_scope(usage_data.ledger.engine, write=True) as session:
        LedgerService(session).record(scan)
    response = usage_data.client.get(
        "/me/usage", headers=bearer(usage_data.token("member", "alice"))
    )
    homes = next(r for r in response.json()["resources"] if r["source"] == "homes")
    assert homes == {
        **alice_usage()["resources"][0],
        "error": "EACCES",
        "failed_at": z(failed_at),
    }


def test_stale_follows_enforcement_stale_after(usage_data: Api) -> None:
    settings = usage_data.ledger.settings(PLAN + '[enforcement]\nstale_after = "30m"\n')
    with TestClient(create_app(settings)) as client:
        token = usage_data.token("member", "alice")
        response = client.get("/me/usage", headers=bearer(token))
    assert {r["source"]: r["stale"] for r in response.json()["resources"]} == {
        "homes": True,
        "old": True,
    }
