"""API tokens: issued once, kept as a hash, refused when malformed, unknown or revoked."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import re
from typing import Any

import pytest
from alembic import command
from sqlalchemy import event, inspect, select, text

from quotad import migrate
from quotad.audit.models import AuditEntry
from quotad.auth.service import ROLES, TOUCH_INTERVAL, Principal, TokenInfo, TokenService
from quotad.db import session_scope, utcnow
from quotad.errors import Conflict, InvalidInput, NotFound, Unauthorized
from quotad.members.service import MemberService
from tests.conftest import Ledger
from tests.helpers import run, run_json

TOKEN = re.compile(r"qd_[A-Za-z0-9_-]{43}")
ACTOR = "test:admin"


def add_members(ledger: Ledger, *names: str) -> None:
    with session_scope(ledger.engine, write=True) as session:
        for name in names:
            MemberService(session, ACTOR).add(name)


def create(ledger: Ledger, **kwargs: Any) -> tuple[TokenInfo, str]:
    with session_scope(ledger.engine, write=True) as session:
        return TokenService(session, ACTOR).create(**kwargs)


def authenticate(ledger: Ledger, token: str, now: dt.datetime | None = None) -> Principal:
    with session_scope(ledger.engine) as session:
        return TokenService(session, "api").authenticate(token, now=now)


def tokens(ledger: Ledger) -> list[TokenInfo]:
    with session_scope(ledger.engine) as session:
        return TokenService(session, ACTOR).list()


def raw_rows(ledger: Ledger) -> list[dict[str, Any]]:
    with ledger.engine.connect() as conn:
        return [dict(r) for r in conn.execute(text("SELECT * FROM api_tokens")).mappings()]


def audit(ledger: Ledger) -> list[AuditEntry]:
    with session_scope(ledger.engine) as session:
        return list(session.scalars(select(AuditEntry).order_by(AuditEntry.id)))


def usage_error(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[str, str]:
    """Stdout and stderr of a command refused as bad usage, by argparse or after it."""
    try:
        code, out, err = run(capsys, *argv)
    except SystemExit as exc:
        code = exc.code  # type: ignore[assignment]
        out, err = capsys.readouterr()
    assert code == 2, err
    return out, err


def test_the_token_is_shown_once_and_only_its_hash_is_stored(ledger: Ledger) -> None:
    info, secret = create(ledger, role="admin", label="ops")
    assert TOKEN.fullmatch(secret)
    # 256 random bits: 43 base64url characters decode to exactly 32 bytes.
    assert len(base64.urlsafe_b64decode(secret[3:] + "=")) == 32
    rows = raw_rows(ledger)
    assert len(rows) == 1
    assert rows[0]["secret_hash"] == hashlib.sha256(secret.encode()).hexdigest()
    stored = json.dumps(rows, default=str)
    assert secret not in stored
    assert secret[3:] not in stored
    # Nothing that is shown afterwards holds it either.
    assert secret not in repr(info)
    assert secret not in repr(tokens(ledger))
    assert info.id == rows[0]["id"]
    assert (info.role, info.member, info.sources, info.label) == ("admin", None, None, "ops")
    assert info.created_by == ACTOR
    assert info.last_used_at is None
    assert info.revoked_at is None


def test_tokens_are_random(ledger: Ledger) -> None:
    secrets_ = {create(ledger, role="portal")[1] for _ in range(20)}
    assert len(secrets_) == 20
    assert all(TOKEN.fullmatch(s) for s in secrets_)
    # Every base64url character shows up across 20 x 43 random characters.
    assert len({c for s in secrets_ for c in s[3:]}) > 50


@pytest.mark.parametrize("role", ROLES)
def test_each_role_authenticates(ledger: Ledger, role: str) -> None:
    add_members(ledger, "alice")
    member = "alice" if role == "member" else None
    info, secret = create(ledger, role=role, member=member, label=f"the {role}")
    principal = authenticate(ledger, secret)
    assert principal == Principal(
        role=role, member=member, token_id=info.id, sources=None, label=f"the {role}"
    )


def test_scanner_sources_are_recorded(ledger: Ledger) -> None:
    info, secret = create(ledger, role="scanner", sources=["mail", "afs", "mail", "home.s-1"])
    assert info.sources == ("afs", "home.s-1", "mail")
    assert raw_rows(ledger)[0]["sources"] in (
        ["afs", "home.s-1", "mail"],
        '["afs", "home.s-1", "mail"]',  # SQLite hands JSON back as text on a raw select
    )
    assert authenticate(ledger, secret).sources == frozenset({"afs", "home.s-1", "mail"})
    assert tokens(ledger)[0].sources == ("afs", "home.s-1", "mail")
    _, any_source = create(ledger, role="scanner")
    assert authenticate(ledger, any_source).sources is None


def test_malformed_unknown_and_revoked_tokens_are_refused(ledger: Ledger) -> None:
    info, secret = create(ledger, role="admin")
    queries: list[str] = []

    def count(*args: Any) -> None:
        queries.append(args[2])

    event.listen(ledger.engine, "before_cursor_execute", count)
    try:
        for malformed in (
            "",
            secret[3:],
            "qd_" + "A" * 42,
            "qd_" + "A" * 44,
            "QD_" + secret[3:],
            secret[:-1] + "=",
            secret[:-1] + "é",
            secret + "\n",
            " " + secret,
        ):
            with pytest.raises(Unauthorized, match="malformed"):
                authenticate(ledger, malformed)
        # Refused before the ledger is asked anything.
        assert not [q for q in queries if "api_tokens" in q]
    finally:
        event.remove(ledger.engine, "before_cursor_execute", count)

    unknown = "qd_" + ("B" if secret[3] != "B" else "C") + secret[4:]
    with pytest.raises(Unauthorized) as unknown_error:
        authenticate(ledger, unknown)
    with session_scope(ledger.engine, write=True) as session:
        TokenService(session, ACTOR).revoke(info.id)
    with pytest.raises(Unauthorized) as revoked_error:
        authenticate(ledger, secret)
    # The same answer: a caller cannot tell a revoked token from one never made.
    assert str(unknown_error.value) == str(revoked_error.value)


def test_revoked_tokens_stay_listed_and_revoking_twice_is_a_conflict(ledger: Ledger) -> None:
    first, _ = create(ledger, role="admin")
    second, second_secret = create(ledger, role="portal")
    with session_scope(ledger.engine, write=True) as session:
        revoked = TokenService(session, "cli:root").revoke(first.id)
    assert revoked.revoked_at is not None
    assert revoked.revoked_by == "cli:root"
    listed = tokens(ledger)
    assert [(t.id, t.revoked_at is not None) for t in listed] == [
        (first.id, True),
        (second.id, False),
    ]
    assert listed[0].revoked_at == revoked.revoked_at
    with session_scope(ledger.engine, write=True) as session, pytest.raises(Conflict):
        TokenService(session, ACTOR).revoke(first.id)
    with session_scope(ledger.engine, write=True) as session, pytest.raises(NotFound):
        TokenService(session, ACTOR).revoke(first.id + 100)
    # The other token is untouched.
    assert authenticate(ledger, second_secret).token_id == second.id


def test_last_used_is_written_at_most_once_a_minute(ledger: Ledger) -> None:
    info, secret = create(ledger, role="scanner")
    start = utcnow()

    def last_used() -> dt.datetime | None:
        return next(t.last_used_at for t in tokens(ledger) if t.id == info.id)

    authenticate(ledger, secret, now=start)
    assert last_used() == start
    authenticate(ledger, secret, now=start + TOUCH_INTERVAL / 2)
    assert last_used() == start
    later = start + TOUCH_INTERVAL + dt.timedelta(seconds=1)
    authenticate(ledger, secret, now=later)
    assert last_used() == later


def test_what_a_token_may_be(ledger: Ledger) -> None:
    add_members(ledger, "alice", "bob")
    cases: list[tuple[dict[str, Any], type[Exception], str]] = [
        ({"role": "root"}, InvalidInput, "unknown role"),
        ({"role": "member"}, InvalidInput, "needs the member"),
        ({"role": "member", "member": "zed"}, NotFound, "no member named 'zed'"),
        ({"role": "member", "member": "alice", "sources": ["mail"]}, InvalidInput, "scanner"),
        ({"role": "admin", "member": "alice"}, InvalidInput, "not bound to a member"),
        ({"role": "portal", "sources": ["mail"]}, InvalidInput, "only scanner"),
        ({"role": "scanner", "sources": ["bad name"]}, InvalidInput, "invalid source name"),
        ({"role": "scanner", "sources": ["-x"]}, InvalidInput, "invalid source name"),
        ({"role": "scanner", "sources": "mail"}, InvalidInput, "list of names"),
        ({"role": "admin", "label": "x" * 256}, InvalidInput, "at most 255"),
        ({"role": "admin", "label": "a\nb"}, InvalidInput, "control"),
    ]
    for kwargs, error, message in cases:
        with pytest.raises(error, match=message):
            create(ledger, **kwargs)
    assert tokens(ledger) == []
    # Any well-formed name will do, configured or not: agents come before config.
    assert create(ledger, role="scanner", sources=["not-configured"])[0].sources == (
        "not-configured",
    )
    assert create(ledger, role="admin", label="  ")[0].label is None


def test_members_who_left(ledger: Ledger) -> None:
    add_members(ledger, "alice", "bob")
    _, alice_secret = create(ledger, role="member", member="alice")
    assert authenticate(ledger, alice_secret).member == "alice"
    with session_scope(ledger.engine) as session:
        assert TokenService(session, "api").member_principal("alice") == Principal(
            role="member", member="alice", token_id=None, sources=None
        )
        with pytest.raises(Unauthorized):
            TokenService(session, "api").member_principal("zed")
    with session_scope(ledger.engine, write=True) as session:
        MemberService(session, ACTOR).remove("alice")
    with pytest.raises(Unauthorized, match="not valid"):
        authenticate(ledger, alice_secret)
    with session_scope(ledger.engine) as session, pytest.raises(Unauthorized):
        TokenService(session, "api").member_principal("alice")
    with pytest.raises(Conflict, match="left"):
        create(ledger, role="member", member="alice")
    assert create(ledger, role="member", member="bob")[0].member == "bob"


def test_creating_and_revoking_are_audited_without_the_secret(ledger: Ledger) -> None:
    add_members(ledger, "alice")
    member_token, member_secret = create(ledger, role="member", member="alice", label="phone")
    scanner_token, scanner_secret = create(ledger, role="scanner", sources=["mail"])
    with session_scope(ledger.engine, write=True) as session:
        TokenService(session, "cli:root").revoke(scanner_token.id)
    entries = [e for e in audit(ledger) if e.action.startswith("token.")]
    assert [(e.action, e.subject, e.actor, e.detail) for e in entries] == [
        (
            "token.create",
            f"token:{member_token.id}",
            ACTOR,
            {"role": "member", "member": "alice", "sources": None, "label": "phone"},
        ),
        (
            "token.create",
            f"token:{scanner_token.id}",
            ACTOR,
            {"role": "scanner", "member": None, "sources": ["mail"], "label": None},
        ),
        (
            "token.revoke",
            f"token:{scanner_token.id}",
            "cli:root",
            {"role": "scanner", "member": None, "sources": ["mail"], "label": None},
        ),
    ]
    with ledger.engine.connect() as conn:
        everything = json.dumps(
            [list(r) for r in conn.execute(text("SELECT * FROM audit_log"))], default=str
        )
    for secret in (member_secret, scanner_secret):
        assert secret[3:] not in everything
        assert hashlib.sha256(secret.encode()).hexdigest() not in everything


def test_cli(ledger: Ledger, capsys: pytest.CaptureFixture[str]) -> None:
    config = str(ledger.config_file())
    assert run(capsys, "--config", config, "member", "add", "alice")[0] == 0

    code, out, err = run(
        capsys, "--config", config, "token", "create", "--member", "alice", "--label", "laptop"
    )
    assert code == 0, err
    # stdout holds the token and nothing else, so it can be piped to a file.
    assert TOKEN.fullmatch(out.removesuffix("\n"))
    assert out.count("\n") == 1
    assert "shown only this once" in err
    member_secret = out.strip()
    assert authenticate(ledger, member_secret).member == "alice"

    code, out, err = run(
        capsys,
        "--config",
        config,
        "token",
        "create",
        "--role",
        "scanner",
        "--source",
        "mail",
        "--source",
        "afs",
    )
    assert code == 0, err
    scanner = authenticate(ledger, out.strip())
    assert scanner.sources == frozenset({"mail", "afs"})

    for argv, message in [
        (["--role", "admin", "--source", "mail"], "only scanner"),
        (["--role", "scanner", "--source", "a b"], "invalid source name"),
        (["--role", "admin", "--member", "alice"], "not allowed with"),
        (["--role", "member"], "invalid choice"),
        ([], "one of the arguments"),
    ]:
        out, err = usage_error(capsys, "--config", config, "token", "create", *argv)
        assert out == ""
        assert message in err
    code, out, err = run(capsys, "--config", config, "token", "create", "--member", "zed")
    assert (code, out) == (1, "")
    assert "no member named 'zed'" in err

    listed = run_json(capsys, "--config", config, "token", "list", "--json")
    assert [(t["id"], t["role"], t["member"], t["sources"], t["label"]) for t in listed] == [
        (1, "member", "alice", None, "laptop"),
        (2, "scanner", None, ["afs", "mail"], None),
    ]
    assert set(listed[0]) == set(TokenInfo.__slots__)
    assert listed[0]["created_at"].endswith("Z")
    assert listed[0]["last_used_at"].endswith("Z")  # authenticated above
    assert listed[0]["revoked_at"] is None

    code, out, err = run(capsys, "--config", config, "token", "revoke", "1")
    assert code == 0, err
    assert "token 1 revoked" in out
    code, _, err = run(capsys, "--config", config, "token", "revoke", "1")
    assert code == 1
    assert "already revoked" in err
    code, _, err = run(capsys, "--config", config, "token", "revoke", "99")
    assert code == 1
    assert "no token with id 99" in err
    assert "invalid int" in usage_error(capsys, "--config", config, "token", "revoke", "one")[1]

    listed = run_json(capsys, "--config", config, "token", "list", "--json")
    assert listed[0]["revoked_at"].endswith("Z")
    assert listed[0]["revoked_by"].startswith("cli")
    code, out, _ = run(capsys, "--config", config, "token", "list")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == [
        "id",
        "role",
        "member",
        "sources",
        "label",
        "created_at",
        "last_used",
        "revoked",
    ]
    assert lines[1].split()[:5] == ["1", "member", "alice", "-", "laptop"]
    assert lines[2].split()[:5] == ["2", "scanner", "-", "afs,mail", "-"]
    assert member_secret not in out
    with pytest.raises(Unauthorized):
        authenticate(ledger, member_secret)


def test_migration_downgrades_and_upgrades(ledger: Ledger) -> None:
    cfg = migrate.alembic_config()
    with ledger.engine.begin() as connection:
        cfg.attributes["connection"] = connection
        # Back to the ledger before tokens, whatever came after them.
        command.downgrade(cfg, "0b861e204c6d")
    assert "api_tokens" not in inspect(ledger.engine).get_table_names()
    migrate.upgrade_engine(ledger.engine)
    assert "api_tokens" in inspect(ledger.engine).get_table_names()
    migrate.check_engine(ledger.engine)
    add_members(ledger, "alice")
    _, secret = create(ledger, role="member", member="alice")
    assert authenticate(ledger, secret).member == "alice"


def test_a_busy_ledger_never_refuses_a_valid_token(ledger: Ledger) -> None:
    """On SQLite a read transaction cannot write once another writer committed after
    it began; the last-use stamp is then skipped, and the token still counts."""
    info, secret = create(ledger, role="admin")
    with session_scope(ledger.engine) as session:
        service = TokenService(session, "api")
        assert service.list()[0].id == info.id  # the read that takes SQLite's snapshot
        add_members(ledger, "bob")  # another writer commits meanwhile
        assert service.authenticate(secret).token_id == info.id
    last_used = tokens(ledger)[0].last_used_at
    assert (last_used is None) == (ledger.backend == "sqlite")
