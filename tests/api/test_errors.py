"""Every error in the one format; nothing a client sends makes a 500."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from quotad import migrate
from quotad.config import parse_settings
from tests.api.conftest import Api, bearer


def test_unknown_path_and_method(api: Api) -> None:
    response = api.client.get("/nowhere")
    assert response.status_code == 404
    assert response.json() == {"error": "not_found", "detail": "no such endpoint; see /docs"}
    response = api.client.post("/members", headers=bearer(api.token("admin")))
    assert response.status_code == 405
    assert response.json()["error"] == "method_not_allowed"


def test_malformed_json_is_422(api: Api) -> None:
    response = api.client.put(
        "/members/alice",
        content=b'{"email": ',
        headers={**bearer(api.token("admin")), "Content-Type": "application/json"},
    )
    assert response.status_code == 422
    assert response.json()["error"] == "invalid_input"
    assert "JSON" in response.json()["detail"]


@pytest.mark.parametrize(
    "body", [b'{"email": "\xff"}', b"[" * 100_000 + b"]" * 100_000], ids=["not UTF-8", "too deep"]
)
def test_undecodable_body_is_422(api: Api, body: bytes) -> None:
    # FastAPI answers such a body with a 400 of its own, which no endpoint documents.
    response = api.client.put(
        "/members/alice",
        content=body,
        headers={**bearer(api.token("admin")), "Content-Type": "application/json"},
    )
    assert response.status_code == 422
    assert response.json() == {
        "error": "invalid_input",
        "detail": "the request body cannot be read as JSON in UTF-8",
    }


def test_bad_query_is_422(api: Api) -> None:
    admin = bearer(api.token("admin"))
    for query in ("limit=0", "limit=1001", "limit=ten"):
        response = api.client.get(f"/audit?{query}", headers=admin)
        assert response.status_code == 422, query
        assert response.json()["error"] == "invalid_input"
        assert response.json()["detail"].startswith("limit (query): ")


@pytest.fixture
def small_body(api: Api) -> Iterator[TestClient]:
    settings = api.ledger.settings('[server]\nmax_body = "100"')
    with TestClient(create_app(settings)) as client:
        yield client


def test_body_over_max_body_is_413(api: Api, small_body: TestClient) -> None:
    admin = bearer(api.token("admin"))
    body = b'{"email": "' + b"a" * 200 + b'@example.org"}'
    response = small_body.put(
        "/members/alice", content=body, headers={**admin, "Content-Type": "application/json"}
    )
    assert response.status_code == 413
    assert response.json() == {
        "error": "too_large",
        "detail": "the request body exceeds the limit of 100 bytes",
    }

    # Without a Content-Length: counted as it streams.
    def chunks() -> Iterator[bytes]:
        yield body[:60]
        yield body[60:]

    response = small_body.put(
        "/members/alice", content=chunks(), headers={**admin, "Content-Type": "application/json"}
    )
    assert response.status_code == 413
    assert response.json()["error"] == "too_large"
    # Nothing was written, and a body within the limit still works.
    assert small_body.get("/members", headers=admin).json() == []
    response = small_body.put("/members/alice", json={}, headers=admin)
    assert response.status_code == 201


def test_every_body_can_be_too_large_and_says_so(api: Api, small_body: TestClient) -> None:
    # Whatever the endpoint, the limit answers first; the schema must say so.
    admin = bearer(api.token("admin"))
    operations = [
        (method.upper(), path, operation)
        for path, item in small_body.get("/openapi.json").json()["paths"].items()
        for method, operation in item.items()
        if "requestBody" in operation
    ]
    assert {f"{m} {p}" for m, p, _ in operations} == {
        "PUT /members/{name}",
        "PUT /members/{name}/quotas/{scope}",
        "POST /scans",
        "POST /billing/adjustments",
    }
    for method, path, operation in operations:
        assert "413" in operation["responses"], path
        url = path.format(name="alice", scope="total")
        response = small_body.request(method, url, json={"padding": "x" * 100}, headers=admin)
        assert response.status_code == 413, path
        assert response.json()["error"] == "too_large"


def test_unmigrated_ledger_is_503_until_upgraded(tmp_path: Path) -> None:
    settings = parse_settings(
        {"database_url": f"sqlite:///{tmp_path / 'new.db'}"}, file_label="<t>", base_dir=tmp_path
    )
    app = create_app(settings)
    with TestClient(app) as client:
        for path, item in client.get("/openapi.json").json()["paths"].items():
            for method, operation in item.items():
                assert "503" in operation["responses"], f"{method} {path}"
        for path in ("/healthz", "/me/usage", "/members"):
            response = client.get(path, headers=bearer("whatever"))
            assert response.status_code == 503, path
            assert response.json()["error"] == "ledger_not_ready"
            assert "quotad db upgrade" in response.json()["detail"]
        migrate.upgrade_engine(app.state.quotad.engine)
        assert client.get("/healthz").json() == {"status": "ok"}
        assert client.get("/me/usage", headers=bearer("whatever")).status_code == 401


def test_unexpected_error_is_an_opaque_500(api: Api, caplog: pytest.LogCaptureFixture) -> None:
    def explode() -> None:
        raise RuntimeError("secret internals: password=hunter2")

    api.app.add_api_route("/explode", explode)
    with TestClient(api.app, raise_server_exceptions=False) as client:
        response = client.get("/explode")
    assert response.status_code == 500
    assert response.json() == {
        "error": "internal_error",
        "detail": "an internal error occurred; it has been logged",
    }
    assert "hunter2" in caplog.text


def test_openapi_documents_the_endpoints(api: Api) -> None:
    assert api.client.get("/docs").status_code == 200
    schema = api.client.get("/openapi.json").json()
    assert set(schema["paths"]) == {
        "/healthz",
        "/metrics",
        "/me/usage",
        "/me/usage/history",
        "/me/forecast",
        "/members",
        "/members/{name}",
        "/members/{name}/usage",
        "/members/{name}/usage/history",
        "/members/{name}/forecast",
        "/members/{name}/quotas/{scope}",
        "/report",
        "/audit",
        "/scans",
        "/me/charges",
        "/billing/statements",
        "/billing/statements/{member}/{period}",
        "/billing/periods/{period}/finalize",
        "/billing/adjustments",
    }
    usage = schema["components"]["schemas"]["Usage"]
    assert set(usage["properties"]) == {"member", "total", "resources", "quotas"}


ODD_INPUTS = [
    # PostgreSQL stores no NUL in text; SQLite does. Either way, never a 500.
    ("GET", "/members/a%00b/usage", None, {404, 422}),
    ("PUT", "/members/a%00b", b"{}", {422}),
    ("PUT", "/members/alice", b'{"email": "a\\u0000@example.org"}', {422}),
    (
        "PUT",
        "/members/alice/quotas/total",
        b'{"soft_bytes": 1, "hard_bytes": 2, "reason": "a\\u0000"}',
        {200, 422},
    ),
    ("GET", "/audit?subject=a%00b", None, {200, 422}),
    ("PUT", "/members/alice", b'{"email": "\\ud800@example.org"}', {422}),
    ("GET", "/members/%ED%A0%80/usage", None, {404}),
    ("GET", "/audit?subject=%ff", None, {200}),
    # Times past the ends of the calendar once turned into UTC.
    ("PUT", "/members/alice", b'{"joined_at": "9999-12-31T23:59:59-05:00"}', {422}),
    ("PUT", "/members/alice", b'{"left_at": "0001-01-01T00:00:00+05:00"}', {422}),
    ("PUT", "/members/alice", b"null", {422}),
    ("PUT", "/members/alice", b"1e999", {422}),
    (
        "PUT",
        "/members/alice/quotas/total",
        b'{"soft_bytes": 1e400, "hard_bytes": 2, "reason": "x"}',
        {422},
    ),
    ("GET", "/members/" + "a" * 5000 + "/usage", None, {404}),
]


@pytest.mark.parametrize(
    ("method", "path", "body", "expected"),
    ODD_INPUTS,
    ids=[f"{m} {p[:30]}" for m, p, _, _ in ODD_INPUTS],
)
def test_odd_input_is_never_a_500(
    usage_data: Api, method: str, path: str, body: bytes | None, expected: set[int]
) -> None:
    headers = {**bearer(usage_data.token("admin")), "Content-Type": "application/json"}
    response = usage_data.client.request(method, path, content=body, headers=headers)
    assert response.status_code in expected, response.text
    if response.status_code >= 400:
        assert set(response.json()) == {"error", "detail"}


@pytest.mark.parametrize("ledger", ["postgresql"], indirect=True)
def test_connections_the_database_dropped_are_replaced(api: Api) -> None:
    # The pool does not ping before each request (a round trip each); when
    # PostgreSQL drops its connections (a restart, an admin), at most the
    # first request is answered 503 and the pool is renewed for the rest.
    import psycopg  # noqa: PLC0415

    from tests.conftest import PG_ADMIN_DSN  # noqa: PLC0415

    admin = bearer(api.token("admin"))
    for _ in range(3):
        assert api.client.get("/members", headers=admin).status_code == 200
    database = api.app.state.quotad.engine.url.database
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        dropped = conn.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            (database,),
        ).fetchone()
    assert dropped is not None
    assert dropped[0] >= 1
    statuses = [api.client.get("/members", headers=admin).status_code for _ in range(4)]
    assert statuses.count(503) <= 1, statuses
    assert statuses[-3:] == [200, 200, 200], statuses
