"""A schema fuzz of every operation in /openapi.json, as each role that may call it.

Schemathesis generates requests from the published schema, valid ones and
invalid ones, and checks every answer: never a 5xx, a status the operation
documents, a documented content type, and a body that matches the schema
declared for that status. Each operation is also fuzzed by outsiders: with no
credentials and as each role that may not call it. The body limit is set low,
so large bodies meet the 413 too; and on a ledger not yet migrated, where
every operation must answer a documented 503.

The ledger is SQLite: what is fuzzed is the HTTP layer, which both ledgers
share; the database-specific cases have their own tests (test_errors.py).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from api.app import create_app
from quotad.billing.arithmetic import Period
from quotad.config import parse_settings
from tests.api.conftest import NOW, PLAN, Api, bearer, z
from tests.conftest import Ledger

pytestmark = pytest.mark.slow
# SQLite only (see the docstring): the `ledger` fixture takes one parameter here.
SQLITE = pytest.mark.parametrize("ledger", ["sqlite"], indirect=True)

ROLES = ("admin", "portal", "member", "scanner")
OUTSIDERS = "outsiders"
MEMBER = "alice"
MAX_BODY = 1024

# Who may call what (INTERFACE.md section 4). Every operation the schema
# publishes must be listed, so a new endpoint cannot go unfuzzed.
CALLERS: dict[str, tuple[str, ...]] = {
    "GET /healthz": (),
    "GET /metrics": (),
    "GET /me/usage": ("member",),
    "GET /me/usage/history": ("member",),
    "GET /me/forecast": ("member",),
    "GET /members": ("admin", "portal"),
    "PUT /members/{name}": ("admin", "portal"),
    "GET /members/{name}/usage": ("admin", "portal", "member"),
    "GET /members/{name}/usage/history": ("admin", "portal", "member"),
    "GET /members/{name}/forecast": ("admin", "portal", "member"),
    "PUT /members/{name}/quotas/{scope}": ("admin",),
    "DELETE /members/{name}/quotas/{scope}": ("admin",),
    "GET /report": ("admin",),
    "GET /audit": ("admin",),
    "POST /scans": ("scanner",),
    "GET /me/charges": ("member",),
    "GET /billing/statements": ("admin", "portal"),
    "GET /billing/statements/{member}/{period}": ("admin", "portal"),
    "POST /billing/periods/{period}/finalize": ("admin",),
    "POST /billing/adjustments": ("admin",),
    "GET /billing/adjustments": ("admin", "portal"),
}

RUNS = [(op, role) for op, roles in CALLERS.items() for role in (*roles, OUTSIDERS)]

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]

# Derandomized, so a run in CI is the run a developer repeats; the budget
# keeps the whole fuzz near a minute on two slow cores.
EXAMPLES = 40
OUTSIDER_EXAMPLES = 5
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


@dataclass
class Target:
    api: Api
    schema: Any
    tokens: dict[str, str]


@pytest.fixture
def api(ledger: Ledger) -> Iterator[Api]:
    """The conftest's app, with a body limit a generated body can reach."""
    settings = ledger.settings(PLAN.replace("[server]\n", f'[server]\nmax_body = "{MAX_BODY}"\n'))
    assert settings.server.max_body == MAX_BODY
    app = create_app(settings)
    with TestClient(app) as client:
        yield Api(ledger, settings, app, client)


@pytest.fixture
def target(api: Api) -> Iterator[Target]:
    """The app on a ledger with members, scans and a quota override, and a token per role."""
    api.record("old", NOW - dt.timedelta(days=2), [(MEMBER, 100, 1)])
    api.record("homes", NOW - dt.timedelta(hours=1), [(MEMBER, 1500, 3), ("bob", 700, 2)])
    admin = api.token("admin")
    api.client.put(
        f"/members/{MEMBER}/quotas/total",
        json={"soft_bytes": 3000, "hard_bytes": 4000, "reason": "seeded for the fuzz"},
        headers=bearer(admin),
    ).raise_for_status()
    tokens = {
        "admin": admin,
        "portal": api.token("portal"),
        "member": api.token("member", MEMBER),
        "scanner": api.token("scanner"),
    }
    assert set(tokens) == set(ROLES)
    schema = schemathesis.openapi.from_asgi("/openapi.json", api.app)
    yield Target(api, schema, tokens)
    # Schemathesis keeps the app's lifespan running until the process ends;
    # the app's own engine is let go here, with the test's ledger.
    api.app.state.quotad.engine.dispose()


@SQLITE
def test_every_operation_is_fuzzed(target: Target) -> None:
    published = {
        f"{method.upper()} {path}"
        for path, item in target.schema.raw_schema["paths"].items()
        for method in item
    }
    assert published == set(CALLERS)


def _cases(operation: Any) -> st.SearchStrategy[Any]:
    """Valid and invalid requests, some about a member that exists and has data."""
    known: dict[str, str] = {}
    names = {p.name for p in operation.path_parameters}
    if "name" in names:
        known["name"] = MEMBER
    if "scope" in names:
        known["scope"] = "total"
    if "member" in names:
        known["member"] = MEMBER
    if "period" in names:
        # The month before: one with statements, which may be finalized.
        known["period"] = str(Period.containing(NOW).previous())
    strategies = [
        operation.as_strategy(schemathesis.GenerationMode.POSITIVE),
        operation.as_strategy(schemathesis.GenerationMode.NEGATIVE),
    ]
    if known:
        strategies += [
            operation.as_strategy(schemathesis.GenerationMode.POSITIVE, path_parameters=known),
            operation.as_strategy(schemathesis.GenerationMode.NEGATIVE, path_parameters=known),
        ]
    if operation.body:
        # Generated bodies seldom grow past even a low limit: one surely does.
        strategies.append(
            operation.as_strategy(schemathesis.GenerationMode.POSITIVE, body={}).map(_oversized)
        )
    return st.one_of(strategies)


def _oversized(case: Any) -> Any:
    # Grown after generation: in the strategy, the body would make its repr
    # (which Hypothesis warns about when large) as large.
    case.body = {"padding": "x" * MAX_BODY}
    return case


OWNERS = (MEMBER, "bob", "carol", None)


def _plausible_scan(drawn: tuple[Any, int, int]) -> Any:
    """A generated scan made past the checks the schema cannot state, so it gets recorded.

    Its times lie in the past, in order, its kinds are ones this server knows,
    its resources belong to members (or none) and its sizes are JSON integers
    (JSON Schema counts 420.0 as an integer; the API, strict, does not):
    without that nearly every generated scan is a 422.
    """
    case, age, owner = drawn
    finished = NOW - dt.timedelta(seconds=age)
    case.body["started_at"] = z(finished - dt.timedelta(seconds=30))
    case.body["finished_at"] = z(finished)
    resources = [*case.body.get("measurements", []), *case.body.get("failures", [])]
    for i, resource in enumerate(resources):
        resource["kind"] = "tree"
        resource["member"] = OWNERS[(owner + i) % len(OWNERS)]
        for size in ("bytes", "files"):
            if size in resource:
                resource[size] = int(resource[size])
    if "source_kind" in case.body or not resources:
        case.body["source_kind"] = "tree"
    return case


def _scans(operation: Any) -> st.SearchStrategy[Any]:
    plausible = st.tuples(
        operation.as_strategy(schemathesis.GenerationMode.POSITIVE),
        st.integers(min_value=60, max_value=400 * 86400),
        st.integers(min_value=0, max_value=len(OWNERS) - 1),
    ).map(_plausible_scan)
    return st.one_of(_cases(operation), plausible)


@SQLITE
@pytest.mark.parametrize(("label", "role"), RUNS, ids=[f"{op} as {role}" for op, role in RUNS])
def test_fuzz(target: Target, label: str, role: str) -> None:
    method, path = label.split(" ", 1)
    operation = target.schema[path][method]
    if role == OUTSIDERS:
        # No credentials, then each role that may not call it (all of them
        # for the endpoints that need none).
        callers: list[dict[str, str]] = [{}] + [
            bearer(target.tokens[r]) for r in ROLES if r not in CALLERS[label]
        ]
        examples = OUTSIDER_EXAMPLES if CALLERS[label] else EXAMPLES
    else:
        callers = [bearer(target.tokens[role])]
        examples = EXAMPLES
    strategy = _scans(operation) if label == "POST /scans" else _cases(operation)

    for headers in callers:
        _fuzz(strategy, headers, examples, twice=method in {"PUT", "POST"})


def _fuzz(
    strategy: st.SearchStrategy[Any],
    headers: dict[str, str],
    examples: int,
    *,
    twice: bool,
    checks: list[Any] = CHECKS,
    statuses: set[int] | None = None,
) -> None:
    @settings(FUZZ, max_examples=examples)
    @given(case=strategy)
    def fuzz(case: Any) -> None:
        response = case.call_and_validate(headers=headers, checks=checks)
        if statuses is not None:
            assert response.status_code in statuses, response.text
        if twice:
            # Sent again: a replay or an update that changes nothing answers too.
            case.call_and_validate(headers=headers, checks=checks)

    fuzz()


def test_fuzz_before_the_ledger_is_migrated(tmp_path: Path) -> None:
    """Until `quotad db upgrade`, every operation answers 503, and documents it."""
    settings = parse_settings(
        {"database_url": f"sqlite:///{tmp_path / 'new.db'}", "server": {"max_body": MAX_BODY}},
        file_label="<test>",
        base_dir=tmp_path,
    )
    app = create_app(settings)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    try:
        for label in CALLERS:
            method, path = label.split(" ", 1)
            operation = schema[path][method]
            _fuzz(
                _cases(operation),
                bearer("no-such-token"),
                OUTSIDER_EXAMPLES,
                twice=False,
                # The 503 is the answer here, not a server error; what comes
                # before asking the ledger (a body too large or unreadable) may
                # answer first.
                checks=[c for c in CHECKS if c is not not_a_server_error],
                statuses={503, 413, 422},
            )
    finally:
        app.state.quotad.engine.dispose()
