"""Warning mail, received by a real SMTP server over a socket."""

from __future__ import annotations

import datetime as dt
import re
import smtplib
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path

import pytest

from quotad.config import SmtpSettings
from quotad.enforcers.notify import (
    VARIABLES,
    Notice,
    NoticeQuota,
    NoticeResource,
    Notifier,
    NotifyError,
    State,
    duration_words,
    short_size,
    size,
)
from quotad.errors import ConfigError
from tests.smtp_server import (
    USERNAME,
    SmtpServer,
    free_port,
    smtp_certificate,
    smtp_server,
    smtp_tls_server,
)

__all__ = ["smtp_certificate", "smtp_server", "smtp_tls_server"]

NOW = dt.datetime(2026, 11, 30, 14, 0, tzinfo=dt.UTC)
GRACE_ENDS = dt.datetime(2026, 12, 7, 14, 0, tzinfo=dt.UTC)
GIB = 1024**3
SENDER = "Quota <quota@coop.example>"


def settings(server: SmtpServer, **changes: object) -> SmtpSettings:
    values: dict[str, object] = {"host": server.host, "port": server.port, "sender": SENDER}
    values.update(changes)
    return SmtpSettings(**values)  # type: ignore[arg-type]


def notice(
    event: str = "warning",
    *,
    state: State = "ok",
    previous: State = "ok",
    used: int = 9_876_543_210,
    level: Decimal | None = Decimal("0.9"),
    recipients: Sequence[str] = ("alice@members.example",),
    copy_to: Sequence[str] = (),
    grace_ends_at: dt.datetime | None = None,
    member: str = "alice",
) -> Notice:
    total = NoticeQuota("total", 10 * GIB, 12 * GIB, 7 * 86400, used, state, grace_ends_at)
    maildir = NoticeQuota("maildir", 2 * GIB, 3 * GIB, 3 * 86400, 1_073_741_824, "ok")
    return Notice(
        member=member,
        recipients=tuple(recipients),
        event=event,  # type: ignore[arg-type]
        scope="total",
        previous_state=previous,
        quotas=(maildir, total),
        resources=(
            NoticeResource("mail", "maildir", member, 1_073_741_824),
            NoticeResource("homes", "tree", member, used - 1_073_741_824),
        ),
        now=NOW,
        level=level,
        copy_to=tuple(copy_to),
    )


def body(received: SmtpServer, index: int = 0) -> str:
    text = received.messages[index].message.get_content()
    assert isinstance(text, str)
    return text


def test_a_warning_reaches_the_member_with_usage_limits_and_level(smtp_server: SmtpServer) -> None:
    notifier = Notifier(settings(smtp_server))
    notifier.send([notifier.render(notice())])

    [got] = smtp_server.messages
    assert got.mail_from == "quota@coop.example"
    assert got.rcpt_tos == ["alice@members.example"]
    message = got.message
    assert message["To"] == "alice@members.example"
    assert message["From"] == SENDER
    assert message["Subject"] == "Storage warning: your storage at 91% of the soft limit"
    assert message["Auto-Submitted"] == "auto-generated"
    assert message["X-Quotad-Level"] == "0.9"
    assert message["Date"].datetime == NOW
    assert message["Message-ID"].endswith("@coop.example>")
    assert message.get_content_charset() == "utf-8"
    text = body(smtp_server)
    assert "Hello alice," in text
    assert "has reached 90% of the soft limit" in text
    assert "Used:        9.2 GiB (9,876,543,210 bytes), 91% of the soft limit" in text
    assert "Soft limit:  10.0 GiB (10,737,418,240 bytes)" in text
    assert "Hard limit:  12.0 GiB (12,884,901,888 bytes)" in text
    # Usage by resource, largest first, with exact bytes.
    homes = text.index("homes   tree     alice  8.2 GiB  8,802,801,386")
    mail = text.index("mail    maildir  alice  1.0 GiB  1,073,741,824")
    assert homes < mail
    # Every scope's limits; the total first.
    assert "  total    9.2 GiB    10.0 GiB    12.0 GiB  ok" in text
    assert "  maildir  1.0 GiB     2.0 GiB     3.0 GiB  ok" in text
    assert "$" not in text
    assert "\n\n\n" not in text
    assert "\n-- \n" in text


def test_a_state_change_gives_the_grace_deadline_in_words(smtp_server: SmtpServer) -> None:
    notifier = Notifier(settings(smtp_server))
    soft = notice("state", state="soft", previous="ok", level=None, grace_ends_at=GRACE_ENDS)
    notifier.send([notifier.render(soft)])

    message = smtp_server.messages[0].message
    assert message["Subject"] == "Storage: your storage is over the soft limit"
    assert "X-Quotad-Level" not in message
    text = body(smtp_server)
    assert 'changed from "within your limits"\nto "over the soft limit, within' in text
    assert "Your grace period ends on Monday 7 December 2026 at 14:00 UTC, in 7 days." in text
    assert "Nothing is restricted yet." in text


def test_an_expired_grace_says_when_it_ended_and_that_writing_is_blocked(
    smtp_server: SmtpServer,
) -> None:
    notifier = Notifier(settings(smtp_server))
    ended = GRACE_ENDS - dt.timedelta(days=9, hours=1)  # Saturday 28 November, 13:00
    expired = notice(
        "state", state="grace_expired", previous="soft", level=None, grace_ends_at=ended
    )
    notifier.send([notifier.render(expired)])

    assert smtp_server.messages[0].message["Subject"] == (
        "Storage: your storage is blocked: grace period over"
    )
    text = body(smtp_server)
    assert "Your grace period ended on Saturday 28 November 2026 at 13:00 UTC, 2 days ago." in text
    assert "Writing new data is now blocked. You can still read and delete" in text


def test_over_hard_names_no_grace_deadline(smtp_server: SmtpServer) -> None:
    notifier = Notifier(settings(smtp_server))
    hard = notice("state", state="hard", previous="ok", level=None, used=13 * GIB)
    notifier.send([notifier.render(hard)])
    text = body(smtp_server)
    assert smtp_server.messages[0].message["Subject"] == (
        "Storage: your storage is blocked: over the hard limit"
    )
    assert "grace period ends" not in text
    assert "130% of the soft limit" in text


def test_all_clear_and_admins_in_copy(smtp_server: SmtpServer) -> None:
    notifier = Notifier(settings(smtp_server))
    clear = notice(
        "all_clear",
        state="ok",
        previous="hard",
        level=None,
        used=4 * GIB,
        copy_to=["root@coop.example", "Storage team <storage@coop.example>"],
    )
    notifier.send([notifier.render(clear)])

    [got] = smtp_server.messages
    assert got.rcpt_tos == ["alice@members.example", "root@coop.example", "storage@coop.example"]
    assert got.message["Cc"] == "root@coop.example, Storage team <storage@coop.example>"
    assert got.message["Subject"] == (
        "Storage: all clear, your storage is back under the soft limit"
    )
    assert "Used:        4.0 GiB (4,294,967,296 bytes), 40% of the soft limit" in body(smtp_server)


def test_a_batch_goes_over_one_connection(smtp_server: SmtpServer) -> None:
    notifier = Notifier(settings(smtp_server))
    members = ["alice", "bob", "carol"]
    messages = [
        notifier.render(notice(member=m, recipients=[f"{m}@members.example"])) for m in members
    ]
    connections = []
    real_connect = smtplib.SMTP.connect

    def counting_connect(self: smtplib.SMTP, *args: object, **kwargs: object) -> object:
        connections.append(args)
        return real_connect(self, *args, **kwargs)  # type: ignore[arg-type]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(smtplib.SMTP, "connect", counting_connect)
        notifier.send(messages)
    assert len(connections) == 1
    assert [r.rcpt_tos for r in smtp_server.messages] == [[f"{m}@members.example"] for m in members]
    assert [r.message["Message-ID"] for r in smtp_server.messages] == [
        m["Message-ID"] for m in messages
    ]


def test_a_refused_recipient_is_reported_and_the_rest_is_sent(smtp_server: SmtpServer) -> None:
    notifier = Notifier(settings(smtp_server))
    smtp_server.reject.add("gone@members.example")
    alice = notifier.render(notice())
    gone = notifier.render(notice(member="gone", recipients=["gone@members.example"]))
    bob_with_gone_admin = notifier.render(
        notice(
            "state",
            state="soft",
            level=None,
            member="bob",
            recipients=["bob@members.example"],
            copy_to=["gone@members.example"],
        )
    )
    with pytest.raises(NotifyError) as info:
        notifier.send([alice, gone, bob_with_gone_admin])

    error = info.value
    # What the server accepted for anyone is on its way and must be recorded as sent.
    assert error.sent == (alice, bob_with_gone_admin)
    assert error.unsent == (gone,)
    assert error.refused == {
        bob_with_gone_admin["Message-ID"]: {"gone@members.example": "550 5.1.1 no such user here"}
    }
    text = str(error)
    assert "\n" not in text
    assert "1 of 3 messages not sent" in text
    assert f"{gone['Message-ID']}: every recipient refused" in text
    assert "gone@members.example: 550 5.1.1 no such user here" in text
    assert [r.rcpt_tos for r in smtp_server.messages] == [
        ["alice@members.example"],
        ["bob@members.example"],
    ]


def test_a_server_that_hangs_up_mid_batch_leaves_the_rest_unsent(
    smtp_server: SmtpServer,
) -> None:
    notifier = Notifier(settings(smtp_server))
    alice, bob, carol = (
        notifier.render(notice(member=m, recipients=[f"{m}@members.example"]))
        for m in ("alice", "bob", "carol")
    )
    smtp_server.hang_up_on.add("bob@members.example")
    with pytest.raises(NotifyError) as info:
        notifier.send([alice, bob, carol])
    assert info.value.sent == (alice,)
    assert info.value.unsent == (bob, carol)
    text = str(info.value)
    assert "2 of 3 messages not sent" in text
    assert f"{bob['Message-ID']}: 421 4.3.2 shutting down" in text
    assert f"connection failed at {carol['Message-ID']}" in text
    assert [r.rcpt_tos for r in smtp_server.messages] == [["alice@members.example"]]


def test_server_down_is_a_notify_error_with_nothing_sent() -> None:
    port = free_port()
    notifier = Notifier(
        SmtpSettings(host="127.0.0.1", port=port, sender=SENDER, timeout=5),
    )
    message = notifier.render(notice())
    with pytest.raises(NotifyError) as info:
        notifier.send([message])
    assert str(info.value) == f"cannot connect to 127.0.0.1:{port}: Connection refused"
    assert info.value.sent == ()
    assert info.value.unsent == (message,)


def test_nothing_to_send_opens_no_connection() -> None:
    Notifier(SmtpSettings(host="127.0.0.1", port=free_port())).send([])


def test_starttls_and_login(smtp_tls_server: SmtpServer, tmp_path: Path) -> None:
    assert smtp_tls_server.password is not None
    password_file = tmp_path / "smtp-password"
    password_file.write_text(smtp_tls_server.password + "\n")
    notifier = Notifier(
        settings(smtp_tls_server, starttls=True, username=USERNAME, password_file=password_file)
    )
    notifier.send([notifier.render(notice())])
    assert [r.rcpt_tos for r in smtp_tls_server.messages] == [["alice@members.example"]]


def test_a_wrong_password_is_one_line_without_the_password(
    smtp_tls_server: SmtpServer, tmp_path: Path
) -> None:
    password_file = tmp_path / "smtp-password"
    password_file.write_text("hunter2-wrong")
    notifier = Notifier(
        settings(smtp_tls_server, starttls=True, username=USERNAME, password_file=password_file)
    )
    message = notifier.render(notice())
    with pytest.raises(NotifyError) as info:
        notifier.send([message])
    text = str(info.value)
    assert text.startswith(
        f"SMTP at 127.0.0.1:{smtp_tls_server.port}: login as quotad refused: 535"
    )
    assert "hunter2" not in text
    assert "\n" not in text
    assert info.value.unsent == (message,)
    assert smtp_tls_server.messages == []


def test_without_starttls_a_server_that_requires_it_refuses(
    smtp_tls_server: SmtpServer,
) -> None:
    notifier = Notifier(settings(smtp_tls_server))
    with pytest.raises(NotifyError, match="530 Must issue a STARTTLS command first"):
        notifier.send([notifier.render(notice())])
    assert smtp_tls_server.messages == []


def test_starttls_against_a_server_without_it(smtp_server: SmtpServer) -> None:
    notifier = Notifier(settings(smtp_server, starttls=True))
    with pytest.raises(NotifyError, match="the server does not offer STARTTLS"):
        notifier.send([notifier.render(notice())])


def test_an_unreadable_password_file_names_the_file(
    smtp_server: SmtpServer, tmp_path: Path
) -> None:
    missing = tmp_path / "no-such-file"
    notifier = Notifier(settings(smtp_server, username=USERNAME, password_file=missing))
    with pytest.raises(NotifyError) as info:
        notifier.send([notifier.render(notice())])
    assert str(info.value) == f"cannot read smtp.password_file {missing}: No such file or directory"
    assert smtp_server.messages == []


def test_template_override(smtp_server: SmtpServer, tmp_path: Path) -> None:
    (tmp_path / "warning.txt").write_text(
        "Subject: [co-op] $member: $used_short of $soft_short ($percent)\n"
        "\n"
        "Dear $member, you use $used; costs $$0.\n"
        "${grace_deadline}Bye.\n",
        encoding="utf-8",
    )
    notifier = Notifier(settings(smtp_server), tmp_path)
    notifier.send(
        [
            notifier.render(notice()),
            notifier.render(notice("state", state="soft", level=None, grace_ends_at=GRACE_ENDS)),
        ]
    )
    warning, state = (r.message for r in smtp_server.messages)
    assert warning["Subject"] == "[co-op] alice: 9.2 GiB of 10.0 GiB (91%)"
    assert body(smtp_server, 0) == (
        "Dear alice, you use 9.2 GiB (9,876,543,210 bytes); costs $0.\nBye.\n"
    )
    # The templates the folder does not have are the shipped ones.
    assert state["Subject"] == "Storage: your storage is over the soft limit"


def test_non_ascii_template_text_is_utf8(smtp_server: SmtpServer, tmp_path: Path) -> None:
    (tmp_path / "warning.txt").write_text(
        "Subject: Speicherplatz: $percent belegt\n\nGrüße, $member — dein Genossenschafts-Team\n",
        encoding="utf-8",
    )
    notifier = Notifier(settings(smtp_server), tmp_path)
    notifier.send([notifier.render(notice())])
    assert body(smtp_server) == "Grüße, alice — dein Genossenschafts-Team\n"


@pytest.mark.parametrize(
    ("name", "text", "problem"),
    [
        (
            "warning.txt",
            "Subject: hi\n\nYou use $usedd.\n",
            "line 3: unknown variable $usedd (did you mean $used?)",
        ),
        ("state.txt", "Subject: $membr is $state\n", "line 1: unknown variable $membr"),
        ("all_clear.txt", "Subject: ok\n\n${colour}\n", "line 3: unknown variable $colour"),
        ("warning.txt", "Subject: hi\n\nPay $5 now.\n", "line 3: '$5 now.' is not a $variable"),
        ("warning.txt", "Hello $member\n", 'line 1 must be "Subject: ..."'),
        ("warning.txt", "Subject: $resources\n", "line 1: $resources has several lines"),
        ("warnings.txt", "Subject: hi\n", "not a template name (use warning.txt, state.txt"),
    ],
)
def test_a_broken_template_is_a_config_error_naming_file_and_variable(
    tmp_path: Path, name: str, text: str, problem: str
) -> None:
    (tmp_path / name).write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        Notifier(SmtpSettings(), tmp_path)
    assert info.value.file == str(tmp_path / name)
    assert info.value.key == "enforcement.templates"
    assert problem in info.value.problem


def test_the_shipped_templates_use_known_variables_and_cover_the_essentials() -> None:
    folder = Path(__file__).parents[2] / "quotad" / "enforcers" / "templates"
    texts = {p.name: p.read_text(encoding="utf-8") for p in folder.glob("*.txt")}
    assert sorted(texts) == ["all_clear.txt", "state.txt", "warning.txt"]
    for text in texts.values():
        assert text.startswith("Subject: ")
    for name in ("warning.txt", "state.txt"):
        for variable in ("$used", "$soft", "$hard", "$percent", "$resources", "$grace_deadline"):
            assert variable in texts[name], (name, variable)
    # Loading them is the check for unknown variables.
    Notifier(SmtpSettings())
    assert set(VARIABLES) >= {"member", "used", "grace_deadline", "resources", "quotas"}


@pytest.mark.parametrize(
    ("n", "long", "short"),
    [
        (0, "0 bytes", "0 B"),
        (1, "1 byte", "1 B"),
        (1023, "1,023 bytes", "1023 B"),
        (1024, "1.0 KiB (1,024 bytes)", "1.0 KiB"),
        (9_876_543_210, "9.2 GiB (9,876,543,210 bytes)", "9.2 GiB"),
        (1024**2 - 1, "1.0 MiB (1,048,575 bytes)", "1.0 MiB"),
        (5 * 1024**4, "5.0 TiB (5,497,558,138,880 bytes)", "5.0 TiB"),
    ],
)
def test_sizes_in_words(n: int, long: str, short: str) -> None:
    assert size(n) == long
    assert short_size(n) == short


@pytest.mark.parametrize(
    ("seconds", "words"),
    [
        (7 * 86400, "7 days"),
        (6 * 86400 + 23 * 3600, "6 days"),
        (86400 + 3 * 3600, "1 day and 3 hours"),
        (86400, "1 day"),
        (2 * 3600 + 60, "2 hours and 1 minute"),
        (40 * 60 + 59, "40 minutes"),
        (59, "less than a minute"),
    ],
)
def test_durations_in_words(seconds: int, words: str) -> None:
    assert duration_words(dt.timedelta(seconds=seconds)) == words


def test_a_notice_without_its_scopes_quota_is_refused() -> None:
    with pytest.raises(ValueError, match="no quota for the scope 'maildir'"):
        Notice(
            member="alice",
            recipients=("alice@members.example",),
            event="all_clear",
            scope="maildir",
            previous_state="soft",
            quotas=(),
            resources=(),
            now=NOW,
        )


def test_an_address_with_a_line_break_is_refused() -> None:
    with pytest.raises(ValueError, match="not a mail address"):
        notice(recipients=["alice@members.example\nBcc: eve@evil.example"])


def test_a_fractional_level_is_shown_as_configured(smtp_server: SmtpServer, tmp_path: Path) -> None:
    (tmp_path / "warning.txt").write_text("Subject: $level\n\n$level_size\n", encoding="utf-8")
    notifier = Notifier(settings(smtp_server), tmp_path)
    notifier.send([notifier.render(notice(level=Decimal("0.875")))])
    assert smtp_server.messages[0].message["Subject"] == "87.5%"
    assert body(smtp_server) == "8.8 GiB (9,395,240,960 bytes)\n"


def test_the_docs_list_every_variable() -> None:
    docs = Path(__file__).parents[2] / "docs" / "enforcers" / "notify.md"
    listed = set(re.findall(r"^\| `\$(\w+)` \|", docs.read_text(encoding="utf-8"), re.MULTILINE))
    assert listed == set(VARIABLES)
