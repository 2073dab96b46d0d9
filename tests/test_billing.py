"""Billing arithmetic by hand (INTERFACE.md section 5), on both ledgers."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import threading
import tomllib
import uuid
from collections.abc import Sequence
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from quotad.audit.service import AuditService
from quotad.billing import repository
from quotad.billing.arithmetic import Period
from quotad.billing.models import Statement
from quotad.billing.service import BillingService, FinalizeResult
from quotad.config import BillingSettings, RatePlan, parse_settings
from quotad.db import session_scope
from quotad.errors import ConfigError, Conflict, InvalidInput, NotFound
from quotad.ledger.service import LedgerService, ScanInput
from quotad.members.service import MemberService
from scanners.base import Measurement, ResourceFailure
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


PLAN = BillingSettings(currency="USD", free_bytes=10 * GIB, price_per_gib_month=Decimal("0.10"))


def exact_gib_months(text: str) -> Fraction:
    """A billable_gib_months string back to an exact number (it must be exact)."""
    return Fraction(Decimal(text))


def test_member_joining_mid_month_pays_for_their_part_with_the_allowance_prorated(
    ledger: Ledger,
) -> None:
    # April has 30 days; bob joins on the 16th: 15 of them.
    member(ledger, "bob", joined="2026-04-16")
    scan(ledger, "2026-04-01T00:00:00", {"bob": ("bob", 20 * GIB)})
    body = statement(ledger, "bob", "2026-04", PLAN)
    # 20 GiB for half the month, 10 GiB free for half the month.
    assert body["member_from"] == "2026-04-16T00:00:00Z"
    assert body["member_until"] == "2026-05-01T00:00:00Z"
    assert body["average_bytes"] == 10 * GIB
    assert body["free_bytes"] == 5 * GIB
    assert body["billable_gib_months"] == "5"
    assert body["amount"] == "0.50"


def test_unset_joined_at_is_the_first_measurement_when_that_came_before_registration(
    ledger: Ledger,
) -> None:
    # An agent's scan of April registers bob now (November): he has existed since
    # his first measurement, not since quotad heard of him.
    scan(ledger, "2026-04-16T00:00:00", {"bob": ("bob", 20 * GIB)})
    body = statement(ledger, "bob", "2026-04", PLAN)
    assert body["member_from"] == "2026-04-16T00:00:00Z"
    assert (body["average_bytes"], body["free_bytes"], body["amount"]) == (
        10 * GIB,
        5 * GIB,
        "0.50",
    )
    with pytest.raises(NotFound, match="was not a member during 2026-03"):
        statement(ledger, "bob", "2026-03", PLAN)


def test_member_leaving_mid_month(ledger: Ledger) -> None:
    member(ledger, "bob", left="2026-04-11")
    scan(ledger, "2026-03-01T00:00:00", {"bob": ("bob", 30 * GIB)})
    body = statement(ledger, "bob", "2026-04", PLAN)
    # 30 GiB for 10 of 30 days: 10 GiB on average; a third of 10 GiB free,
    # rounded half-even to a byte: 3,579,139,413.33 -> 3,579,139,413.
    assert body["member_until"] == "2026-04-11T00:00:00Z"
    assert body["average_bytes"] == 10 * GIB
    assert body["free_bytes"] == 3_579_139_413
    billable = 10 * GIB - 3_579_139_413
    assert exact_gib_months(body["billable_gib_months"]) == Fraction(billable, GIB)
    assert body["amount"] == "0.67"  # 0.10 x 6.6666666669...
    # Gone in May: no statement, and none in the list.
    with pytest.raises(NotFound):
        statement(ledger, "bob", "2026-05", PLAN)
    assert statements(ledger, "2026-05", PLAN) == []


def test_resource_deleted_mid_month_counts_zero_from_the_scan_that_no_longer_found_it(
    ledger: Ledger,
) -> None:
    member(ledger, "carol")
    scan(ledger, "2026-06-01T00:00:00", {"a": ("carol", 10 * GIB), "b": ("carol", 30 * GIB)})
    scan(ledger, "2026-06-11T00:00:00", {"a": ("carol", 10 * GIB)})  # complete, without b
    body = statement(ledger, "carol", "2026-06", PLAN)
    # a: 10 GiB x 30 days; b: 30 GiB x 10 days; over 30 days: 20 GiB.
    assert body["average_bytes"] == 20 * GIB
    assert body["billable_gib_months"] == "10"
    assert body["amount"] == "1.00"


def test_a_failed_resource_keeps_its_value_and_a_failed_source_changes_nothing(
    ledger: Ledger,
) -> None:
    member(ledger, "carol")
    scan(ledger, "2026-06-01T00:00:00", {"a": ("carol", 10 * GIB), "b": ("carol", 30 * GIB)})
    finished = at("2026-06-11T00:00:00")
    partial = ScanInput(
        scan_id=uuid.uuid4(),
        source="homes",
        source_kind="tree",
        started_at=finished,
        finished_at=finished,
        measurements=[Measurement(member="carol", kind="tree", name="a", bytes=GIB, files=1)],
        failures=[ResourceFailure(member="carol", kind="tree", name="b", error="unreadable")],
    )
    failed = ScanInput(
        scan_id=uuid.uuid4(),
        source="homes",
        source_kind="tree",
        started_at=finished,
        finished_at=finished + dt.timedelta(days=1),
        error="server down",
    )
    with session_scope(ledger.engine, write=True) as session:
        LedgerService(session).record(partial)
        LedgerService(session).record(failed)
    body = statement(ledger, "carol", "2026-06", PLAN)
    # b stays 30 GiB all month; a is 10 GiB for 10 days, then 1 GiB for 20.
    assert body["average_bytes"] == 30 * GIB + 4 * GIB
    assert body["amount"] == "2.40"


def test_price_change_mid_month_splits_the_period(ledger: Ledger) -> None:
    # September has 30 days; from the 21st a GiB-month costs 0.40 instead of 0.10.
    plans = dataclasses.replace(
        PLAN,
        changes=(RatePlan(at("2026-09-21T00:00:00"), 10 * GIB, Decimal("0.40")),),
    )
    member(ledger, "dave")
    scan(ledger, "2026-08-15T00:00:00", {"dave": ("dave", 40 * GIB)})
    body = statement(ledger, "dave", "2026-09", plans)
    # 20 days: (40 - 10) x 20/30 = 20 GiB-months at 0.10; 10 days: 10 at 0.40.
    first, second = body["charges"]
    assert (first["from"], first["until"]) == ("2026-09-01T00:00:00Z", "2026-09-21T00:00:00Z")
    assert (second["from"], second["until"]) == ("2026-09-21T00:00:00Z", "2026-10-01T00:00:00Z")
    assert (first["billable_gib_months"], first["price_per_gib_month"]) == ("20", "0.10")
    assert (second["billable_gib_months"], second["price_per_gib_month"]) == ("10", "0.40")
    assert body["average_bytes"] == 40 * GIB
    assert body["free_bytes"] == 10 * GIB
    assert body["billable_gib_months"] == "30"
    assert body["amount"] == "6.00"
    # The month before is untouched by the change.
    assert (
        statement(ledger, "dave", "2026-08", plans)["charges"][0]["price_per_gib_month"] == "0.10"
    )


def test_period_with_no_data(ledger: Ledger) -> None:
    member(ledger, "erin")
    body = statement(ledger, "erin", "2026-07", PLAN)
    assert body["average_bytes"] == 0
    assert body["free_bytes"] == 10 * GIB
    assert body["billable_gib_months"] == "0"
    assert (body["amount"], body["currency"]) == ("0.00", "USD")
    assert body["lines"] == []
    assert [s["member"] for s in statements(ledger, "2026-07", PLAN)] == ["erin"]


def several_sources(ledger: Ledger) -> None:
    member(ledger, "erin")
    # February 2026 has 28 days.
    scan(ledger, "2026-01-20T00:00:00", {"erin": ("erin", 2 * GIB)}, source="mail", kind="maildir")
    scan(ledger, "2026-01-20T00:00:00", {"erin": ("erin", 5 * GIB)})
    scan(ledger, "2026-02-15T00:00:00", {"erin": ("erin", 12 * GIB)})
    scan(
        ledger,
        "2026-02-08T00:00:00",
        {"erin_app": ("erin", GIB)},
        source="pg",
        kind="postgres_database",
    )


def test_member_with_several_sources(ledger: Ledger) -> None:
    several_sources(ledger)
    body = statement(ledger, "erin", "2026-02", PLAN)
    # maildir 2 GiB all month; tree 5 GiB for 14 days then 12 for 14: 8.5;
    # the database 1 GiB for the last 21 days: 0.75. In all 11.25 GiB.
    assert body["lines"] == [
        {"kind": "maildir", "average_bytes": 2 * GIB},
        {"kind": "postgres_database", "average_bytes": 3 * GIB // 4},
        {"kind": "tree", "average_bytes": 17 * GIB // 2},
    ]
    assert body["average_bytes"] == 45 * GIB // 4
    assert body["billable_gib_months"] == "1.25"
    # 1.25 x 0.10 = 0.125: half-even to the cent is 0.12, not 0.13.
    assert body["amount"] == "0.12"


def test_prices_per_kind_with_the_allowance_covering_the_dearest_first(ledger: Ledger) -> None:
    several_sources(ledger)
    plans = dataclasses.replace(PLAN, prices={"maildir": Decimal("0.50")})
    body = statement(ledger, "erin", "2026-02", plans)
    by_kind = {c["kind"]: c for c in body["charges"]}
    # The 10 GiB free cover maildir's 2 (0.50), then the 0.75 of the database
    # (0.10, before tree by name), then 7.25 of tree's 8.5.
    assert by_kind["maildir"]["billable_gib_months"] == "0"
    assert by_kind["postgres_database"]["billable_gib_months"] == "0"
    assert by_kind["tree"]["billable_gib_months"] == "1.25"
    assert by_kind["maildir"]["price_per_gib_month"] == "0.50"
    assert body["free_bytes"] == 10 * GIB
    assert body["amount"] == "0.12"


def test_allowance_left_over_with_prices_per_kind_stays_on_the_statement(ledger: Ledger) -> None:
    member(ledger, "erin")
    scan(ledger, "2026-01-20T00:00:00", {"erin": ("erin", GIB)}, source="mail", kind="maildir")
    plans = dataclasses.replace(PLAN, prices={"maildir": Decimal("0.50")})
    body = statement(ledger, "erin", "2026-02", plans)
    assert (body["free_bytes"], body["billable_gib_months"], body["amount"]) == (
        10 * GIB,
        "0",
        "0.00",
    )


def test_a_resource_changing_owner_is_charged_to_each_for_their_part(ledger: Ledger) -> None:
    member(ledger, "frank")
    member(ledger, "grace")
    # April: frank's list archive for 15 days, then grace's.
    scan(ledger, "2026-03-01T00:00:00", {"list": ("frank", 30 * GIB)})
    scan(ledger, "2026-04-16T00:00:00", {"list": ("grace", 30 * GIB)})
    free = BillingSettings(currency="EUR", free_bytes=0, price_per_gib_month=Decimal(1))
    frank = statement(ledger, "frank", "2026-04", free)
    grace = statement(ledger, "grace", "2026-04", free)
    assert frank["average_bytes"] == grace["average_bytes"] == 15 * GIB
    assert frank["amount"] == grace["amount"] == "15.00"
    assert frank["currency"] == "EUR"


def test_currency_minor_units_and_draft_of_the_current_month(ledger: Ledger) -> None:
    member(ledger, "hana")
    scan(ledger, "2026-11-16T00:00:00", {"hana": ("hana", 5 * GIB)})
    yen = BillingSettings(currency="JPY", free_bytes=0, price_per_gib_month=Decimal(13))
    # The current month's draft assumes the last measurement holds to the end:
    # 5 GiB for the last 15 of 30 days = 2.5 GiB-months x 13 = 32.5 -> 32 (half-even,
    # to the yen, which has no minor unit).
    body = statement(ledger, "hana", "2026-11", yen)
    assert body["status"] == "draft"
    assert body["billable_gib_months"] == "2.5"
    assert body["amount"] == "32"
    with pytest.raises(InvalidInput, match="has not begun"):
        statement(ledger, "hana", "2026-12", yen)


def finalize(ledger: Ledger, period: str, billing: BillingSettings = PLAN) -> FinalizeResult:
    with session_scope(ledger.engine, write=True) as session:
        return BillingService(session, billing, "admin", now=NOW).finalize(Period.parse(period))


def texts(ledger: Ledger, period: str, billing: BillingSettings = PLAN) -> list[str]:
    with session_scope(ledger.engine) as session:
        return [
            d.text
            for d in BillingService(session, billing, now=NOW).statements(Period.parse(period))
        ]


def adjust(ledger: Ledger, name: str, amount: str, corrects: str | None) -> dict[str, Any]:
    with session_scope(ledger.engine, write=True) as session:
        service = BillingService(session, PLAN, "admin alice", now=NOW)
        return service.adjust(
            name, amount, "disk fault", Period.parse(corrects) if corrects else None
        )


def test_finalize_freezes_the_period_and_is_idempotent(ledger: Ledger) -> None:
    member(ledger, "alice")
    member(ledger, "bob")
    scan(ledger, "2026-02-20T00:00:00", {"alice": ("alice", 40 * GIB), "bob": ("bob", GIB)})
    drafts = texts(ledger, "2026-03")
    first = finalize(ledger, "2026-03")
    assert (first.created, first.statements, first.finalized_by) == (True, 2, "admin")
    final = texts(ledger, "2026-03")
    # The same figures, now final.
    for draft, frozen in zip(drafts, final, strict=True):
        assert json.loads(frozen) == {
            **json.loads(draft),
            "status": "final",
            "finalized_at": "2026-11-30T12:00:00Z",
        }
    again = finalize(ledger, "2026-03")
    assert (again.created, again.finalized_at, again.statements) == (False, first.finalized_at, 2)

    # Nothing that happens afterwards changes a final statement: a scan in it is
    # refused, later scans, a member's dates, another price.
    with pytest.raises(Conflict, match="2026-03, whose billing period is finalized"):
        scan(ledger, "2026-03-20T00:00:00", {"alice": ("alice", 400 * GIB)})
    scan(ledger, "2026-04-02T00:00:00", {"alice": ("alice", 400 * GIB), "bob": ("bob", GIB)})
    with session_scope(ledger.engine, write=True) as session:
        MemberService(session, "test").put("bob", {"left_at": at("2026-03-10")})
    dearer = dataclasses.replace(PLAN, price_per_gib_month=Decimal("9.99"))
    assert texts(ledger, "2026-03", dearer) == final
    # The month after is a draft and has the new data.
    april = statements(ledger, "2026-04", dearer)
    assert [s["member"] for s in april] == ["alice"]
    assert april[0]["status"] == "draft"


def test_only_a_past_period_can_be_finalized(ledger: Ledger) -> None:
    member(ledger, "alice")
    with pytest.raises(Conflict, match="2026-11 has not ended"):
        finalize(ledger, "2026-11")
    with pytest.raises(Conflict, match="2027-01 has not ended"):
        finalize(ledger, "2027-01")
    # A period nobody was a member in can still be closed, with no statements.
    assert finalize(ledger, "2024-01").statements == 0


def test_adjustments_show_in_the_next_open_period_and_are_audited(ledger: Ledger) -> None:
    member(ledger, "alice")
    member(ledger, "bob", left="2026-03-15")
    scan(ledger, "2026-02-20T00:00:00", {"alice": ("alice", 13 * GIB), "bob": ("bob", GIB)})
    finalize(ledger, "2026-03")
    finalize(ledger, "2026-04")
    credit = adjust(ledger, "alice", "-1.25", "2026-03")
    assert (credit["corrects"], credit["period"], credit["amount"]) == (
        "2026-03",
        "2026-05",
        "-1.25",
    )
    debit = adjust(ledger, "alice", "0.40", "2026-06")  # still open: shows there
    assert debit["period"] == "2026-06"
    # bob left in March; a correction of his March lands in May all the same,
    # on a statement of its own.
    adjust(ledger, "bob", "-0.05", "2026-03")

    may = {s["member"]: s for s in statements(ledger, "2026-05", PLAN)}
    # alice: 13 GiB with 10 free = 3 GiB-months = 0.30, less the 1.25 credit.
    assert may["alice"]["usage_amount"] == "0.30"
    assert [(a["amount"], a["reason"], a["corrects"]) for a in may["alice"]["adjustments"]] == [
        ("-1.25", "disk fault", "2026-03")
    ]
    assert may["alice"]["amount"] == "-0.95"
    assert may["bob"]["member_from"] is None
    assert (may["bob"]["usage_amount"], may["bob"]["amount"]) == ("0.00", "-0.05")
    # March stays as it was frozen.
    assert [s["amount"] for s in statements(ledger, "2026-03", PLAN)] == ["0.30", "0.00"]

    with session_scope(ledger.engine) as session:
        entries = [e for e in AuditService(session, "t").recent() if e.action == "billing.adjust"]
        listed = BillingService(session, PLAN, now=NOW).adjustments(member="alice")
    assert {(e.subject, e.reason, e.actor) for e in entries} == {
        ("alice", "disk fault", "admin alice"),
        ("bob", "disk fault", "admin alice"),
    }
    assert [a["amount"] for a in listed] == ["-1.25", "0.40"]


@pytest.mark.parametrize(
    ("amount", "problem"),
    [
        ("0", "changes nothing"),
        ("0.001", "more decimals than USD"),
        ("ten", "not an amount of money"),
        ("NaN", "not an amount of money"),
        ("1e12", "must be less than"),
    ],
)
def test_bad_adjustments_are_refused_and_record_nothing(
    ledger: Ledger, amount: str, problem: str
) -> None:
    member(ledger, "alice")
    with pytest.raises(InvalidInput, match=problem):
        adjust(ledger, "alice", amount, None)
    with (
        pytest.raises(InvalidInput, match="needs a reason"),
        session_scope(ledger.engine, write=True) as session,
    ):
        BillingService(session, PLAN, now=NOW).adjust("alice", "1.00", "  ")
    with pytest.raises(NotFound):
        adjust(ledger, "nobody", "1.00", None)
    with session_scope(ledger.engine) as session:
        assert BillingService(session, PLAN, now=NOW).adjustments() == []


def test_two_finalizations_at_once_freeze_the_period_once(ledger: Ledger) -> None:
    for index in range(20):
        member(ledger, f"m{index:02d}")
    scan(ledger, "2026-02-20T00:00:00", {f"m{i:02d}": (f"m{i:02d}", i * GIB) for i in range(20)})
    start = threading.Barrier(4)
    results: list[FinalizeResult] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            start.wait()
            results.append(finalize(ledger, "2026-03"))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(r.created for r in results) == [False, False, False, True]
    assert len({r.finalized_at for r in results}) == 1
    with session_scope(ledger.engine) as session:
        assert session.scalar(select(func.count()).select_from(Statement)) == 20


def test_finalizing_waits_for_a_scan_being_recorded_in_the_period(ledger: Ledger) -> None:
    """A scan mid-transaction when finalizing starts is either in the statements or refused."""
    member(ledger, "alice")
    recording = threading.Event()
    release = threading.Event()
    finished = threading.Event()

    def slow_scan() -> None:
        finished_at = at("2026-03-16T00:00:00")
        item = ScanInput(
            scan_id=uuid.uuid4(),
            source="homes",
            source_kind="tree",
            started_at=finished_at,
            finished_at=finished_at,
            measurements=[Measurement("alice", "tree", "alice", 20 * GIB, 1)],
        )
        with session_scope(ledger.engine, write=True) as session:
            LedgerService(session).record(item)
            recording.set()
            release.wait(10)

    def finalizing() -> None:
        finalize(ledger, "2026-03")
        finished.set()

    scanner = threading.Thread(target=slow_scan)
    scanner.start()
    assert recording.wait(10)
    closer = threading.Thread(target=finalizing)
    closer.start()
    # Finalizing waits while the scan's transaction is open...
    assert not finished.wait(1)
    release.set()
    scanner.join()
    closer.join()
    # ...and then counts it: 20 GiB for the last 16 of 31 days.
    body = statement(ledger, "alice", "2026-03", PLAN)
    assert body["status"] == "final"
    assert body["average_bytes"] == round(Fraction(20 * GIB * 16, 31))


def billing_config(text: str) -> BillingSettings:
    raw = tomllib.loads(text)
    return parse_settings(raw, file_label="quotad.toml", base_dir=Path()).billing


def test_rate_plans_from_the_config_inherit_what_they_do_not_change() -> None:
    billing = billing_config(
        """
        [billing]
        currency = "EUR"
        free = "10GiB"
        price_per_gib_month = "0.10"
        prices = {maildir = "0.05"}

        [[billing.plans]]
        from = 2027-01-01
        price_per_gib_month = "0.12"

        [[billing.plans]]
        from = "2027-03-15T12:00:00Z"
        free = "20GiB"
        prices = {}
        """
    )
    base, january, march = billing.plans
    assert (base.starts_at, base.free_bytes, base.price_of("maildir")) == (
        None,
        10 * GIB,
        Decimal("0.05"),
    )
    assert january.starts_at == at("2027-01-01T00:00:00")
    assert (january.free_bytes, january.price_of("tree"), january.price_of("maildir")) == (
        10 * GIB,
        Decimal("0.12"),
        Decimal("0.05"),
    )
    assert march.starts_at == at("2027-03-15T12:00:00")
    assert (march.free_bytes, march.price_of("maildir")) == (20 * GIB, Decimal("0.12"))


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        ('price_per_gib_month = "-1"', "billing.price_per_gib_month", "must not be negative"),
        ('prices = {disk = "1"}', "billing.prices.disk", "unknown resource kind"),
        ("[[billing.plans]]\nfree = '1GiB'", "billing.plans[0].from", "is required"),
        (
            "[[billing.plans]]\nfrom = 2027-02-01\n[[billing.plans]]\nfrom = 2027-01-01",
            "billing.plans[1].from",
            "must be later than the plan before it",
        ),
        ("[[billing.plans]]\nfrom = 2027-01-01T00:00:00", "billing.plans[0].from", "time zone"),
        ("[[billing.plans]]\nfrom = 2027-01-01\nprice = '1'", "billing.plans[0].price", "unknown"),
    ],
)
def test_bad_rate_plans_are_config_errors(text: str, key: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        billing_config(f"[billing]\n{text}")
    assert caught.value.key == key
    assert problem in caught.value.problem


def test_allowance_a_part_of_the_period_leaves_unused_covers_the_other_part(
    ledger: Ledger,
) -> None:
    # April; the plan "changes" on the 16th to the same plan. bob stores nothing
    # before and 20 GiB after: 10 GiB on average, all of it under the 10 GiB free.
    same = dataclasses.replace(
        PLAN, changes=(RatePlan(at("2026-04-16T00:00:00"), 10 * GIB, Decimal("0.10")),)
    )
    member(ledger, "bob")
    scan(ledger, "2026-04-16T00:00:00", {"bob": ("bob", 20 * GIB)})
    body = statement(ledger, "bob", "2026-04", same)
    assert (body["average_bytes"], body["free_bytes"]) == (10 * GIB, 10 * GIB)
    assert (body["billable_gib_months"], body["amount"]) == ("0", "0.00")
    # The first half's unused 5 GiB shows as covering the second half's usage.
    assert [c["free_bytes"] for c in body["charges"]] == [0, 10 * GIB]


@pytest.mark.parametrize("ledger", ["postgresql"], indirect=True)
def test_a_large_ledger_integrated_in_slices_gives_the_same_statements(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    # On PostgreSQL many members are integrated by several connections at once,
    # sharing one snapshot; a few members are enough to compare the two ways.
    names = [f"m{i:02d}" for i in range(12)]
    for name in names:
        member(ledger, name)
    member(ledger, "late", joined="2026-03-10")
    scan(ledger, "2026-02-20T00:00:00", {n: (n, (i + 1) * GIB) for i, n in enumerate(names)})
    for day in (5, 12, 19, 26):
        sizes = {n: (n, (i + day) * GIB + day) for i, n in enumerate(names)}
        sizes["late"] = ("late", day * GIB)
        scan(ledger, f"2026-03-{day:02d}T06:00:00", sizes)
        scan(
            ledger,
            f"2026-03-{day:02d}T07:00:00",
            {n: (n, day) for n in names},
            source="mail",
            kind="maildir",
        )
    plans = dataclasses.replace(
        PLAN,
        prices={"maildir": Decimal("0.50")},
        changes=(RatePlan(at("2026-03-15T12:00:00"), 5 * GIB, Decimal("0.20")),),
    )
    one_by_one = texts(ledger, "2026-03", plans)
    monkeypatch.setattr(repository, "PARALLEL_FROM", 2)
    sliced: list[int] = []
    original = repository.BillingRepository._in_slices

    def counted(self: repository.BillingRepository, sql: str, params: Any) -> Any:
        sliced.append(1)
        return original(self, sql, params)

    monkeypatch.setattr(repository.BillingRepository, "_in_slices", counted)
    assert texts(ledger, "2026-03", plans) == one_by_one
    assert sliced == [1]
    assert len(one_by_one) == 13
