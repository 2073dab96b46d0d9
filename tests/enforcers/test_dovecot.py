"""The Dovecot enforcer against a real Dovecot 2.3: over the cap, Dovecot itself refuses mail.

Dovecot reads quotad's passwd-file as a second userdb (tests/dovecot_server.py
configures it as docs/enforcers/dovecot.md tells admins to). Mail goes in
through dovecot-lda, as an MTA delivers it: exit 0 is delivered, 77 refused.
Each test uses users of its own and puts the shared quota file in a known
state first.
"""

from __future__ import annotations

import grp
import multiprocessing
import os
import stat
import subprocess
import time
import tomllib
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

from quotad.config import SourceSettings, parse_settings
from quotad.enforcers.base import EnforcerError, Target
from quotad.enforcers.dovecot import DovecotEnforcer, QuotaFile, restricted_line, rule_limit
from quotad.errors import ConfigError
from scanners.base import Measurement, OptionError, ScanContext
from scanners.maildir import MaildirScanner
from tests.dovecot_server import DovecotServer, dovecot_with_quota_file

__all__ = ["dovecot_with_quota_file"]  # a fixture, used by name

DELIVERED, TEMPFAIL, REFUSED = 0, 75, 77
EX_CANTCREAT = 73  # doveadm save, refused

HEADER = "# quota rules for Dovecot, kept by quotad\n\n"
OTHERS = (
    b"# hand-made lines below\n"
    b"other-ann:::::::userdb_quota_rule=*:storage=5G\n"
    b"other-bob:::::::userdb_quota_rule=*:storage=2G userdb_mail=maildir:~/Mail\r\n"
    b"\n"
    b"#other-carl:::::::userdb_quota_rule=*:storage=1\n"
)


def message(size: int = 300) -> str:
    return "From: sender@example.org\nTo: member@example.org\nSubject: test\n\n" + "x" * size + "\n"


def scanner_for(server: DovecotServer) -> MaildirScanner:
    return MaildirScanner.from_options(
        "mail", {"path": f"{server.mail_root}/{{member}}/Maildir"}, Path()
    )


def enforcer_for(
    server: DovecotServer, *, verify: bool = True, **options: object
) -> DovecotEnforcer:
    assert server.quota_file is not None
    table: dict[str, object] = {"dovecot_quota_file": str(server.quota_file), **options}
    if verify:
        table.setdefault("doveadm", [server.binaries[1], "-c", str(server.conf)])
    return DovecotEnforcer.from_options(scanner_for(server), table, Path())


def target_of(server: DovecotServer, user: str) -> Target:
    """USER's mailbox as the maildir scanner measures it, as the ledger hands it over."""
    for item in scanner_for(server).scan(None, ScanContext(full=True)):
        if item.name == user:
            assert isinstance(item, Measurement)
            return Target(
                member=user,
                source="mail",
                kind="maildir",
                name=user,
                bytes=item.bytes,
                files=item.files,
                detail=dict(item.detail),
            )
    raise AssertionError(f"the scanner found no mailbox for {user}")


def save(server: DovecotServer, user: str) -> subprocess.CompletedProcess[str]:
    """`doveadm save` into USER's INBOX: what an IMAP APPEND does."""
    return subprocess.run(
        [server.binaries[1], "-c", str(server.conf), "save", "-u", user, "-m", "INBOX"],
        input=message(),
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def messages_in(server: DovecotServer, user: str) -> int:
    box = server.maildir(user)
    return sum(1 for part in ("new", "cur") for _ in (box / part).iterdir())


def reset_file(server: DovecotServer, content: bytes) -> Path:
    assert server.quota_file is not None
    server.quota_file.write_bytes(content)
    return server.quota_file


def test_over_the_cap_dovecot_refuses_mail_and_takes_it_again_after_lift(
    dovecot_with_quota_file: DovecotServer,
) -> None:
    server = dovecot_with_quota_file
    user = "dv-alice"
    path = reset_file(server, HEADER.encode() + OTHERS)
    for _ in range(3):
        assert server.deliver(user, message()).returncode == DELIVERED
    target = target_of(server, user)
    # The cap is the scanner's figure; it must be what Dovecot counts.
    assert server.recalc(user) == (target.detail["message_bytes"], target.detail["messages"])
    enforcer = enforcer_for(server)
    before = path.read_bytes()

    saved = enforcer.snapshot(target)
    assert saved == {"file": str(path), "user": user, "line": None}
    said = enforcer.restrict(target, saved)

    assert f"capped at {target.detail['message_bytes']} B" in said
    assert server.doveadm("user", "-u", "-f", "quota_rule", user).strip() == (
        f"*:storage={target.detail['message_bytes']}B"
    )
    for size in (1, 300, 100_000):
        refused = server.deliver(user, message(size))
        assert refused.returncode == REFUSED, refused
        assert "Quota exceeded" in refused.stdout + refused.stderr
    # An IMAP APPEND (a client saving to Sent) is refused too.
    assert save(server, user).returncode == EX_CANTCREAT
    assert messages_in(server, user) == 3
    # The member can still clean up: a move to Trash is not new mail.
    server.doveadm("mailbox", "create", "-u", user, "Trash")
    server.doveadm("move", "-u", user, "Trash", "mailbox", "INBOX", "all")
    server.doveadm("expunge", "-u", user, "mailbox", "Trash", "all")
    assert messages_in(server, user) == 0

    said = enforcer.lift(target, saved)

    assert said == f"line of {user} removed from {path} (there was none)"
    assert path.read_bytes() == before
    assert server.doveadm("user", "-u", "-f", "quota_rule", user).strip() == ""
    assert server.deliver(user, message(100_000)).returncode == DELIVERED


def test_a_users_own_line_is_kept_while_capped_and_comes_back_byte_for_byte(
    dovecot_with_quota_file: DovecotServer,
) -> None:
    server = dovecot_with_quota_file
    user = "dv-bella"
    own = f"{user}:::::::userdb_quota_rule=*:storage=2G userdb_quota_rule2=Trash:storage=+10M"
    # Her line is last, and the file has no final line break.
    path = reset_file(server, OTHERS + own.encode())
    assert server.deliver(user, message()).returncode == DELIVERED
    target = target_of(server, user)
    enforcer = enforcer_for(server)
    before = path.read_bytes()

    saved = enforcer.snapshot(target)
    assert saved["line"] == own
    enforcer.restrict(target, saved)

    limit = target.detail["message_bytes"]
    capped = (
        f"{user}:::::::userdb_quota_rule=*:storage={limit}B userdb_quota_rule2=Trash:storage=+10M"
    )
    assert path.read_bytes() == OTHERS + capped.encode()
    assert server.deliver(user, message()).returncode == REFUSED

    enforcer.lift(target, saved)

    assert path.read_bytes() == before
    assert server.deliver(user, message()).returncode == DELIVERED


def test_restrict_and_lift_twice_change_nothing_the_second_time(
    dovecot_with_quota_file: DovecotServer,
) -> None:
    server = dovecot_with_quota_file
    user = "dv-carol"
    path = reset_file(server, HEADER.encode())
    assert server.deliver(user, message()).returncode == DELIVERED
    target = target_of(server, user)
    enforcer = enforcer_for(server)
    before = path.read_bytes()
    saved = enforcer.snapshot(target)

    enforcer.restrict(target, saved)
    capped = path.read_bytes()
    mtime = path.stat().st_mtime_ns
    again = enforcer.restrict(target, saved)

    assert again.startswith(f"mail quota of {user} already capped")
    assert (path.read_bytes(), path.stat().st_mtime_ns) == (capped, mtime)
    assert server.deliver(user, message()).returncode == REFUSED

    enforcer.lift(target, saved)
    mtime = path.stat().st_mtime_ns
    again = enforcer.lift(target, saved)

    assert again == f"mail quota of {user} already as before in {path}"
    assert (path.read_bytes(), path.stat().st_mtime_ns) == (before, mtime)


def test_an_empty_mailbox_is_capped_at_one_byte_not_zero_which_means_unlimited(
    dovecot_with_quota_file: DovecotServer,
) -> None:
    server = dovecot_with_quota_file
    user = "dv-dora"
    reset_file(server, b"")
    assert server.deliver(user, message()).returncode == DELIVERED
    server.doveadm("expunge", "-u", user, "mailbox", "INBOX", "all")
    target = target_of(server, user)
    assert target.detail["message_bytes"] == 0
    enforcer = enforcer_for(server)
    saved = enforcer.snapshot(target)

    assert "capped at 1 B" in enforcer.restrict(target, saved)
    assert server.deliver(user, message(1)).returncode == REFUSED

    enforcer.lift(target, saved)
    assert server.deliver(user, message(1)).returncode == DELIVERED


def test_restrict_never_grants_more_than_the_users_line_allowed(tmp_path: Path) -> None:
    path = tmp_path / "quota-users"
    own = "dv-erin:::::::userdb_quota_rule=*:storage=1k"
    path.write_text(own + "\n")
    scanner = MaildirScanner.from_options("mail", {"path": f"{tmp_path}/{{member}}"}, Path())
    enforcer = DovecotEnforcer.from_options(scanner, {"dovecot_quota_file": str(path)}, Path())
    target = Target("dv-erin", "mail", "maildir", "dv-erin", 9000, detail={"message_bytes": 5000})
    saved = enforcer.snapshot(target)

    assert "capped at 1024 B" in enforcer.restrict(target, saved)
    assert path.read_text() == "dv-erin:::::::userdb_quota_rule=*:storage=1024B\n"
    enforcer.lift(target, saved)
    assert path.read_text() == own + "\n"


@pytest.mark.parametrize(
    ("line", "limit"),
    [
        (None, None),
        ("u:::::::userdb_quota_rule=*:storage=10", 10 * 1024),  # a bare number is KiB
        ("u:::::::userdb_quota_rule=*:storage=10M", 10 << 20),
        ("u:::::::userdb_quota_rule=?:bytes=77", 77),
        ("u:::::::userdb_quota_rule=*:storage=5B:messages=10", 5),
        ("u:::::::userdb_quota_rule=*:storage=0", None),  # unlimited
        ("u:::::::userdb_quota_rule=Trash:storage=+10M", None),
        ("u:::::::userdb_mail=maildir:~/Mail", None),
        ("u:x:5000:5000::/home/u", None),
    ],
)
def test_the_limit_a_line_sets_is_read_in_dovecots_units(
    line: str | None, limit: int | None
) -> None:
    assert rule_limit(line) == limit


def test_a_short_line_gets_the_rule_in_its_extra_fields() -> None:
    assert (
        restricted_line("u", "u:x:5000:5000", 7)
        == "u:x:5000:5000::::userdb_quota_rule=*:storage=7B"
    )


def test_other_lines_comments_and_permissions_are_left_as_they_were(
    dovecot_with_quota_file: DovecotServer,
) -> None:
    server = dovecot_with_quota_file
    user = "dv-fay"
    path = reset_file(server, OTHERS + b"dv-fay-not:::::::userdb_quota_rule=*:storage=3G\n")
    if os.geteuid() == 0:
        # As an admin would set it: Dovecot's auth process runs as `dovecot`.
        os.chown(path, 0, grp.getgrnam(server.internal_group).gr_gid)
    path.chmod(0o640)
    owner = (path.stat().st_uid, path.stat().st_gid)
    assert server.deliver(user, message()).returncode == DELIVERED
    target = target_of(server, user)
    enforcer = enforcer_for(server)
    before = path.read_bytes()
    saved = enforcer.snapshot(target)

    enforcer.restrict(target, saved)

    after = path.stat()
    lines = path.read_bytes().splitlines(keepends=True)
    assert lines[:-1] == before.splitlines(keepends=True)
    assert lines[-1].startswith(b"dv-fay:")
    assert (stat.S_IMODE(after.st_mode), after.st_uid, after.st_gid) == (0o640, *owner)
    assert not list(path.parent.glob(f".{path.name}.*")), "a temporary file was left behind"

    enforcer.lift(target, saved)

    after = path.stat()
    assert path.read_bytes() == before
    assert (stat.S_IMODE(after.st_mode), after.st_uid, after.st_gid) == (0o640, *owner)
    path.chmod(0o644)


def test_a_file_dovecot_cannot_read_holds_mail_back_instead_of_letting_it_through(
    dovecot_with_quota_file: DovecotServer,
) -> None:
    server = dovecot_with_quota_file
    user = "dv-fern"
    path = reset_file(server, b"")
    assert server.deliver(user, message()).returncode == DELIVERED
    path.chmod(0)
    try:
        # The userdb setting the docs ask for (result_internalfail = return-fail)
        # makes the LDA answer "try again later", so the MTA keeps the mail.
        deadline = time.monotonic() + 3
        while (held := server.deliver(user, message())).returncode == DELIVERED:
            assert time.monotonic() < deadline, "Dovecot still reads the file"
            time.sleep(0.2)
        assert held.returncode == TEMPFAIL, held
    finally:
        path.chmod(0o644)


def _cycle(path: str, users: list[str], step: str) -> None:
    """In another process: restrict (or lift) each of USERS in the file at PATH."""
    scanner = MaildirScanner.from_options("mail", {"path": "/nonexistent/{member}"}, Path())
    enforcer = DovecotEnforcer.from_options(scanner, {"dovecot_quota_file": path}, Path())
    for user in users:
        target = Target(user, "mail", "maildir", user, 2000, detail={"message_bytes": 1000})
        saved = {"file": path, "user": user, "line": None}
        if step == "restrict":
            enforcer.restrict(target, saved)
        else:
            enforcer.lift(target, saved)


def test_of_two_lines_for_a_user_the_first_is_changed_the_one_dovecot_uses(
    tmp_path: Path,
) -> None:
    # Dovecot 2.3.19 logs "User ivy exists more than once" and uses the first.
    path = tmp_path / "quota-users"
    original = (
        b"ivy:::::::userdb_quota_rule=*:storage=9G\nivy:::::::userdb_quota_rule=*:storage=1G\n"
    )
    path.write_bytes(original)
    scanner = MaildirScanner.from_options("mail", {"path": f"{tmp_path}/{{member}}"}, Path())
    enforcer = DovecotEnforcer.from_options(scanner, {"dovecot_quota_file": str(path)}, Path())
    target = Target("ivy", "mail", "maildir", "ivy", 10, detail={"message_bytes": 10})
    saved = enforcer.snapshot(target)

    enforcer.restrict(target, saved)
    assert path.read_bytes().splitlines()[0] == b"ivy:::::::userdb_quota_rule=*:storage=10B"
    enforcer.lift(target, saved)
    assert path.read_bytes() == original


def test_concurrent_writers_lose_no_line(tmp_path: Path) -> None:
    path = tmp_path / "quota-users"
    path.write_bytes(OTHERS)
    batches = [[f"w{worker}-u{i}" for i in range(15)] for worker in range(4)]
    context = multiprocessing.get_context("spawn")

    with ProcessPoolExecutor(len(batches), mp_context=context) as pool:
        for done in [pool.submit(_cycle, str(path), batch, "restrict") for batch in batches]:
            done.result()
        capped = path.read_bytes()
        for done in [pool.submit(_cycle, str(path), batch, "lift") for batch in batches]:
            done.result()

    assert capped.startswith(OTHERS)
    added = sorted(capped[len(OTHERS) :].decode().splitlines())
    expected = sorted(f"{u}:::::::userdb_quota_rule=*:storage=1000B" for b in batches for u in b)
    assert added == expected
    assert path.read_bytes() == OTHERS


def test_restrict_fails_when_dovecot_does_not_read_the_file(
    dovecot_with_quota_file: DovecotServer, tmp_path: Path
) -> None:
    server = dovecot_with_quota_file
    user = "dv-gina"
    assert server.deliver(user, message()).returncode == DELIVERED
    target = target_of(server, user)
    elsewhere = tmp_path / "not-in-dovecot.conf"
    enforcer = enforcer_for(server, dovecot_quota_file=str(elsewhere))
    saved = enforcer.snapshot(target)

    with pytest.raises(
        EnforcerError, match=r"is \S*not-in-dovecot\.conf a userdb in dovecot\.conf"
    ):
        enforcer.restrict(target, saved)
    assert server.deliver(user, message()).returncode == DELIVERED
    enforcer.lift(target, saved)
    assert elsewhere.read_bytes() == b""


def test_lift_after_the_file_is_gone_is_not_an_error(tmp_path: Path) -> None:
    path = tmp_path / "quota-users"
    scanner = MaildirScanner.from_options("mail", {"path": f"{tmp_path}/{{member}}"}, Path())
    enforcer = DovecotEnforcer.from_options(
        scanner, {"dovecot_quota_file": str(path), "dovecot_user": "{member}@example.org"}, Path()
    )
    target = Target("hana", "mail", "maildir", "hana", 10, detail={"message_bytes": 10})
    saved = enforcer.snapshot(target)
    assert saved == {"file": str(path), "user": "hana@example.org", "line": None}

    enforcer.restrict(target, saved)  # a missing file is created, readable by Dovecot
    assert path.read_text() == "hana@example.org:::::::userdb_quota_rule=*:storage=10B\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    path.unlink()

    assert enforcer.lift(target, saved) == f"{path} is gone: nothing of hana@example.org to restore"


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({}, "dovecot_quota_file"),
        ({"dovecot_quota_file": 3}, "dovecot_quota_file"),
        ({"dovecot_quota_file": "q", "dovecot_user": "fixed"}, "dovecot_user"),
        ({"dovecot_quota_file": "q", "dovecot_user": "{member}:x"}, "dovecot_user"),
        ({"dovecot_quota_file": "q", "doveadm": ["doveadm", 1]}, "doveadm"),
        ({"dovecot_quota_file": "q", "doveadm": ""}, "doveadm"),
        ({"dovecot_quota_file": "q", "dovecot_user": 3}, "dovecot_user"),
    ],
)
def test_bad_options_name_their_key(options: dict[str, object], key: str) -> None:
    scanner = MaildirScanner.from_options("mail", {"path": "/srv/{member}"}, Path())
    with pytest.raises(OptionError) as caught:
        DovecotEnforcer.from_options(scanner, options, Path())
    assert caught.value.key == key


def test_a_maildir_source_enforces_only_with_the_quota_file(tmp_path: Path) -> None:
    def source(extra: str) -> SourceSettings:
        text = f'[[sources]]\nname = "mail"\nkind = "maildir"\npath = "/srv/{{member}}"\n{extra}'
        raw = tomllib.loads(text)
        (only,) = parse_settings(raw, file_label="<test>", base_dir=tmp_path).sources
        return only

    assert source("").enforcer is None
    enforcer = source('dovecot_quota_file = "dovecot-quota"\n').enforcer
    assert isinstance(enforcer, DovecotEnforcer)
    assert enforcer.quota_file == tmp_path / "dovecot-quota"
    with pytest.raises(ConfigError, match="enforce: cannot be true: it needs dovecot_quota_file"):
        source("enforce = true\n")


def test_options_relative_path_and_doveadm_command(tmp_path: Path) -> None:
    scanner = MaildirScanner.from_options("mail", {"path": "/srv/{member}"}, Path())
    enforcer = DovecotEnforcer.from_options(
        scanner, {"dovecot_quota_file": "dovecot/quota", "doveadm": "doveadm"}, tmp_path
    )
    assert enforcer.quota_file == tmp_path / "dovecot" / "quota"
    assert enforcer.doveadm == ("doveadm",)
    assert sorted(DovecotEnforcer.OPTIONS) == ["doveadm", "dovecot_quota_file", "dovecot_user"]
    assert DovecotEnforcer.source_kind == "maildir"
    assert QuotaFile(tmp_path / "none").line("x") is None
