"""An app on the test's ledger (SQLite and PostgreSQL), its tokens and its data."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from api.app import create_app
from quotad.auth.service import TokenService
from quotad.config import Settings
from quotad.db import session_scope
from quotad.ledger.service import LedgerService, ScanInput
from scanners.base import Measurement
from tests.conftest import Ledger

# The default plan of every API test: 1,000 bytes soft, 2,000 hard, 7 days.
PLAN = """
[defaults.quota.total]
soft = "1000"
hard = "2000"
grace = "7d"
[server]
trusted_proxies = ["10.0.0.0/8"]
"""

# Whole seconds, so the times the API prints can be written down exactly.
NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)


def z(at: dt.datetime) -> str:
    return at.astimezone(dt.UTC).replace(tzinfo=None).isoformat() + "Z"


@dataclass
class Api:
    ledger: Ledger
    settings: Settings
    app: FastAPI
    client: TestClient

    def token(
        self,
        role: str,
        member: str | None = None,
        label: str | None = None,
        sources: Sequence[str] = (),
    ) -> str:
        with session_scope(self.ledger.engine, write=True) as session:
            _, raw = TokenService(session, "test").create(
                role=role, member=member, sources=tuple(sources), label=label
            )
        return raw

    def revoke(self, raw: str) -> None:
        with session_scope(self.ledger.engine, write=True) as session:
            service = TokenService(session, "test")
            token_id = service.authenticate(raw).token_id
            assert token_id is not None
            service.revoke(token_id)

    def record(
        self,
        source: str,
        at: dt.datetime,
        measurements: Sequence[tuple[str, int, int]],
        kind: str = "tree",
    ) -> None:
        """A complete scan of SOURCE finished at AT: (member, bytes, files) each."""
        scan = ScanInput(
            scan_id=uuid.uuid4(),
            source=source,
            source_kind=kind,
            started_at=at - dt.timedelta(seconds=30),
            finished_at=at,
            measurements=[
                Measurement(member=m, kind=kind, name=m, bytes=b, files=f)
                for m, b, f in measurements
            ],
        )
        with session_scope(self.ledger.engine, write=True) as session:
            LedgerService(session, auto_register=True).record(scan)

    def client_from(self, host: str) -> TestClient:
        return TestClient(self.app, client=(host, 40000))


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def api(ledger: Ledger) -> Iterator[Api]:
    settings = ledger.settings(PLAN)
    app = create_app(settings)
    with TestClient(app) as client:
        yield Api(ledger, settings, app, client)


@pytest.fixture
def usage_data(api: Api) -> Api:
    """alice: 1,500 bytes fresh and 100 stale (over soft); bob: 700 bytes."""
    api.record("old", NOW - dt.timedelta(days=2), [("alice", 100, 1)])
    api.record("homes", NOW - dt.timedelta(hours=1), [("alice", 1500, 3), ("bob", 700, 2)])
    return api
