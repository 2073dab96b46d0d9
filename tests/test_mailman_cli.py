"""The `mailman` source end to end through the `quotad` command, on both ledgers.

Owners from a file, and from the session's real Mailman 3 core
(tests/mailman_server.py). Expected sizes are the bytes the tests write.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from tests.conftest import Ledger
from tests.helpers import report_by_member, run, run_json, unattributed_rows
from tests.mailman_server import PASSWORD, MailmanServer, free_port, mailman

__all__ = ["mailman"]  # a fixture, used by name


def archive(root: Path, name: str, html: int, mbox: int) -> int:
    """List NAME's two archive folders, one file of each size; return the bytes written."""
    (root / name).mkdir(parents=True)
    (root / name / "000001.html").write_bytes(b"h" * html)
    (root / f"{name}.mbox").mkdir()
    (root / f"{name}.mbox" / f"{name}.mbox").write_bytes(b"m" * mbox)
    return html + mbox


def usage(capsys: pytest.CaptureFixture[str], config: Path) -> dict[str, dict[str, int]]:
    """Member -> resource name -> bytes, from `quotad report --json`."""
    report = report_by_member(capsys, config)
    return {member: {n: r["bytes"] for n, r in rs.items()} for member, rs in report.items()}


def unattributed(report_text: str) -> dict[str, int]:
    """Name -> bytes from the "unattributed resources" table of `quotad report`."""
    return {row[2]: int(row[3]) for row in unattributed_rows(report_text)}


def test_owners_file_attribution_split_and_unattributed(
    ledger: Ledger, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "archives" / "private"
    announce = archive(root, "announce", html=12_345, mbox=678_901)
    team = archive(root, "team", html=1_001, mbox=2_000)  # 3001: odd
    guests = archive(root, "guests", html=10, mbox=20)
    orphan = archive(root, "orphan", html=5, mbox=6)
    owners = tmp_path / "list-owners.toml"
    owners.write_text(
        'announce = "alice@example.org"\n'
        'team = ["bob@example.org", "alice"]\n'
        'guests = "Visitor+lists@partner.example"\n',
        encoding="utf-8",
    )
    config = ledger.config_file(
        f'[[sources]]\nname = "lists"\nkind = "mailman"\narchive_root = "{root}"\n'
        f'owners_file = "{owners}"\n'
    )

    scans = run_json(capsys, "--config", str(config), "scan", "--json")

    assert [(s["source"], s["kind"], s["status"]) for s in scans] == [
        ("lists", "mailman", "complete")
    ]
    assert scans[0]["bytes"] == announce + team + guests + orphan
    assert scans[0]["files"] == 8
    # The split adds up exactly; the odd byte goes to alice, first by name.
    assert usage(capsys, config) == {
        "alice": {"announce": announce, "team/alice": 1501},
        "bob": {"team/bob": 1500},
    }
    code, out, _ = run(capsys, "--config", str(config), "report")
    assert code == 0
    # An owner who is no member, and a list nobody owns: shown, never dropped.
    assert unattributed(out) == {"guests": guests, "orphan": orphan}


def test_owners_who_are_not_registered_stay_unattributed(
    ledger: Ledger, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "private"
    mine = archive(root, "mine", html=100, mbox=200)
    theirs = archive(root, "theirs", html=300, mbox=400)
    owners = tmp_path / "owners.toml"
    owners.write_text('mine = "alice@example.org"\ntheirs = "zed@example.org"\n', "utf-8")
    config = ledger.config_file(
        "[members]\nauto_register = false\n"
        f'[[sources]]\nname = "lists"\nkind = "mailman"\narchive_root = "{root}"\n'
        f'owners_file = "{owners}"\n'
    )
    assert run(capsys, "--config", str(config), "member", "add", "alice")[0] == 0

    assert run(capsys, "--config", str(config), "scan")[0] == 0

    assert usage(capsys, config) == {"alice": {"mine": mine}}
    _, out, _ = run(capsys, "--config", str(config), "report")
    assert unattributed(out) == {"theirs": theirs}


def test_rest_owners_and_a_server_down_keeps_the_earlier_values(
    ledger: Ledger, mailman: MailmanServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    domain = mailman.new_domain()
    solo, pair, stranger = (f"{n}-{uuid.uuid4().hex[:8]}" for n in ("solo", "pair", "stranger"))
    mailman.create_list(solo, domain, ("alice@example.org",))
    mailman.create_list(pair, domain, ("bob@example.org", "carol@example.org"))
    mailman.create_list(stranger, domain, ("Someone.Else+x@elsewhere.example",))
    root = tmp_path / "archives" / "private"
    solo_bytes = archive(root, solo, html=40_000, mbox=1_000_001)
    archive(root, pair, html=3, mbox=4)  # 7 bytes, 2 files
    stranger_bytes = archive(root, stranger, html=70, mbox=80)

    def config_for(rest_url: str) -> Path:
        return ledger.config_file(
            f'[[sources]]\nname = "lists"\nkind = "mailman"\narchive_root = "{root}"\n'
            f'rest_url = "{rest_url}"\nrest_password_file = "{mailman.password_file}"\n'
            'timeout = "10s"\n'
        )

    good = config_for(mailman.rest_url)
    scans = run_json(capsys, "--config", str(good), "scan", "--json")
    assert [(s["source"], s["status"], s["error"]) for s in scans] == [("lists", "complete", None)]
    expected = {
        "alice": {solo: solo_bytes},
        "bob": {f"{pair}/bob": 4},
        "carol": {f"{pair}/carol": 3},
    }
    assert usage(capsys, good) == expected
    _, out, _ = run(capsys, "--config", str(good), "report")
    assert unattributed(out) == {stranger: stranger_bytes}

    # The archives grow, but Mailman cannot be reached: the scan fails as a
    # whole and every earlier value stands.
    (root / solo / "000002.html").write_bytes(b"x" * 5000)
    down_url = f"http://127.0.0.1:{free_port()}/3.1"
    down = config_for(down_url)
    code, out, err = run(capsys, "--config", str(down), "scan", "--json")

    assert code == 1
    (result,) = json.loads(out)
    why = f"Mailman REST {down_url}/lists?count=200&page=1: cannot connect: Connection refused"
    assert (result["source"], result["status"], result["error"]) == ("lists", "failed", why)
    assert f"quotad: source lists failed: {why}" in err
    assert PASSWORD not in out + err
    assert usage(capsys, down) == expected
    code, out, _ = run(capsys, "--config", str(down), "report")
    assert code == 0
    assert unattributed(out) == {stranger: stranger_bytes}
    assert "sources whose last scan did not complete:" in out
    assert why in out


def test_an_owner_address_registered_as_a_members_email_is_that_member(
    ledger: Ledger, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "private"
    travel = archive(root, "travel", html=111, mbox=222)
    owners = tmp_path / "owners.toml"
    # The local part would make a member "dora.explorer" of its own.
    owners.write_text('travel = "dora.explorer@Example.ORG"\n', "utf-8")
    config = ledger.config_file(
        f'[[sources]]\nname = "lists"\nkind = "mailman"\narchive_root = "{root}"\n'
        f'owners_file = "{owners}"\n'
    )
    add = ("member", "add", "dora", "--email", "Dora.Explorer@example.org")
    assert run(capsys, "--config", str(config), *add)[0] == 0

    assert run(capsys, "--config", str(config), "scan")[0] == 0

    assert usage(capsys, config) == {"dora": {"travel": travel}}
    members = run_json(capsys, "--config", str(config), "member", "list", "--json")
    assert [m["name"] for m in members] == ["dora"]
