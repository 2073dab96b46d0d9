"""`quotad bill` and `quotad adjustment`, figures by hand, on both ledgers.

alice keeps 3 GiB all the time, bob half a GiB; 1 GiB is free and a GiB-month
costs 0.10 USD: alice owes 0.20 a month, bob nothing.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from pathlib import Path

import pytest

from quotad.billing.arithmetic import Period
from quotad.db import session_scope, utcnow
from quotad.ledger.service import LedgerService, ScanInput
from scanners.base import Measurement
from tests.conftest import Ledger
from tests.helpers import run, run_json

GIB = 2**30
CURRENT = Period.containing(utcnow())
LAST = CURRENT.previous()
BILLING = """
[billing]
currency = "USD"
free = "1GiB"
price_per_gib_month = "0.10"
"""


@pytest.fixture
def config(ledger: Ledger) -> str:
    """A priced ledger where alice and bob were measured the day before last month."""
    finished = LAST.start - dt.timedelta(days=1)
    scan = ScanInput(
        scan_id=uuid.uuid4(),
        source="homes",
        source_kind="tree",
        started_at=finished - dt.timedelta(seconds=10),
        finished_at=finished,
        measurements=[
            Measurement(member="alice", kind="tree", name="alice", bytes=3 * GIB, files=1),
            Measurement(member="bob", kind="tree", name="bob", bytes=GIB // 2, files=1),
        ],
    )
    with session_scope(ledger.engine, write=True) as session:
        LedgerService(session, auto_register=True).record(scan)
    return str(ledger.config_file(BILLING))


def csv_text(period: Period, status: str, alice_adjusted: str = "0.00", alice: str = "0.20") -> str:
    start, end = f"{period.start:%Y-%m-%d}T00:00:00Z", f"{period.end:%Y-%m-%d}T00:00:00Z"
    return (
        "member,period,status,member_from,member_until,average_bytes,free_bytes,"
        "billable_gib_months,usage_amount,adjustments,amount,currency\r\n"
        f"alice,{period},{status},{start},{end},{3 * GIB},{GIB},2,0.20,{alice_adjusted},"
        f"{alice},USD\r\n"
        f"bob,{period},{status},{start},{end},{GIB // 2},{GIB},0,0.00,0.00,0.00,USD\r\n"
    )


def test_bill_in_three_formats(config: str, capsys: pytest.CaptureFixture[str]) -> None:
    bodies = run_json(capsys, "--config", config, "bill", str(LAST), "--format", "json")
    assert [
        (b["member"], b["status"], b["average_bytes"], b["billable_gib_months"], b["amount"])
        for b in bodies
    ] == [
        ("alice", "draft", 3 * GIB, "2", "0.20"),
        ("bob", "draft", GIB // 2, "0", "0.00"),
    ]

    code, out, err = run(capsys, "--config", config, "bill", str(LAST), "--format", "csv")
    assert (code, err) == (0, "")
    assert out == csv_text(LAST, "draft")

    code, out, _ = run(capsys, "--config", config, "bill", str(LAST))
    assert code == 0
    assert [line.split() for line in out.splitlines()] == [
        ["member", "status", "average", "free", "billable_gib_months", "amount"],
        ["alice", "draft", "3.0", "GiB", "1.0", "GiB", "2", "0.20", "USD"],
        ["bob", "draft", "512.0", "MiB", "1.0", "GiB", "0", "0.00", "USD"],
    ]


def test_bill_finalize(config: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "--config", config, "bill", str(CURRENT), "--finalize")
    assert (code, out) == (1, "")
    assert f"billing period {CURRENT} has not ended" in err

    code, out, err = run(
        capsys, "--config", config, "bill", str(LAST), "--finalize", "--format", "csv"
    )
    assert code == 0, err
    assert out == csv_text(LAST, "final")
    assert f"{LAST} finalized at" in err
    assert "2 statements" in err

    # Again: nothing changes, and it says so.
    code, out, err = run(
        capsys, "--config", config, "bill", str(LAST), "--finalize", "--format", "json"
    )
    assert code == 0, err
    assert [(b["member"], b["status"], b["amount"]) for b in json.loads(out)] == [
        ("alice", "final", "0.20"),
        ("bob", "final", "0.00"),
    ]
    assert f"{LAST} had been finalized" in err


def test_adjustments(config: str, capsys: pytest.CaptureFixture[str]) -> None:
    # A negative amount is taken as the amount, with or without "--".
    code, out, err = run(
        capsys, "--config", config, "adjustment", "add", "alice", "-4.50", "--reason", "outage"
    )
    assert code == 0, err
    assert f"-4.50 USD for alice, correcting {CURRENT}, on the {CURRENT} statement" in out
    code, _, err = run(
        capsys, "--config", config, "adjustment", "add", "bob", "--reason", "fee", "--", "-1"
    )
    assert code == 0, err

    assert run(capsys, "--config", config, "bill", str(LAST), "--finalize")[0] == 0
    code, out, err = run(
        capsys,
        "--config",
        config,
        "adjustment",
        "add",
        "alice",
        "1.25",
        "--reason",
        "late fee",
        "--corrects",
        str(LAST),
    )
    assert code == 0, err
    # LAST is final, so the correction shows on this month's statement.
    assert f"correcting {LAST}, on the {CURRENT} statement" in out

    listed = run_json(capsys, "--config", config, "adjustment", "list", "--json")
    assert [
        (a["member"], a["amount"], a["corrects"], a["period"], a["reason"]) for a in listed
    ] == [
        ("alice", "-4.50", str(CURRENT), str(CURRENT), "outage"),
        ("bob", "-1.00", str(CURRENT), str(CURRENT), "fee"),
        ("alice", "1.25", str(LAST), str(CURRENT), "late fee"),
    ]
    mine = run_json(capsys, "--config", config, "adjustment", "list", "--member", "bob", "--json")
    assert [a["amount"] for a in mine] == ["-1.00"]
    assert (
        run_json(capsys, "--config", config, "adjustment", "list", "--period", str(LAST), "--json")
        == []
    )
    code, out, _ = run(capsys, "--config", config, "adjustment", "list", "--member", "alice")
    assert code == 0
    assert [line.split()[:3] for line in out.splitlines()[1:]] == [
        [str(listed[0]["id"]), "alice", "-4.50"],
        [str(listed[2]["id"]), "alice", "1.25"],
    ]

    # This month: alice 0.20 - 4.50 + 1.25, bob 0.00 - 1.00.
    code, out, err = run(capsys, "--config", config, "bill", str(CURRENT), "--format", "csv")
    assert code == 0, err
    rows = [line.split(",") for line in out.splitlines()[1:]]
    assert [(r[0], r[8], r[9], r[10]) for r in rows] == [
        ("alice", "0.20", "-3.25", "-3.05"),
        ("bob", "0.00", "-1.00", "-1.00"),
    ]


@pytest.mark.parametrize(
    ("argv", "code", "words"),
    [
        (["adjustment", "add", "alice", "0", "--reason", "x"], 2, "changes nothing"),
        (["adjustment", "add", "alice", "1.005", "--reason", "x"], 2, "more decimals"),
        (["adjustment", "add", "alice", "lots", "--reason", "x"], 2, "not an amount of money"),
        (["adjustment", "add", "alice", "1", "--reason", " "], 2, "needs a reason"),
        (["adjustment", "add", "carol", "1", "--reason", "x"], 1, "no member named 'carol'"),
        (["adjustment", "list", "--member", "carol"], 1, "no member named 'carol'"),
        (["adjustment", "list", "--period", "2026-13"], 2, "no month 13"),
        (["bill", "2026-13"], 2, "no month 13 in '2026-13'"),
        (["bill", "october"], 2, "a billing period is a month written YYYY-MM, not 'october'"),
        (["bill", "2026-1", "--finalize"], 2, "YYYY-MM"),
        (["bill", str(CURRENT.next())], 2, "has not begun"),
    ],
)
def test_bad_input_is_a_clear_error(
    config: str, capsys: pytest.CaptureFixture[str], argv: list[str], code: int, words: str
) -> None:
    got, out, err = run(capsys, "--config", config, *argv)
    assert (got, out) == (code, "")
    assert err.startswith("quotad: ")
    assert words in err
    assert run_json(capsys, "--config", config, "adjustment", "list", "--json") == []


def test_no_statements_yet(
    ledger: Ledger, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = str(ledger.config_file(BILLING))
    code, out, _ = run(capsys, "--config", config, "bill", str(LAST))
    assert (code, out) == (0, f"no statements for {LAST}\n")
    assert run_json(capsys, "--config", config, "bill", str(LAST), "--format", "json") == []
