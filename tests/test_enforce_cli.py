"""`quotad enforce` as cron runs it: real processes, the ledger's lock, a real enforcer and SMTP.

The enforcer is the Dovecot one writing its quota file (no Dovecot needs to
run to write it; tests/enforcers/test_dovecot.py shows Dovecot obeying it).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from quotad.db import session_scope
from quotad.enforcement.models import EnforcementAction, Notification
from quotad.locks import job_lock
from tests.conftest import Ledger
from tests.helpers import run
from tests.smtp_server import SmtpServer, smtp_server

__all__ = ["smtp_server"]

ROOT = Path(__file__).resolve().parent.parent
MEMBERS = 40


def config_text(tmp_path: Path, smtp: SmtpServer) -> str:
    return f"""
[defaults.quota.total]
soft = "10KiB"
hard = "20KiB"
grace = "7d"

[enforcement]
notify_at = [1.0]

[smtp]
host = "{smtp.host}"
port = {smtp.port}
sender = "quota@coop.example"

[[sources]]
name = "mail"
kind = "maildir"
path = "{tmp_path}/mail/{{member}}/Maildir"
dovecot_quota_file = "{tmp_path}/dovecot-quota"
"""


def mailbox(tmp_path: Path, member: str, size: int) -> None:
    root = tmp_path / "mail" / member / "Maildir"
    for sub in ("cur", "new", "tmp"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "cur" / f"1700000000.M1P1.host,S={size}:2,S").write_bytes(b"x" * size)


def setup_world(
    ledger: Ledger, tmp_path: Path, smtp: SmtpServer, capsys: pytest.CaptureFixture[str]
) -> tuple[Path, list[str]]:
    """MEMBERS members with mail, every other one over hard; returns (config, over)."""
    config = ledger.config_file(config_text(tmp_path, smtp))
    over = []
    for i in range(MEMBERS):
        name = f"m{i:02d}"
        size = 30 * 1024 if i % 2 == 0 else 1024
        if size > 20 * 1024:
            over.append(name)
        mailbox(tmp_path, name, size)
        email = f"{name}@coop.example"
        code, _, err = run(capsys, "--config", str(config), "member", "add", name, "--email", email)
        assert code == 0, err
    code, _, err = run(capsys, "--config", str(config), "scan")
    assert code == 0, err
    return config, over


def enforce_process(config: Path, *args: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUOTAD_")}
    return subprocess.Popen(
        [sys.executable, "-m", "quotad", "--config", str(config), "enforce", "--json", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen[str]) -> tuple[int, dict[str, Any]]:
    out, err = process.communicate(timeout=120)
    assert out, err
    return process.returncode, json.loads(out)


def recorded(ledger: Ledger) -> tuple[Counter[tuple[str, str, str]], Counter[tuple[int, str]]]:
    with session_scope(ledger.engine) as session:
        actions = Counter(
            (a.resource, a.action, a.status) for a in session.scalars(select(EnforcementAction))
        )
        mails = Counter((n.member_id, n.status) for n in session.scalars(select(Notification)))
    return actions, mails


@pytest.mark.parametrize("ledger", ["postgresql"], indirect=True)
def test_two_runs_started_at_once_apply_every_action_exactly_once(
    ledger: Ledger, tmp_path: Path, smtp_server: SmtpServer, capsys: pytest.CaptureFixture[str]
) -> None:
    config, over = setup_world(ledger, tmp_path, smtp_server, capsys)
    first, second = enforce_process(config), enforce_process(config)
    outcomes = [finish(first), finish(second)]
    assert [code for code, _ in outcomes] == [0, 0], outcomes
    restricts = [
        c
        for _, plan in outcomes
        for c in plan["changes"]
        if c["type"] == "restrict" and c["status"] == "done"
    ]
    assert sorted(c["member"] for c in restricts) == over

    actions, mails = recorded(ledger)
    assert actions == Counter(
        {(name, "restrict", status): 1 for name in over for status in ("started", "done")}
    )
    assert sum(mails.values()) == len(over)
    assert sorted(m.rcpt_tos[0] for m in smtp_server.messages) == [
        f"{name}@coop.example" for name in over
    ]
    lines = (tmp_path / "dovecot-quota").read_text().splitlines()
    assert sorted(line.split(":", 1)[0] for line in lines if line and not line.startswith("#")) == (
        over
    )

    # And a third run afterwards finds nothing to do.
    code, plan = finish(enforce_process(config))
    assert (code, plan["changes"]) == (0, [])


def test_a_run_while_another_holds_the_lock_does_nothing(
    ledger: Ledger, tmp_path: Path, smtp_server: SmtpServer, capsys: pytest.CaptureFixture[str]
) -> None:
    config, over = setup_world(ledger, tmp_path, smtp_server, capsys)
    with job_lock(ledger.engine, "enforce") as held:
        assert held
        code, plan = finish(enforce_process(config))
    assert code == 0
    assert plan["run_id"] is None
    assert "another quotad enforce is running" in plan["skipped"]
    assert recorded(ledger) == (Counter(), Counter())
    assert smtp_server.messages == []
    # Once the lock is free the work is done.
    code, plan = finish(enforce_process(config))
    assert code == 0
    assert len([c for c in plan["changes"] if c["type"] == "restrict"]) == len(over)


def test_dry_run_prints_the_plan_and_changes_nothing(
    ledger: Ledger, tmp_path: Path, smtp_server: SmtpServer, capsys: pytest.CaptureFixture[str]
) -> None:
    config, over = setup_world(ledger, tmp_path, smtp_server, capsys)
    code, out, err = run(capsys, "--config", str(config), "enforce", "--dry-run")
    assert code == 0, err
    assert "dry run: nothing is changed" in out
    assert out.count("restrict") == len(over)
    assert "m00" in out
    assert "total over hard: 30.0 KiB > 20.0 KiB" in out
    assert recorded(ledger) == (Counter(), Counter())
    assert not (tmp_path / "dovecot-quota").exists()


def test_a_failing_enforcer_sets_the_exit_code_and_is_retried(
    ledger: Ledger, tmp_path: Path, smtp_server: SmtpServer, capsys: pytest.CaptureFixture[str]
) -> None:
    config, over = setup_world(ledger, tmp_path, smtp_server, capsys)
    # The quota file cannot be written: its path is a directory.
    (tmp_path / "dovecot-quota").mkdir()
    code, out, err = run(capsys, "--config", str(config), "enforce")
    assert code == 1
    assert f"{len(over)} changes failed" in err
    assert "failed" in out
    (tmp_path / "dovecot-quota").rmdir()
    code, out, err = run(capsys, "--config", str(config), "enforce")
    assert code == 0, err
    actions, _ = recorded(ledger)
    assert {(a, s) for (_, a, s) in actions} == {
        ("restrict", "started"),
        ("restrict", "failed"),
        ("restrict", "done"),
    }
