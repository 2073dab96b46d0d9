"""Statements, finalizing and adjustments over HTTP, figures by hand, on both ledgers.

alice keeps 3 GiB all the time, bob half a GiB; the plan gives 1 GiB free and
charges 0.10 USD per GiB-month. So alice is billed 2 GiB-months, 0.20, in
every month, and bob nothing.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from quotad.billing.arithmetic import Period
from tests.api.conftest import NOW, PLAN, Api, bearer, z
from tests.conftest import Ledger

GIB = 2**30
CURRENT = Period.containing(NOW)
LAST = CURRENT.previous()
BILLING = """
[billing]
currency = "USD"
free = "1GiB"
price_per_gib_month = "0.10"
"""
HEADER = (
    "member,period,status,member_from,member_until,average_bytes,free_bytes,"
    "billable_gib_months,usage_amount,adjustments,amount,currency"
)


@pytest.fixture
def api(ledger: Ledger) -> Iterator[Api]:
    """The conftest's app with a price list."""
    settings = ledger.settings(PLAN + BILLING)
    app = create_app(settings)
    with TestClient(app) as client:
        yield Api(ledger, settings, app, client)


@pytest.fixture
def billing(api: Api) -> Api:
    """alice 3 GiB and bob 0.5 GiB, measured the day before last month began."""
    api.record(
        "homes", LAST.start - dt.timedelta(days=1), [("alice", 3 * GIB, 1), ("bob", GIB // 2, 1)]
    )
    return api


def get(api: Api, token: str, path: str, **params: str) -> Any:
    return api.client.get(path, params=params, headers=bearer(token))


def get_if(api: Api, token: str, path: str, tags: str, **params: str) -> Any:
    return api.client.get(path, params=params, headers={**bearer(token), "If-None-Match": tags})


def tag_of(content: bytes) -> str:
    return '"' + hashlib.sha256(content).hexdigest()[:32] + '"'


def scan_body(at: dt.datetime, alice: int) -> dict[str, Any]:
    return {
        "scan_id": str(uuid.uuid4()),
        "source": "homes",
        "source_kind": "tree",
        "started_at": z(at - dt.timedelta(seconds=30)),
        "finished_at": z(at),
        "measurements": [
            {"member": "alice", "kind": "tree", "name": "alice", "bytes": alice, "files": 1},
            {"member": "bob", "kind": "tree", "name": "bob", "bytes": GIB // 2, "files": 1},
        ],
    }


def alice_draft(period: Period) -> dict[str, Any]:
    """alice's statement for PERIOD as computed by hand."""
    return {
        "member": "alice",
        "period": str(period),
        "status": "draft",
        "starts_at": z(period.start),
        "ends_at": z(period.end),
        "member_from": z(period.start),
        "member_until": z(period.end),
        "average_bytes": 3 * GIB,
        "free_bytes": GIB,
        "billable_gib_months": "2",
        "usage_amount": "0.20",
        "adjustments": [],
        "amount": "0.20",
        "currency": "USD",
        "lines": [{"kind": "tree", "average_bytes": 3 * GIB}],
        "charges": [
            {
                "from": z(period.start),
                "until": z(period.end),
                "kind": None,
                "average_bytes": 3 * GIB,
                "free_bytes": GIB,
                "billable_gib_months": "2",
                "price_per_gib_month": "0.10",
                "amount": "0.2",
            }
        ],
        "finalized_at": None,
    }


def test_one_statement_by_hand(billing: Api) -> None:
    for role in ("admin", "portal"):
        response = get(billing, billing.token(role), f"/billing/statements/alice/{LAST}")
        assert response.status_code == 200, response.text
        assert response.json() == alice_draft(LAST)
        assert response.headers["content-type"] == "application/json"
        # The tag is the hash of exactly the bytes sent.
        assert response.headers["etag"] == tag_of(response.content)
        assert response.headers["cache-control"] == "private, no-cache"
    bob = get(billing, billing.token("admin"), f"/billing/statements/bob/{LAST}").json()
    assert (bob["average_bytes"], bob["free_bytes"]) == (GIB // 2, GIB)
    assert (bob["billable_gib_months"], bob["amount"]) == ("0", "0.00")


def test_list_as_json_and_csv(billing: Api) -> None:
    token = billing.token("portal")
    response = get(billing, token, "/billing/statements", period=str(LAST))
    assert response.status_code == 200, response.text
    listed = response.json()
    assert [s["member"] for s in listed] == ["alice", "bob"]
    assert listed[0] == alice_draft(LAST)
    assert response.headers["etag"] == tag_of(response.content)

    response = get(billing, token, "/billing/statements", period=str(LAST), format="csv")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "text/csv; charset=utf-8"
    assert response.headers["content-disposition"] == (
        f'attachment; filename="quotad-statements-{LAST}.csv"'
    )
    assert response.headers["etag"] == tag_of(response.content)
    start, end = z(LAST.start), z(LAST.end)
    assert response.text == (
        f"{HEADER}\r\n"
        f"alice,{LAST},draft,{start},{end},{3 * GIB},{GIB},2,0.20,0.00,0.20,USD\r\n"
        f"bob,{LAST},draft,{start},{end},{GIB // 2},{GIB},0,0.00,0.00,0.00,USD\r\n"
    )


def test_who_may_see_and_change_what(billing: Api) -> None:
    alice = billing.token("member", "alice")
    bob = billing.token("member", "bob")
    portal = billing.token("portal")
    scanner = billing.token("scanner")
    for token in (alice, scanner):
        assert get(billing, token, "/billing/statements", period=str(LAST)).status_code == 403
        assert get(billing, token, f"/billing/statements/bob/{LAST}").status_code == 403
        assert get(billing, token, "/billing/adjustments").status_code == 403
    assert (
        billing.client.get("/billing/statements", params={"period": str(LAST)}).status_code == 401
    )
    for token in (portal, alice):
        response = billing.client.post(f"/billing/periods/{LAST}/finalize", headers=bearer(token))
        assert response.status_code == 403
        assert response.json()["error"] == "forbidden"
        response = billing.client.post(
            "/billing/adjustments",
            json={"member": "alice", "amount": "-1.00", "reason": "goodwill"},
            headers=bearer(token),
        )
        assert response.status_code == 403
    # Staff use the member endpoints' counterparts, not /me.
    assert get(billing, portal, "/me/charges").status_code == 403
    # A member sees its own statement and nobody else's.
    mine = get(billing, bob, "/me/charges", period=str(LAST))
    assert mine.status_code == 200, mine.text
    assert mine.json()["member"] == "bob"
    assert mine.json()["average_bytes"] == GIB // 2


def test_my_charges_default_to_the_current_month(billing: Api) -> None:
    token = billing.token("member", "alice")
    response = get(billing, token, "/me/charges")
    assert response.status_code == 200, response.text
    # The open month's draft counts today's usage until the month ends.
    assert response.json() == alice_draft(CURRENT)
    assert response.headers["etag"] == tag_of(response.content)
    assert get(billing, token, "/me/charges", period=str(LAST)).json() == alice_draft(LAST)


def test_etags_answer_304_until_a_scan_changes_the_draft(billing: Api) -> None:
    admin = billing.token("admin")
    alice = billing.token("member", "alice")
    reads: list[tuple[str, str, dict[str, str]]] = [
        (alice, "/me/charges", {}),
        (admin, f"/billing/statements/alice/{CURRENT}", {}),
        (admin, "/billing/statements", {"period": str(CURRENT)}),
        (admin, "/billing/statements", {"period": str(CURRENT), "format": "csv"}),
    ]
    tags = []
    for token, path, params in reads:
        first = get(billing, token, path, **params)
        tag = first.headers["etag"]
        tags.append(tag)
        for held in (tag, f"W/{tag}", f'"stale", {tag}', "*"):
            again = get_if(billing, token, path, held, **params)
            assert again.status_code == 304, (path, held)
            assert again.content == b""
            assert again.headers["etag"] == tag
            assert again.headers["cache-control"] == "private, no-cache"
        assert get_if(billing, token, path, '"stale"', **params).content == first.content
    # The same statement has one tag wherever it is read; a list and its CSV have their own.
    assert tags[0] == tags[1]
    assert len(set(tags[1:])) == len(tags[1:])

    # A scan lands in the open month: alice at 4 GiB from now on.
    billing.record("homes", NOW - dt.timedelta(seconds=1), [("alice", 4 * GIB, 1)])
    for (token, path, params), old in zip(reads, tags, strict=True):
        response = get_if(billing, token, path, old, **params)
        assert response.status_code == 200, path
        assert response.headers["etag"] not in (old, "")
        assert response.headers["etag"] == tag_of(response.content)
    assert get(billing, alice, "/me/charges").json()["average_bytes"] > 3 * GIB


def test_finalize_once_then_the_same_answer(billing: Api) -> None:
    admin = billing.token("admin", label="ops")
    before = get(billing, admin, f"/billing/statements/alice/{LAST}")
    response = billing.client.post(f"/billing/periods/{LAST}/finalize", headers=bearer(admin))
    assert response.status_code == 201, response.text
    result = response.json()
    assert result["period"] == str(LAST)
    assert result["status"] == "final"
    assert result["statements"] == 2
    assert "ops" in result["finalized_by"]
    again = billing.client.post(f"/billing/periods/{LAST}/finalize", headers=bearer(admin))
    assert again.status_code == 200
    assert again.json() == result

    final = get(billing, admin, f"/billing/statements/alice/{LAST}")
    assert final.json() == {
        **alice_draft(LAST),
        "status": "final",
        "finalized_at": result["finalized_at"],
    }
    assert final.headers["etag"] != before.headers["etag"]
    # A frozen statement's bytes, and so its tag, never change.
    billing.record("homes", NOW - dt.timedelta(seconds=1), [("alice", 9 * GIB, 1)])
    later = get_if(billing, admin, f"/billing/statements/alice/{LAST}", final.headers["etag"])
    assert later.status_code == 304
    listed = get(billing, admin, "/billing/statements", period=str(LAST)).json()
    assert [s["status"] for s in listed] == ["final", "final"]

    response = billing.client.post(f"/billing/periods/{CURRENT}/finalize", headers=bearer(admin))
    assert response.status_code == 409
    assert response.json()["error"] == "conflict"
    assert "has not ended" in response.json()["detail"]


def test_no_new_scan_lands_in_a_finalized_period(billing: Api) -> None:
    admin = billing.token("admin")
    scanner = bearer(billing.token("scanner"))
    recorded = scan_body(LAST.start + dt.timedelta(days=3), 3 * GIB)
    assert billing.client.post("/scans", json=recorded, headers=scanner).status_code == 201
    finalize = billing.client.post(f"/billing/periods/{LAST}/finalize", headers=bearer(admin))
    assert finalize.status_code == 201

    late = scan_body(LAST.start + dt.timedelta(days=5), 5 * GIB)
    response = billing.client.post("/scans", json=late, headers=scanner)
    assert response.status_code == 409
    assert "finalized" in response.json()["detail"]
    # An agent resending a scan that was recorded before is told it is recorded.
    replay = billing.client.post("/scans", json=recorded, headers=scanner)
    assert replay.status_code == 200, replay.text
    assert replay.json()["created"] is False
    # The open month still takes scans.
    fresh = scan_body(NOW - dt.timedelta(seconds=1), 3 * GIB)
    assert billing.client.post("/scans", json=fresh, headers=scanner).status_code == 201
    statement = get(billing, admin, f"/billing/statements/alice/{LAST}").json()
    assert statement["average_bytes"] == 3 * GIB


def adjust(api: Api, token: str, body: Any) -> Any:
    return api.client.post("/billing/adjustments", json=body, headers=bearer(token))


def test_adjustments_show_on_the_next_open_period(billing: Api) -> None:
    admin = billing.token("admin")
    portal = billing.token("portal")
    alice = billing.token("member", "alice")
    finalize = billing.client.post(f"/billing/periods/{LAST}/finalize", headers=bearer(admin))
    assert finalize.status_code == 201
    response = adjust(
        billing,
        admin,
        {"member": "alice", "amount": "-0.05", "reason": "outage credit", "corrects": str(LAST)},
    )
    assert response.status_code == 201, response.text
    made = response.json()
    assert {
        k: made[k] for k in ("member", "amount", "currency", "reason", "corrects", "period")
    } == {
        "member": "alice",
        "amount": "-0.05",
        "currency": "USD",
        "reason": "outage credit",
        "corrects": str(LAST),
        # LAST is final: the credit shows on the first open month after it.
        "period": str(CURRENT),
    }
    assert get(billing, portal, "/billing/adjustments", member="alice").json() == [made]
    assert get(billing, portal, "/billing/adjustments", period=str(LAST)).json() == []
    assert get(billing, portal, "/billing/adjustments", period=str(CURRENT)).json() == [made]

    mine = get(billing, alice, "/me/charges").json()
    assert (mine["usage_amount"], mine["amount"]) == ("0.20", "0.15")
    assert [(a["id"], a["amount"], a["reason"]) for a in mine["adjustments"]] == [
        (made["id"], "-0.05", "outage credit")
    ]
    # The final statement it corrects is as it was.
    assert get(billing, admin, f"/billing/statements/alice/{LAST}").json()["amount"] == "0.20"
    rows = list(
        csv.DictReader(
            io.StringIO(
                get(billing, admin, "/billing/statements", period=str(CURRENT), format="csv").text
            )
        )
    )
    assert [(r["member"], r["usage_amount"], r["adjustments"], r["amount"]) for r in rows] == [
        ("alice", "0.20", "-0.05", "0.15"),
        ("bob", "0.00", "0.00", "0.00"),
    ]


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"amount": "0"}, "changes nothing"),
        ({"amount": "0.001"}, "more decimals"),
        ({"amount": 4.5}, "amount"),
        ({"amount": 4}, "amount"),
        ({"amount": "4,50"}, "amount"),
        ({"reason": None}, "reason"),
        ({"reason": "   "}, "reason"),
        ({"corrects": "2026-13"}, "no month 13"),
        ({"corrects": "last month"}, "corrects"),
    ],
)
def test_invalid_adjustments_are_422(billing: Api, body: dict[str, Any], words: str) -> None:
    request = {"member": "alice", "amount": "1.00", "reason": "goodwill", **body}
    request = {k: v for k, v in request.items() if v is not None}
    response = adjust(billing, billing.token("admin"), request)
    assert response.status_code == 422, response.text
    assert response.json()["error"] == "invalid_input"
    assert words in response.json()["detail"]
    assert get(billing, billing.token("admin"), "/billing/adjustments").json() == []


def test_bad_periods_and_unknown_members(billing: Api) -> None:
    admin = billing.token("admin")
    alice = billing.token("member", "alice")
    for bad in ("2026-13", "26-10", "2026-1", "october", str(CURRENT.next())):
        responses = [
            get(billing, admin, "/billing/statements", period=bad),
            get(billing, admin, f"/billing/statements/alice/{bad}"),
            get(billing, alice, "/me/charges", period=bad),
        ]
        if bad != str(CURRENT.next()):
            # A month to come has no statement yet, but may be asked for adjustments.
            responses.append(get(billing, admin, "/billing/adjustments", period=bad))
        for response in responses:
            assert response.status_code == 422, (bad, response.text)
            assert response.json()["error"] == "invalid_input"
    response = billing.client.post("/billing/periods/2026-00/finalize", headers=bearer(admin))
    assert response.status_code == 422
    assert (
        get(billing, admin, "/billing/statements", format="xml", period=str(LAST)).status_code
        == 422
    )

    response = get(billing, admin, f"/billing/statements/carol/{LAST}")
    assert response.status_code == 404
    assert "carol" in response.json()["detail"]
    assert get(billing, admin, "/billing/adjustments", member="carol").status_code == 404
    response = adjust(billing, admin, {"member": "carol", "amount": "1.00", "reason": "x"})
    assert response.status_code == 404
