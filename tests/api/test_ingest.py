"""POST /scans: scans from agents, recorded once, checked before the ledger sees them."""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from quotad.auth.service import TokenService
from quotad.db import session_scope
from tests.api.conftest import NOW, Api, bearer, z
from tests.conftest import Ledger

HOUR = dt.timedelta(hours=1)


def scan(
    source: str = "homes",
    at: dt.datetime = NOW - HOUR,
    measurements: list[dict[str, Any]] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A scan body finished at AT, by default alice 1,000 and bob 500 bytes of trees."""
    if measurements is None:
        measurements = [tree("alice", 1000, 10), tree("bob", 500, 5)]
    return {
        "scan_id": str(uuid.uuid4()),
        "source": source,
        "started_at": z(at - dt.timedelta(seconds=30)),
        "finished_at": z(at),
        "measurements": measurements,
        **extra,
    }


def tree(member: str | None, size: int, files: int = 1, name: str | None = None) -> dict[str, Any]:
    return {"member": member, "kind": "tree", "name": name or member, "bytes": size, "files": files}


@pytest.fixture
def scanner(api: Api) -> dict[str, str]:
    return bearer(api.token("scanner", label="file server"))


def post(api: Api, headers: dict[str, str], body: dict[str, Any]) -> Any:
    return api.client.post("/scans", json=body, headers=headers)


def usage(api: Api, member: str) -> dict[str, Any]:
    response = api.client.get(f"/members/{member}/usage", headers=bearer(api.token("admin")))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def report_total(api: Api, member: str) -> int:
    response = api.client.get("/report", headers=bearer(api.token("admin")))
    assert response.status_code == 200, response.text
    total: int = next(u["total"]["bytes"] for u in response.json() if u["member"] == member)
    return total


def assert_invalid(response: Any, *words: str) -> None:
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["error"] == "invalid_input", body
    assert set(body) == {"error", "detail"}
    for word in words:
        assert word in body["detail"], body


def test_a_scan_is_recorded_and_shows_in_usage(api: Api, scanner: dict[str, str]) -> None:
    body = scan()
    response = post(api, scanner, body)
    assert response.status_code == 201, response.text
    assert response.json() == {
        "scan_id": body["scan_id"],
        "source": "homes",
        "status": "complete",
        "measurements": 2,
        "failures": 0,
        "zeroed": 0,
        "created": True,
    }
    alice = usage(api, "alice")
    assert alice["total"] == {"bytes": 1000, "files": 10}
    [resource] = alice["resources"]
    assert resource["source"] == "homes"
    assert resource["kind"] == "tree"  # the source kind came from the resources
    assert resource["measured_at"] == body["finished_at"]
    assert usage(api, "bob")["total"]["bytes"] == 500


def test_replay_answers_200_with_the_same_body_and_counts_once(
    api: Api, scanner: dict[str, str]
) -> None:
    first = post(api, scanner, scan())
    body = scan(measurements=[tree("alice", 1200, 12)], at=NOW - HOUR / 2)
    body["measurements"].append({**tree("carol", 7), "detail": {"note": "x", "n": 3}})
    created = post(api, scanner, body)
    assert first.status_code == 201
    assert created.status_code == 201, created.text
    assert created.json()["zeroed"] == 1  # bob's tree is gone
    for _ in range(2):
        again = post(api, scanner, body)
        assert again.status_code == 200, again.text
        assert again.json() == {**created.json(), "created": False}
    # The same content in another order is the same scan.
    reordered = {**body, "measurements": list(reversed(body["measurements"]))}
    assert post(api, scanner, reordered).status_code == 200
    assert report_total(api, "alice") == 1200
    assert report_total(api, "carol") == 7
    assert usage(api, "bob")["total"]["bytes"] == 0


def test_conflicting_replay_is_409_and_changes_nothing(api: Api, scanner: dict[str, str]) -> None:
    body = scan()
    assert post(api, scanner, body).status_code == 201
    for change in (
        {"measurements": [tree("alice", 1001, 10), tree("bob", 500, 5)]},
        {"finished_at": z(NOW - HOUR + dt.timedelta(seconds=1))},
        {"failures": [{"member": "dave", "kind": "tree", "name": "dave", "error": "EACCES"}]},
    ):
        response = post(api, scanner, {**body, **change})
        assert response.status_code == 409, response.text
        assert response.json()["error"] == "conflict"
        assert body["scan_id"] in response.json()["detail"]
    assert report_total(api, "alice") == 1000


def test_a_source_known_with_another_kind_is_409(api: Api, scanner: dict[str, str]) -> None:
    assert post(api, scanner, scan()).status_code == 201
    mail = [{"member": "alice", "kind": "maildir", "name": "alice", "bytes": 5, "files": 1}]
    response = post(api, scanner, scan(measurements=mail))
    assert response.status_code == 409, response.text
    assert "'tree'" in response.json()["detail"]
    response = post(api, scanner, scan(measurements=mail, source_kind="maildir"))
    assert response.status_code == 409
    # Saying the kind it has is fine.
    response = post(api, scanner, scan(at=NOW, source_kind="tree"))
    assert response.status_code == 201, response.text


def test_out_of_order_scans_are_recorded_but_never_win(api: Api, scanner: dict[str, str]) -> None:
    newer = scan(measurements=[tree("alice", 300, 3)], at=NOW - HOUR)
    older = scan(measurements=[tree("alice", 900, 9), tree("bob", 50)], at=NOW - 3 * HOUR)
    assert post(api, scanner, newer).status_code == 201
    response = post(api, scanner, older)
    assert response.status_code == 201, response.text
    assert response.json()["created"] is True
    alice = usage(api, "alice")
    assert alice["total"]["bytes"] == 300
    assert alice["resources"][0]["measured_at"] == newer["finished_at"]
    # Bob's tree, seen only by the older scan, counts as what that scan found.
    assert usage(api, "bob")["total"]["bytes"] == 50
    # A late scan missing alice's tree does not zero what the newer one found.
    late = scan(measurements=[tree("bob", 60)], at=NOW - 2 * HOUR)
    assert post(api, scanner, late).json()["zeroed"] == 0
    assert report_total(api, "alice") == 300


def test_times_in_the_future_are_refused(api: Api, scanner: dict[str, str]) -> None:
    soon = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=4)
    later = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=6)
    body = scan(at=later)
    body["started_at"] = z(NOW)
    assert_invalid(post(api, scanner, body), "finished_at", "future")
    body = scan(at=later + HOUR)
    body["started_at"] = z(later)
    assert_invalid(post(api, scanner, body), "started_at", "future")
    # A clock a little ahead is tolerated.
    assert post(api, scanner, scan(at=soon)).status_code == 201


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("finished_at", z(NOW - 2 * HOUR), ("finished_at is before started_at",)),
        ("finished_at", "2026-11-26T03:00:12", ("finished_at", "zone")),  # naive
        ("started_at", "2026-11-26", ("started_at",)),  # a date is no time
        ("started_at", "yesterday", ("started_at",)),
        ("started_at", 1764126012, ("started_at",)),
        ("finished_at", "9999-12-31T23:59:59-05:00", ("finished_at",)),
    ],
)
def test_bad_times_are_422(
    api: Api, scanner: dict[str, str], field: str, value: object, words: tuple[str, ...]
) -> None:
    assert_invalid(post(api, scanner, {**scan(), field: value}), *words)


def test_a_body_of_50_mb_is_413_before_it_is_read(api: Api, scanner: dict[str, str]) -> None:
    prefix = b'{"scan_id": "' + str(uuid.uuid4()).encode() + b'", "source": "homes", "x": "'
    size = 50 * 1024**2
    headers = {**scanner, "Content-Type": "application/json"}
    chunk = b"a" * 1024**2

    def stream() -> Iterator[bytes]:
        yield prefix
        for _ in range(size // len(chunk)):
            yield chunk
        yield b'"}'

    # Without a Content-Length: cut off once past the limit as it streams.
    response = api.client.post("/scans", content=stream(), headers=headers)
    assert response.status_code == 413
    assert response.json() == {
        "error": "too_large",
        "detail": f"the request body exceeds the limit of {32 * 1024**2} bytes",
    }
    # With a Content-Length over the limit: refused before the app runs.
    body = prefix + b"a" * size + b'"}'
    response = api.client.post(
        "/scans", content=body, headers={**headers, "Content-Length": str(len(body))}
    )
    assert response.status_code == 413
    assert response.json()["error"] == "too_large"
    assert usage_or_none(api) is None


def test_a_streamed_body_is_read_no_further_than_the_limit(
    api: Api, scanner: dict[str, str]
) -> None:
    # The app itself, fed 1 MiB at a time: how many chunks did it ask for?
    chunks = 50
    asked = 0
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal asked
        asked += 1
        if asked > chunks:
            return {"type": "http.disconnect"}
        return {"type": "http.request", "body": b"a" * 1024**2, "more_body": asked < chunks}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    headers = [(b"content-type", b"application/json")]
    headers += [(k.lower().encode(), v.encode()) for k, v in scanner.items()]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/scans",
        "raw_path": b"/scans",
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 40000),
        "server": ("testserver", 80),
    }
    asyncio.run(api.app(scope, receive, send))  # type: ignore[arg-type]
    assert sent[0]["type"] == "http.response.start"
    assert sent[0]["status"] == 413
    assert asked <= 33  # 32 MiB and the chunk that went past it


def usage_or_none(api: Api) -> Any:
    response = api.client.get("/members/alice/usage", headers=bearer(api.token("admin")))
    return None if response.status_code == 404 else response.json()


@pytest.mark.parametrize(
    "content",
    [b'{"scan_id": ', b"{'scan_id': 1}", b"", b"null", b"[]", b'"scan"', b"\xff\xfe", b"1e999"],
)
def test_malformed_json_is_422(api: Api, scanner: dict[str, str], content: bytes) -> None:
    headers = {**scanner, "Content-Type": "application/json"}
    assert_invalid(api.client.post("/scans", content=content, headers=headers))


def with_measurement(**change: Any) -> dict[str, Any]:
    body = scan()
    body["measurements"][0] = {**body["measurements"][0], **change}
    return body


WRONG = [
    ("bytes as a string", with_measurement(bytes="10"), "bytes"),
    ("bytes as a float", with_measurement(bytes=10.0), "bytes"),
    ("bytes fractional", with_measurement(bytes=1.5), "bytes"),
    ("bytes as a bool", with_measurement(bytes=True), "bytes"),
    ("files null", with_measurement(files=None), "files"),
    ("bytes over int64", with_measurement(bytes=2**63), "bytes"),
    ("bytes missing", {**scan(), "measurements": [{"kind": "tree", "name": "a", "files": 1}]}, ""),
    ("member a number", with_measurement(member=5), "member"),
    ("detail a float", with_measurement(detail={"ratio": 0.5}), "detail"),
    ("detail a list", with_measurement(detail={"x": [1]}), "detail"),
    ("scan_id not a uuid", {**scan(), "scan_id": "scan-1"}, "scan_id"),
    ("scan_id missing", {k: v for k, v in scan().items() if k != "scan_id"}, "scan_id"),
    ("measurements an object", {**scan(), "measurements": {}}, "measurements"),
    ("source a number", {**scan(), "source": 7}, "source"),
    ("source a path", {**scan(), "source": "../etc"}, "source"),
    ("error empty", {**scan(measurements=[]), "error": ""}, "error"),
    ("unknown field", {**scan(), "host": "fs1"}, "host"),
    ("unknown measurement field", with_measurement(owner="alice"), "owner"),
    ("name empty", with_measurement(name=""), "name"),
    ("name too long", with_measurement(name="a" * 256), "name"),
]


@pytest.mark.parametrize(("case", "body", "word"), WRONG, ids=[w[0] for w in WRONG])
def test_wrong_types_are_422(
    api: Api, scanner: dict[str, str], case: str, body: dict[str, Any], word: str
) -> None:
    assert_invalid(post(api, scanner, body), word)


def test_negative_sizes_are_422(api: Api, scanner: dict[str, str]) -> None:
    for field in ("bytes", "files"):
        response = post(api, scanner, with_measurement(**{field: -1}))
        assert_invalid(response, field, "greater than or equal to 0")
    assert usage_or_none(api) is None


def test_resource_kinds_are_checked(api: Api, scanner: dict[str, str]) -> None:
    body = with_measurement(kind="floppy")
    assert_invalid(post(api, scanner, body), "floppy")
    body = with_measurement(kind="floppy")
    body["source_kind"] = "tree"
    assert_invalid(post(api, scanner, body), "unknown resource kind 'floppy'")
    # Resources of another source kind than the scan's own.
    body = with_measurement(kind="postgres_database")
    assert_invalid(post(api, scanner, body), "one source kind")
    body["source_kind"] = "tree"
    assert_invalid(post(api, scanner, body), "measures tree resources, not postgres_database")
    assert_invalid(post(api, scanner, {**scan(), "source_kind": "nfs"}), "source_kind 'nfs'")


def test_duplicate_resources_are_422(api: Api, scanner: dict[str, str]) -> None:
    body = scan(measurements=[tree("alice", 1), tree("bob", 2, name="alice")])
    assert_invalid(post(api, scanner, body), "appears twice")
    body = scan(measurements=[tree("alice", 1)])
    body["failures"] = [{"member": "alice", "kind": "tree", "name": "alice", "error": "EIO"}]
    assert_invalid(post(api, scanner, body), "appears twice")
    assert usage_or_none(api) is None


def test_a_token_sends_only_its_sources(api: Api) -> None:
    homes = bearer(api.token("scanner", sources=["homes", "web"]))
    response = post(api, homes, scan(source="mail"))
    assert response.status_code == 403, response.text
    assert response.json() == {
        "error": "forbidden",
        "detail": "this token may not send scans of source 'mail'",
    }
    assert post(api, homes, scan(source="homes")).status_code == 201
    assert post(api, homes, scan(source="web", at=NOW)).status_code == 201
    assert report_total(api, "alice") == 2000


def test_a_failed_source_keeps_earlier_values(api: Api, scanner: dict[str, str]) -> None:
    assert post(api, scanner, scan()).status_code == 201
    failed = scan(at=NOW, measurements=[], error="root /srv/homes is not mounted")
    response = post(api, scanner, failed)
    assert response.status_code == 201, response.text
    assert response.json() == {
        "scan_id": failed["scan_id"],
        "source": "homes",
        "status": "failed",
        "measurements": 0,
        "failures": 0,
        "zeroed": 0,
        "created": True,
    }
    assert post(api, scanner, failed).json()["created"] is False
    assert report_total(api, "alice") == 1000
    assert usage(api, "bob")["total"]["bytes"] == 500
    # A failed scan carries nothing else.
    body = scan(at=NOW, error="down")
    assert_invalid(post(api, scanner, body), "a failed scan carries no measurements")


def test_a_failed_scan_of_an_unknown_source_needs_its_kind(
    api: Api, scanner: dict[str, str]
) -> None:
    body = scan(source="mail", measurements=[], error="dovecot is down")
    assert_invalid(post(api, scanner, body), "send source_kind")
    response = post(api, scanner, {**body, "source_kind": "maildir"})
    assert response.status_code == 201, response.text
    assert response.json()["status"] == "failed"
    # Once known, the kind can be left out.
    again = scan(source="mail", measurements=[], error="still down", at=NOW)
    assert post(api, scanner, again).status_code == 201


def test_a_source_configured_here_has_its_kind(ledger: Ledger) -> None:
    root = ledger.base_dir / "srv"
    root.mkdir()
    settings = ledger.settings(
        f'[[sources]]\nname = "mail"\nkind = "maildir"\npath = "{root}/{{member}}/Maildir"\n'
    )
    with session_scope(ledger.engine, write=True) as session:
        _, raw = TokenService(session, "test").create(role="scanner")
    with TestClient(create_app(settings)) as client:
        # Never seen, and nothing to tell its kind by: the configuration tells.
        body = scan(source="mail", measurements=[], error="down")
        response = client.post("/scans", json=body, headers=bearer(raw))
        assert response.status_code == 201, response.text
        tree_scan = scan(source="mail", at=NOW)
        response = client.post("/scans", json=tree_scan, headers=bearer(raw))
        assert response.status_code == 409, response.text
        assert "'maildir'" in response.json()["detail"]
        response = client.post(
            "/scans", json={**tree_scan, "source_kind": "tree"}, headers=bearer(raw)
        )
        assert response.status_code == 409
        mail = [{"member": "alice", "kind": "maildir", "name": "alice", "bytes": 9, "files": 1}]
        response = client.post("/scans", json=scan("mail", NOW, mail), headers=bearer(raw))
        assert response.status_code == 201, response.text


def test_a_partial_scan_keeps_the_failed_resources_values(
    api: Api, scanner: dict[str, str]
) -> None:
    assert post(api, scanner, scan()).status_code == 201
    body = scan(at=NOW, measurements=[tree("alice", 1100, 11)])
    body["failures"] = [{"member": "bob", "kind": "tree", "name": "bob", "error": "EACCES"}]
    response = post(api, scanner, body)
    assert response.status_code == 201, response.text
    assert response.json()["status"] == "partial"
    assert response.json()["failures"] == 1
    assert response.json()["zeroed"] == 0
    bob = usage(api, "bob")
    assert bob["total"]["bytes"] == 500
    assert bob["resources"][0]["error"] == "EACCES"
    assert report_total(api, "alice") == 1100


def test_names_are_kept_as_sent(api: Api, scanner: dict[str, str]) -> None:
    names = ["Ünïcødé/日本語", "caf\\xe9", 'q"uote\\', "tab\there", "emoji 🙂"]
    body = scan(measurements=[tree("alice", 1, name=n) for n in names])
    assert post(api, scanner, body).status_code == 201
    got = sorted(r["name"] for r in usage(api, "alice")["resources"])
    assert got == sorted(names)
    assert post(api, scanner, body).status_code == 200


@pytest.mark.parametrize(
    "raw",
    [
        b'"a\\u0000b"',  # NUL: PostgreSQL keeps none in text
        b'"\\ud800"',  # an unpaired surrogate is no text
        b'"\\udc80"',
    ],
)
def test_unstorable_names_are_422(api: Api, scanner: dict[str, str], raw: bytes) -> None:
    body = scan(measurements=[tree("alice", 1, name="PLACEHOLDER")])
    content = json.dumps(body).encode().replace(b'"PLACEHOLDER"', raw)
    response = api.client.post(
        "/scans", content=content, headers={**scanner, "Content-Type": "application/json"}
    )
    assert_invalid(response)
    assert usage_or_none(api) is None


def test_unknown_members_are_registered_and_bad_names_refused(
    api: Api, scanner: dict[str, str]
) -> None:
    assert_invalid(post(api, scanner, scan(measurements=[tree("Alice!", 1, name="x")])), "member")
    body = scan(measurements=[tree(None, 40, name="shared"), tree("erin", 5)])
    assert post(api, scanner, body).status_code == 201
    assert usage(api, "erin")["total"]["bytes"] == 5


def test_the_same_body_from_two_tokens_is_one_scan(api: Api) -> None:
    body = scan()
    first = post(api, bearer(api.token("scanner")), body)
    second = post(api, bearer(api.token("scanner", sources=["homes"])), copy.deepcopy(body))
    assert (first.status_code, second.status_code) == (201, 200)
    assert report_total(api, "alice") == 1000


def test_the_same_scan_racing_itself_is_a_409_that_says_when_to_try_again(
    api: Api, scanner: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two deliveries of one new scan at the same instant: the slower insert
    # fails on the scan's primary key. Its 409 passes, unlike a content
    # conflict, so it carries Retry-After and an agent sends the scan again.
    from sqlalchemy.exc import IntegrityError  # noqa: PLC0415

    from api.routers import scans as scans_router  # noqa: PLC0415

    def lost_the_race(*_args: Any, **_kwargs: Any) -> Any:
        raise IntegrityError("INSERT INTO scans ...", {}, Exception("duplicate key"))

    body = scan()
    monkeypatch.setattr(scans_router, "ingest", lost_the_race)
    response = post(api, scanner, body)
    assert response.status_code == 409
    assert response.headers["Retry-After"] == "1"
    assert response.json()["error"] == "conflict"
    monkeypatch.undo()
    # Sent again, it is recorded; a conflict in content has no Retry-After.
    assert post(api, scanner, body).status_code == 201
    conflicting = post(api, scanner, {**body, "measurements": [tree("alice", 1)]})
    assert conflicting.status_code == 409
    assert "Retry-After" not in conflicting.headers
