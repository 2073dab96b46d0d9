"""The `quotad` command end to end, on both ledgers, with the real tree scanner."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest
from sqlalchemy import func, select

from quotad import migrate
from quotad.audit.models import AuditEntry
from quotad.db import make_engine, session_scope
from quotad.demo import MESSAGES, write_demo
from quotad.ledger.models import Resource, Scan, UsageSample
from quotad.members.models import Member
from tests.conftest import Ledger
from tests.helpers import find_sizes, run, run_json

REPO = Path(__file__).resolve().parent.parent


def count(ledger: Ledger, model: type) -> int:
    with session_scope(ledger.engine) as session:
        return session.scalar(select(func.count()).select_from(model)) or 0


@pytest.fixture
def demo(ledger: Ledger, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The demo written to a fresh folder, its ledger redirected to the test's."""
    config = write_demo(ledger.base_dir / "demo")
    monkeypatch.setenv("QUOTAD_DATABASE_URL", ledger.url)
    monkeypatch.delenv("QUOTAD_CONFIG", raising=False)
    return config


def test_demo_scan_and_report_exact_sizes(demo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = demo.parent / "data"
    scans = run_json(capsys, "--config", str(demo), "scan", "--json")
    assert [(s["source"], s["status"], s["error"]) for s in scans] == [
        ("homes", "complete", None),
        ("mail", "complete", None),
        ("lists", "complete", None),
    ]

    expected: dict[str, dict[str, tuple[int, int]]] = defaultdict(dict)
    for member_dir in sorted((data / "homes").iterdir()):
        expected[member_dir.name]["homes"] = find_sizes(member_dir)
    for member_dir in sorted((data / "mail").iterdir()):
        expected[member_dir.name]["mail"] = find_sizes(member_dir / "Maildir")

    report = run_json(capsys, "--config", str(demo), "report", "--json")
    assert [r["member"] for r in report] == sorted(expected)
    for entry in report:
        got = {
            r["source"]: (r["bytes"], r["files"])
            for r in entry["resources"]
            if r["source"] != "lists"
        }
        assert got == expected[entry["member"]], entry["member"]
        assert entry["total"] == {
            "bytes": sum(r["bytes"] for r in entry["resources"]),
            "files": sum(r["files"] for r in entry["resources"]),
        }
        kinds = {r["source"]: r["kind"] for r in entry["resources"]}
        assert set(kinds.items()) <= {
            ("homes", "tree"),
            ("mail", "maildir"),
            ("lists", "mailman_archive"),
        }
        assert not any(r["stale"] for r in entry["resources"])
    # The Maildirs' messages, as written by the demo: not tmp/, not the index.
    mail = {
        entry["member"]: r["detail"]
        for entry in report
        for r in entry["resources"]
        if r["source"] == "mail"
    }
    assert mail == {
        member: {"messages": len(messages), "message_bytes": sum(s for _, _, s in messages)}
        for member, messages in MESSAGES.items()
    }
    # The list archives: every byte charged to an owner, or unattributed.
    lists = {
        (entry["member"], r["name"]): r["bytes"]
        for entry in report
        for r in entry["resources"]
        if r["source"] == "lists"
    }
    archives = data / "lists" / "archives" / "private"

    def archive(name: str) -> int:
        return sum(find_sizes(archives / n)[0] for n in (name, f"{name}.mbox"))

    assert lists[("alice", "alice-announce")] == archive("alice-announce")
    assert lists[("bob", "bob-dev")] == archive("bob-dev")
    shared = lists[("alice", "carol-and-alice/alice")] + lists[("carol", "carol-and-alice/carol")]
    assert shared == archive("carol-and-alice")
    assert (
        abs(lists[("alice", "carol-and-alice/alice")] - lists[("carol", "carol-and-alice/carol")])
        <= 1
    )
    code, out, _ = run(capsys, "--config", str(demo), "report")
    assert "orphans" in out.split("unattributed resources:")[1]
    # bob holds a hard-linked copy of his 57 MiB backup: counted once.
    assert expected["bob"]["homes"][0] < 2 * 57 * 1024**2
    states = {r["member"]: r["quotas"][0]["state"] for r in report}
    assert states == {"alice": "ok", "bob": "soft", "carol": "ok", "dave": "hard"}
    bob = next(r for r in report if r["member"] == "bob")["quotas"][0]
    assert bob["grace_ends_at"] is not None
    assert bob["grace_seconds"] == 604800

    code, out, _ = run(capsys, "--config", str(demo), "report")
    assert code == 0
    lines = {line.split()[0]: line.split() for line in out.splitlines()[1:] if line.strip()}
    assert lines["dave"][2] == str(sum(b for b, _ in expected["dave"].values()))
    assert lines["dave"][7] == "hard"  # "70.0 MiB" takes two fields


def test_scan_one_source_failing_still_records_the_others(
    ledger: Ledger, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = tmp_path / "good"
    (good / "alice").mkdir(parents=True)
    (good / "alice" / "f").write_bytes(b"x" * 1234)
    config = ledger.config_file(
        f'[[sources]]\nname = "missing"\nkind = "tree"\npath = "{tmp_path}/nowhere/{{member}}"\n'
        f'[[sources]]\nname = "good"\nkind = "tree"\npath = "{good}/{{member}}"\n'
    )
    code, out, err = run(capsys, "--config", str(config), "scan", "--json")
    assert code == 1
    result = {s["source"]: s for s in json.loads(out)}
    assert result["missing"]["status"] == "failed"
    assert "nowhere" in result["missing"]["error"]
    assert result["good"]["status"] == "complete"
    assert result["good"]["bytes"] == 1234
    assert "missing" in err
    usage = run_json(capsys, "--config", str(config), "report", "--json")
    assert [(u["member"], u["total"]["bytes"]) for u in usage] == [("alice", 1234)]

    # Only the named source runs.
    code, out, _ = run(capsys, "--config", str(config), "scan", "good", "--json")
    assert code == 0
    assert [s["source"] for s in json.loads(out)] == ["good"]
    code, _, err = run(capsys, "--config", str(config), "scan", "nosuch")
    assert code == 2
    assert "unknown source 'nosuch'" in err


def test_scan_is_quiet_when_not_a_terminal(ledger: Ledger, tmp_path: Path) -> None:
    (tmp_path / "t" / "alice").mkdir(parents=True)
    config = ledger.config_file(
        f'[[sources]]\nname = "t"\nkind = "tree"\npath = "{tmp_path}/t/{{member}}"\n'
    )
    proc = subprocess.run(
        [sys.executable, "-m", "quotad", "--config", str(config), "scan"],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert "\r" not in proc.stdout


def test_members(ledger: Ledger, capsys: pytest.CaptureFixture[str]) -> None:
    config = str(ledger.config_file())
    assert (
        run(
            capsys,
            "--config",
            config,
            "member",
            "add",
            "alice",
            "--email",
            "alice@example.org",
            "--joined",
            "2026-01-15",
        )[0]
        == 0
    )
    assert run(capsys, "--config", config, "member", "add", "bob")[0] == 0
    code, _, err = run(capsys, "--config", config, "member", "add", "alice")
    assert code == 1
    assert "already exists" in err
    code, _, err = run(capsys, "--config", config, "member", "add", "Bad Name")
    assert code == 2
    assert "invalid member name" in err
    code, _, err = run(capsys, "--config", config, "member", "add", "eve", "--joined", "soon")
    assert code == 2
    assert "--joined" in err
    code, _, err = run(capsys, "--config", config, "member", "add", "eve", "--email", "nope")
    assert code == 2
    assert "email" in err

    assert run_json(capsys, "--config", config, "member", "list", "--json") == [
        {
            "name": "alice",
            "email": "alice@example.org",
            "joined_at": "2026-01-15T00:00:00Z",
            "left_at": None,
        },
        {"name": "bob", "email": None, "joined_at": None, "left_at": None},
    ]
    assert run(capsys, "--config", config, "member", "remove", "bob")[0] == 0
    listed = run_json(capsys, "--config", config, "member", "list", "--json")
    assert listed[1]["name"] == "bob"
    assert listed[1]["left_at"] is not None
    code, _, err = run(capsys, "--config", config, "member", "remove", "bob")
    assert code == 1
    assert "already left" in err
    code, _, err = run(capsys, "--config", config, "member", "remove", "zed")
    assert code == 1
    assert "no member named 'zed'" in err
    with session_scope(ledger.engine) as session:
        actions = [
            (a.action, a.subject)
            for a in session.scalars(select(AuditEntry).order_by(AuditEntry.id))
        ]
        assert session.scalar(select(func.count()).select_from(Member)) == 2
    assert actions == [
        ("member.add", "member:alice"),
        ("member.add", "member:bob"),
        ("member.remove", "member:bob"),
    ]


def test_quota_overrides_are_audited_and_used(
    ledger: Ledger, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "t" / "alice").mkdir(parents=True)
    (tmp_path / "t" / "alice" / "data").write_bytes(b"z" * 5000)
    config = str(
        ledger.config_file(
            '[defaults.quota.total]\nsoft = "4KB"\nhard = "10KB"\ngrace = "1d"\n'
            f'[[sources]]\nname = "t"\nkind = "tree"\npath = "{tmp_path}/t/{{member}}"\n'
        )
    )
    assert run(capsys, "--config", config, "scan")[0] == 0
    report = run_json(capsys, "--config", config, "report", "--json")
    assert report[0]["quotas"][0]["state"] == "soft"

    code, _, err = run(
        capsys,
        "--config",
        config,
        "quota",
        "set",
        "alice",
        "--soft",
        "9KB",
        "--hard",
        "8KB",
        "--reason",
        "x",
    )
    assert code == 2
    assert "soft limit cannot exceed" in err
    code, _, err = run(
        capsys,
        "--config",
        config,
        "quota",
        "set",
        "alice",
        "--scope",
        "email",
        "--soft",
        "1",
        "--hard",
        "2",
        "--reason",
        "x",
    )
    assert code == 2
    assert "unknown quota scope" in err
    assert (
        run(
            capsys,
            "--config",
            config,
            "quota",
            "set",
            "alice",
            "--soft",
            "6KB",
            "--hard",
            "7KB",
            "--reason",
            "ticket 42",
        )[0]
        == 0
    )
    shown = run_json(capsys, "--config", config, "quota", "show", "alice", "--json")
    assert shown == {
        "member": "alice",
        "quotas": [
            {
                "scope": "total",
                "soft_bytes": 6000,
                "hard_bytes": 7000,
                "grace_seconds": 86400,
                "source": "override",
            }
        ],
    }
    report = run_json(capsys, "--config", config, "report", "--json")
    assert report[0]["quotas"][0]["state"] == "ok"

    assert run(capsys, "--config", config, "quota", "reset", "alice")[0] == 0
    shown = run_json(capsys, "--config", config, "quota", "show", "alice", "--json")
    assert shown["quotas"][0]["source"] == "default"
    assert shown["quotas"][0]["soft_bytes"] == 4000
    code, _, _ = run(capsys, "--config", config, "quota", "reset", "alice")
    assert code == 1
    with session_scope(ledger.engine) as session:
        audit = [
            (a.action, a.reason, (a.detail or {}).get("soft_bytes"))
            for a in session.scalars(
                select(AuditEntry).where(AuditEntry.action.like("quota.%")).order_by(AuditEntry.id)
            )
        ]
    assert audit == [
        ("quota.set", "ticket 42", 6000),
        ("quota.reset", "reset to the default plan", None),
    ]


def test_unmigrated_ledger_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "q.toml"
    config.write_text('database_url = "sqlite:///fresh/q.db"\n')
    code, _, err = run(capsys, "--config", str(config), "report")
    assert code == 1
    assert "run `quotad db upgrade`" in err
    assert run(capsys, "--config", str(config), "db", "upgrade")[0] == 0
    assert (tmp_path / "fresh" / "q.db").exists()
    assert run(capsys, "--config", str(config), "report")[0] == 0
    # Upgrading again is harmless.
    assert run(capsys, "--config", str(config), "db", "upgrade")[0] == 0


def test_models_and_migrations_do_not_drift(ledger: Ledger) -> None:
    migrate.check_engine(ledger.engine)


def test_rebuild_current_command(demo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "--config", str(demo), "scan")[0] == 0
    before = run_json(capsys, "--config", str(demo), "report", "--json")
    code, out, _ = run(capsys, "--config", str(demo), "db", "rebuild-current")
    assert code == 0
    # 4 home trees, 3 mailboxes, 3 lists (one split in two) and an orphan list
    assert "12 resources" in out
    assert run_json(capsys, "--config", str(demo), "report", "--json") == before


KILL_SCRIPT = """
import sys, time
from quotad.ledger import repository
original = repository.LedgerRepository.apply_scan_to_current
def stall(self, scan_id, source_id, rows):
    original(self, scan_id, source_id, rows)
    print("inside", flush=True)
    time.sleep(120)
repository.LedgerRepository.apply_scan_to_current = stall
from quotad.cli import main
sys.exit(main(["--config", sys.argv[1], "scan"]))
"""


def test_scan_killed_while_recording_leaves_no_trace(ledger: Ledger, tmp_path: Path) -> None:
    tree = tmp_path / "t"
    for name in ("alice", "bob"):
        (tree / name).mkdir(parents=True)
        (tree / name / "f").write_bytes(b"k" * 100)
    config = ledger.config_file(
        f'[[sources]]\nname = "t"\nkind = "tree"\npath = "{tree}/{{member}}"\n'
    )
    before = (count(ledger, Scan), count(ledger, UsageSample), count(ledger, Member))
    proc = subprocess.Popen(
        [sys.executable, "-c", KILL_SCRIPT, str(config)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.strip() == "inside", proc.stderr.read() if proc.stderr else ""
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert (count(ledger, Scan), count(ledger, UsageSample), count(ledger, Member)) == before
    # Nothing is left locked: the next scan records normally.
    done = subprocess.run(
        [sys.executable, "-m", "quotad", "--config", str(config), "scan"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert (count(ledger, Scan), count(ledger, UsageSample), count(ledger, Member)) == (1, 2, 2)


def test_fresh_sqlite_default_when_no_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    for var in list(os.environ):
        if var.startswith("QUOTAD_"):
            monkeypatch.delenv(var)
    assert run(capsys, "db", "upgrade")[0] == 0
    assert (tmp_path / "var" / "quotad.db").exists()
    engine = make_engine(f"sqlite:///{tmp_path}/var/quotad.db")
    try:
        migrate.require_current(engine)
    finally:
        engine.dispose()
    code, _, err = run(capsys, "scan")
    assert code == 0
    assert "no sources configured" in err


def test_scan_shows_progress_on_a_terminal(ledger: Ledger, tmp_path: Path) -> None:
    for name in ("alice", "bob", "carol"):
        (tmp_path / "t" / name).mkdir(parents=True)
    config = ledger.config_file(
        f'[[sources]]\nname = "t"\nkind = "tree"\npath = "{tmp_path}/t/{{member}}"\nworkers = 1\n'
    )
    main_fd, terminal_fd = os.openpty()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "quotad", "--config", str(config), "scan"],
            stderr=terminal_fd,
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO,
            timeout=120,
            check=False,
        )
        os.close(terminal_fd)
        shown = b""
        while True:
            try:
                chunk = os.read(main_fd, 4096)
            except OSError:  # EIO once the terminal's other side is closed
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(main_fd)
    assert proc.returncode == 0
    assert b"t: 3/3 carol" in shown
    assert b"\r" in shown
    assert "t: complete, 3 resources" in proc.stdout


def test_names_that_are_not_utf8_are_measured_and_kept_apart(
    ledger: Ledger, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "homes"
    (root / "alice").mkdir(parents=True)
    # A file inside a member's tree and a whole top-level folder whose names
    # are Latin-1 bytes, as an old FTP client leaves them.
    cafe = Path(os.fsdecode(os.fsencode(root / "alice") + b"/caf\xe9"))
    cafe.mkdir()
    (cafe / "menu").write_bytes(b"m" * 300)
    resume = Path(os.fsdecode(os.fsencode(root) + b"/r\xe9sum\xe9"))
    resume.mkdir()
    (resume / "cv").write_bytes(b"c" * 77)
    config = ledger.config_file(
        f'[[sources]]\nname = "homes"\nkind = "tree"\npath = "{root}/{{member}}"\n'
    )
    scans = run_json(capsys, "--config", str(config), "scan", "--json")
    assert scans[0]["status"] == "complete"
    assert scans[0]["bytes"] == 377

    usage = run_json(capsys, "--config", str(config), "report", "--json")
    assert [(u["member"], u["total"]["bytes"]) for u in usage] == [("alice", 300)]
    code, out, _ = run(capsys, "--config", str(config), "report")
    assert code == 0
    assert "r\\xe9sum\\xe9" in out

    # The escaped name is the same on the next scan: one resource, not two.
    run_json(capsys, "--config", str(config), "scan", "--json")
    with session_scope(ledger.engine) as session:
        names = sorted(session.scalars(select(Resource.name)))
    assert names == ["alice", "r\\xe9sum\\xe9"]


def test_maildir_cache_lives_beside_the_ledger_and_full_ignores_it(
    demo: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    cache_dir = demo.parent / "scanner-cache"
    monkeypatch.setenv("QUOTAD_CACHE_DIR", str(cache_dir))
    first = run_json(capsys, "--config", str(demo), "scan", "mail", "--json")
    cache = cache_dir / "mail" / "maildir.cache"
    assert cache.is_file()
    # Damage it: the next scan must not believe it, and must say the same.
    cache.write_bytes(b"garbage")
    again = run_json(capsys, "--config", str(demo), "scan", "mail", "--json")
    full = run_json(capsys, "--config", str(demo), "scan", "mail", "--full", "--json")
    assert [(s["bytes"], s["files"]) for s in first] == [(s["bytes"], s["files"]) for s in again]
    assert [(s["bytes"], s["files"]) for s in again] == [(s["bytes"], s["files"]) for s in full]
    assert cache.read_bytes() != b"garbage"
