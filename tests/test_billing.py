"""Billing arithmetic by hand (INTERFACE.md section 5), on both ledgers."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import pytest

from quotad.billing.arithmetic import Period
from quotad.billing.service import BillingService
from quotad.config import BillingSettings, RatePlan
from quotad.db import session_scope
from quotad.ledger.service import LedgerService, ScanInput
from quotad.members.service import MemberService
from scanners.base import Measurement
from tests.conftest import Ledger

GIB = 2**30
TIB = 2**40
NOW = dt.datetime(2026, 11, 30, 12, tzinfo=dt.UTC)


def at(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC)


def member(
    ledger: Ledger, name: str, *, joined: str | None = "2025-01-01", left: str | None = None
) -> None:
    with session_scope(ledger.engine, write=True) as session:
        MemberService(session, "test").add(
            name,
            email=f"{name}@example.org",
            joined_at=at(joined) if joined else None,
            left_at=at(left) if left else None,
        )


def scan(
    ledger: Ledger,
    when: str,
    sizes: dict[str, tuple[str, int]],
    *,
    source: str = "homes",
    kind: str = "tree",
) -> None:
    """A complete scan of SOURCE finishing at WHEN: resource name -> (member, bytes)."""
    finished = at(when)
    item = ScanInput(
        scan_id=uuid.uuid4(),
        source=source,
        source_kind=kind,
        started_at=finished - dt.timedelta(seconds=10),
        finished_at=finished,
        measurements=[
            Measurement(member=who, kind=kind, name=name, bytes=size, files=1)
            for name, (who, size) in sizes.items()
        ],
    )
    with session_scope(ledger.engine, write=True) as session:
        LedgerService(session).record(item)


def statement(
    ledger: Ledger, name: str, period: str, billing: BillingSettings, now: dt.datetime = NOW
) -> dict[str, Any]:
    with session_scope(ledger.engine) as session:
        doc = BillingService(session, billing, now=now).statement(name, Period.parse(period))
        return dict(doc.body)


def statements(
    ledger: Ledger, period: str, billing: BillingSettings, now: dt.datetime = NOW
) -> Sequence[dict[str, Any]]:
    with session_scope(ledger.engine) as session:
        docs = BillingService(session, billing, now=now).statements(Period.parse(period))
        return [dict(d.body) for d in docs]


def test_s3_byte_hour_example_scaled_to_gib(ledger: Ledger) -> None:
    # AWS's documented example: 100 GB for 15 days of March, then 100 TB for the
    # last 16 days, is 52,900 GB-months (their GB is 2**30 bytes). Here the first
    # size is the carry-in from February.
    member(ledger, "alice")
    scan(ledger, "2026-02-20T00:00:00", {"alice": ("alice", 100 * GIB)})
    scan(ledger, "2026-03-16T00:00:00", {"alice": ("alice", 100 * TIB)})
    billing = BillingSettings(currency="USD", free_bytes=0, price_per_gib_month=Decimal("0.023"))
    body = statement(ledger, "alice", "2026-03", billing)
    assert body["average_bytes"] == 52_900 * GIB
    assert body["billable_gib_months"] == "52900"
    assert body["amount"] == "1216.70"  # 52,900 x 0.023
    assert body["status"] == "draft"
    assert body["lines"] == [{"kind": "tree", "average_bytes": 52_900 * GIB}]
