"""Warning mail: a notice about a member's quota, rendered from a template, sent over SMTP.

The enforcement service decides when a member hears from us (a `notify_at`
level crossed, a state change, the all clear) and describes it in a Notice;
this module only words it and delivers it. Templates are plain files an
admin can replace; they are checked when the Notifier is built, so that a
typo in a variable fails `quotad enforce` at once instead of mailing members
a `$usedd`.
"""

from __future__ import annotations

import datetime as dt
import difflib
import re
import smtplib
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_FLOOR, ROUND_HALF_EVEN, Decimal
from email.message import EmailMessage
from email.utils import format_datetime, getaddresses, make_msgid, parseaddr
from importlib import resources
from pathlib import Path
from string import Template
from typing import Literal

from quotad.config import SmtpSettings
from quotad.errors import ConfigError
from quotad.formatting import table
from quotad.timeutil import WEEKDAYS, day_words

Event = Literal["warning", "state", "all_clear"]
State = Literal["ok", "soft", "grace_expired", "hard"]

EVENTS: tuple[Event, ...] = ("warning", "state", "all_clear")
STATES: tuple[State, ...] = ("ok", "soft", "grace_expired", "hard")
TEMPLATE_FILES: Mapping[Event, str] = {
    "warning": "warning.txt",
    "state": "state.txt",
    "all_clear": "all_clear.txt",
}
TEMPLATES_KEY = "enforcement.templates"

# Words for a scope in a sentence: "your mail is at 92% of its soft limit".
SCOPE_WORDS: Mapping[str, str] = {
    "total": "your storage",
    "maildir": "your mail",
    "tree": "your files",
    "afs_volume": "your AFS volumes",
    "postgres_database": "your PostgreSQL databases",
    "mysql_database": "your MariaDB databases",
    "mailman_archive": "your mailing list archives",
}
STATE_WORDS: Mapping[State, str] = {
    "ok": "within your limits",
    "soft": "over the soft limit, within the grace period",
    "grace_expired": "over the soft limit, and the grace period is over",
    "hard": "over the hard limit",
}
STATE_TITLES: Mapping[State, str] = {
    "ok": "is within its limits",
    "soft": "is over the soft limit",
    "grace_expired": "is blocked: grace period over",
    "hard": "is blocked: over the hard limit",
}
STATE_ADVICE: Mapping[State, str] = {
    "ok": "Everything works as usual; nothing is restricted.",
    "soft": (
        "Nothing is restricted yet. Please bring your usage back under the soft\n"
        "limit before the grace period ends: after that, writing new data is\n"
        "blocked until you do."
    ),
    "grace_expired": (
        "Writing new data is now blocked. You can still read and delete: once your\n"
        "usage is back under the soft limit, the restrictions are lifted at the\n"
        "next check."
    ),
    "hard": (
        "Writing new data is now blocked. You can still read and delete: once your\n"
        "usage is back under the soft limit, the restrictions are lifted at the\n"
        "next check."
    ),
}

# Every $variable a template may use, with what it holds (docs/enforcers/notify.md).
VARIABLES: Mapping[str, str] = {
    "member": "the member's name",
    "event": "warning, state or all_clear",
    "scope": "total or a resource kind (maildir, tree, ...)",
    "scope_words": 'the scope in words ("your mail", "your storage" for total)',
    "level": 'the notify_at level crossed as a percentage ("90%"); empty but for warnings',
    "level_size": "the usage at that level, in human units with the exact bytes",
    "used": 'the scope\'s usage ("9.2 GiB (9,876,543,210 bytes)")',
    "used_short": 'the usage in human units only ("9.2 GiB")',
    "soft": "the soft limit, with the exact bytes",
    "soft_short": "the soft limit in human units only",
    "hard": "the hard limit, with the exact bytes",
    "hard_short": "the hard limit in human units only",
    "percent": 'the usage as a percentage of the soft limit, rounded down ("92%")',
    "headroom": "what is left before the hard limit (0 bytes when over it)",
    "grace": 'the grace period granted over the soft limit ("7 days")',
    "state": "ok, soft, grace_expired or hard",
    "state_words": 'the state in words ("over the soft limit, within the grace period")',
    "state_title": 'the state for a subject, after $scope_words ("is over the soft limit")',
    "previous_state": "the state before this change",
    "previous_state_words": "the state before this change, in words",
    "advice": "what the state means for the member, a few lines",
    "grace_ends": 'the grace deadline ("Monday 7 December 2026 at 14:00 UTC"); empty but in grace',
    "grace_deadline": "a sentence with the grace deadline and how far off it is, or empty",
    "date": 'the time of the notice ("Monday 30 November 2026 at 12:33 UTC")',
    "resources": "a table of the resources in the scope with their sizes, largest first",
    "quotas": "a table of every scope: usage, limits and state",
}
# Multi-line values would break the Subject header.
SUBJECT_FORBIDDEN = frozenset({"advice", "resources", "quotas"})

_SUBJECT_RE = re.compile(r"^Subject:[ \t]*(.*)$")
_UNITS = ("KiB", "MiB", "GiB", "TiB", "PiB", "EiB")


class NotifyError(Exception):
    """Mail could not be sent, or not all of it; the message is one line, without a password.

    `sent` holds the messages the server accepted for at least one recipient
    (they are on their way and must be recorded as sent, or a retry would
    mail those recipients twice); `unsent` the others, to retry next run.
    `refused` maps a sent message's Message-ID to the recipients the server
    refused and its answer for each.
    """

    def __init__(
        self,
        message: str,
        *,
        sent: Sequence[EmailMessage] = (),
        unsent: Sequence[EmailMessage] = (),
        refused: Mapping[str, Mapping[str, str]] | None = None,
    ) -> None:
        super().__init__(message)
        self.sent = tuple(sent)
        self.unsent = tuple(unsent)
        self.refused: Mapping[str, Mapping[str, str]] = refused or {}


@dataclass(frozen=True, slots=True)
class NoticeQuota:
    """One scope's limits, usage and state, as the notice describes them."""

    scope: str
    soft_bytes: int
    hard_bytes: int
    grace_seconds: int
    used_bytes: int
    state: State
    grace_ends_at: dt.datetime | None = None


@dataclass(frozen=True, slots=True)
class NoticeResource:
    source: str
    kind: str
    name: str
    bytes: int


@dataclass(frozen=True, slots=True)
class Notice:
    """Everything one mail says, decided by the enforcement service.

    `scope` is the scope the notice is about; `quotas` must include it (its
    state is the notice's state) and may list the member's other scopes too.
    `level` is the `notify_at` fraction crossed, for warnings. `copy_to`
    (admins) go in Cc.
    """

    member: str
    recipients: tuple[str, ...]
    event: Event
    scope: str
    previous_state: State
    quotas: tuple[NoticeQuota, ...]
    resources: tuple[NoticeResource, ...]
    now: dt.datetime
    level: Decimal | None = None
    copy_to: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if self.event not in EVENTS:
            raise ValueError(f"unknown event {self.event!r}")
        if self.previous_state not in STATES or self.state not in STATES:
            raise ValueError(f"unknown state {self.previous_state!r} -> {self.state!r}")
        if self.event == "warning" and self.level is None:
            raise ValueError("a warning needs the level it crossed")
        if self.now.tzinfo is None:
            raise ValueError("now must be an aware datetime")
        if not self.recipients and not self.copy_to:
            raise ValueError("a notice needs at least one recipient")
        for address in (*self.recipients, *self.copy_to):
            _check_address(address)

    @property
    def state(self) -> State:
        """The scope's state now (its quota's)."""
        return self.quota.state

    @property
    def quota(self) -> NoticeQuota:
        """The quota of the scope this notice is about."""
        for quota in self.quotas:
            if quota.scope == self.scope:
                return quota
        raise ValueError(f"no quota for the scope {self.scope!r}")


@dataclass(frozen=True, slots=True)
class _Template:
    origin: str
    subject: Template
    body: Template


class Notifier:
    """Renders notices from templates and sends them over one SMTP connection per batch."""

    def __init__(self, settings: SmtpSettings, templates: Path | None = None) -> None:
        self.settings = settings
        self._templates = load_templates(templates)
        self._sender_address = parseaddr(settings.sender)[1]

    def render(self, notice: Notice) -> EmailMessage:
        """The mail for NOTICE: headers from the settings and the notice, text from the template."""
        template = self._templates[notice.event]
        values = variables(notice)
        message = EmailMessage()
        message["From"] = self.settings.sender
        if notice.recipients:
            message["To"] = ", ".join(notice.recipients)
        if notice.copy_to:
            message["Cc"] = ", ".join(notice.copy_to)
        message["Subject"] = template.subject.substitute(values)
        message["Date"] = format_datetime(notice.now.astimezone(dt.UTC))
        message["Message-ID"] = make_msgid("quotad", self._sender_address.rpartition("@")[2])
        # RFC 3834: vacation responders and list servers must not answer it.
        message["Auto-Submitted"] = "auto-generated"
        message["X-Quotad-Member"] = notice.member
        message["X-Quotad-Event"] = notice.event
        message["X-Quotad-Scope"] = notice.scope
        if notice.level is not None:
            message["X-Quotad-Level"] = str(notice.level)
        body = _tidy(template.body.substitute(values))
        message.set_content(body, cte="quoted-printable")
        return message

    def send(self, messages: Sequence[EmailMessage]) -> None:
        """Send MESSAGES over one connection; raise NotifyError saying what did not go."""
        if not messages:
            return
        password = self._password()
        where = f"{self.settings.host}:{self.settings.port}"
        try:
            conn = smtplib.SMTP(
                self.settings.host, self.settings.port, timeout=self.settings.timeout
            )
        except (OSError, smtplib.SMTPException) as exc:
            problem = _describe(exc, password)
            raise NotifyError(f"cannot connect to {where}: {problem}", unsent=messages) from None
        try:
            try:
                self._open(conn, password)
            except (OSError, smtplib.SMTPException) as exc:
                problem = _describe(exc, password)
                raise NotifyError(f"SMTP at {where}: {problem}", unsent=messages) from None
            self._deliver(conn, messages, where, password)
        finally:
            _close(conn)

    def _open(self, conn: smtplib.SMTP, password: str | None) -> None:
        conn.ehlo()
        if self.settings.starttls:
            if not conn.has_extn("starttls"):
                raise smtplib.SMTPNotSupportedError("the server does not offer STARTTLS")
            conn.starttls(context=ssl.create_default_context())
            conn.ehlo()
        if self.settings.username is not None and password is not None:
            try:
                conn.login(self.settings.username, password)
            except smtplib.SMTPAuthenticationError as exc:
                answer = _describe(exc, password)
                raise smtplib.SMTPException(
                    f"login as {self.settings.username} refused: {answer}"
                ) from None

    def _deliver(
        self, conn: smtplib.SMTP, messages: Sequence[EmailMessage], where: str, password: str | None
    ) -> None:
        sent: list[EmailMessage] = []
        unsent: list[EmailMessage] = []
        refused: dict[str, dict[str, str]] = {}
        problems: list[str] = []
        for index, message in enumerate(messages):
            label = str(message.get("Message-ID", f"message {index + 1}"))
            try:
                answers = conn.send_message(
                    message, from_addr=self._sender_address, to_addrs=envelope_recipients(message)
                )
            except smtplib.SMTPRecipientsRefused as exc:
                unsent.append(message)
                problems.append(f"{label}: every recipient refused ({_refusals(exc.recipients)})")
            except (
                smtplib.SMTPSenderRefused,
                smtplib.SMTPDataError,
                smtplib.SMTPNotSupportedError,
            ) as exc:
                # Refused for this message alone (an answer to MAIL or DATA, or an
                # address that needs SMTPUTF8); the connection serves the rest.
                unsent.append(message)
                problems.append(f"{label}: {_describe(exc, password)}")
            except (OSError, smtplib.SMTPException) as exc:
                unsent.extend(messages[index:])
                problems.append(f"connection failed at {label}: {_describe(exc, password)}")
                break
            else:
                sent.append(message)
                if answers:
                    refused[label] = {a: _answer(*answer) for a, answer in answers.items()}
                    problems.append(f"{label}: recipients refused ({_refusals(answers)})")
        if problems:
            count = f"{len(unsent)} of {len(messages)} messages not sent"
            raise NotifyError(
                f"SMTP at {where}: {count}; " + "; ".join(problems),
                sent=sent,
                unsent=unsent,
                refused=refused,
            )

    def _password(self) -> str | None:
        path = self.settings.password_file
        if path is None:
            return None
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise NotifyError(f"cannot read smtp.password_file {path}: {reason}") from None
        # Editors and `echo` end the file with a newline that is not part of the password.
        password = text.removesuffix("\n").removesuffix("\r")
        if not password:
            raise NotifyError(f"smtp.password_file {path} is empty")
        return password


def envelope_recipients(message: EmailMessage) -> list[str]:
    """The bare addresses MESSAGE goes to: its To and then its Cc."""
    headers = message.get_all("To", []) + message.get_all("Cc", [])
    return [address for _, address in getaddresses(headers)]


def load_templates(folder: Path | None) -> dict[Event, _Template]:
    """The three templates, FOLDER's own where it has them, each checked."""
    if folder is not None:
        known = set(TEMPLATE_FILES.values())
        for path in sorted(folder.glob("*.txt")):
            if path.name not in known:
                raise ConfigError(
                    str(path),
                    TEMPLATES_KEY,
                    f"not a template name (use {', '.join(TEMPLATE_FILES.values())})",
                )
    loaded: dict[Event, _Template] = {}
    for event, name in TEMPLATE_FILES.items():
        own = folder / name if folder is not None else None
        if own is not None and own.is_file():
            origin = str(own)
            try:
                text = own.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
                raise ConfigError(origin, TEMPLATES_KEY, f"cannot read: {reason}") from None
        else:
            shipped = resources.files("quotad.enforcers") / "templates" / name
            origin = str(shipped)
            text = shipped.read_text(encoding="utf-8")
        loaded[event] = _parse_template(origin, text)
    return loaded


def _parse_template(origin: str, text: str) -> _Template:
    lines = text.replace("\r\n", "\n").split("\n")
    match = _SUBJECT_RE.match(lines[0])
    if match is None or not match.group(1).strip():
        raise ConfigError(origin, TEMPLATES_KEY, 'line 1 must be "Subject: ..." with the subject')
    subject = match.group(1).strip()
    rest = lines[1:]
    # One blank line parts the subject from the body, as in a mail.
    if rest and not rest[0].strip():
        rest = rest[1:]
    body = "\n".join(rest)
    _check_placeholders(origin, subject, first_line=1, in_subject=True)
    _check_placeholders(origin, body, first_line=len(lines) - len(rest) + 1, in_subject=False)
    return _Template(origin, Template(subject), Template(body))


def _check_placeholders(origin: str, text: str, *, first_line: int, in_subject: bool) -> None:
    """A ConfigError for the first placeholder that is not one of VARIABLES."""
    for match in Template.pattern.finditer(text):
        line = first_line + text.count("\n", 0, match.start())
        name = match.group("named") or match.group("braced")
        if match.group("invalid") is not None:
            snippet = text[match.start() : match.start() + 12].split("\n", maxsplit=1)[0]
            raise ConfigError(
                origin,
                TEMPLATES_KEY,
                f"line {line}: {snippet!r} is not a $variable (write $$ for a dollar sign)",
            )
        if name is None:
            continue
        if name not in VARIABLES:
            close = difflib.get_close_matches(name, list(VARIABLES), n=1)
            hint = f"did you mean ${close[0]}?" if close else f"known: ${', $'.join(VARIABLES)}"
            raise ConfigError(
                origin, TEMPLATES_KEY, f"line {line}: unknown variable ${name} ({hint})"
            )
        if in_subject and name in SUBJECT_FORBIDDEN:
            raise ConfigError(
                origin, TEMPLATES_KEY, f"line 1: ${name} has several lines; not in the subject"
            )


def variables(notice: Notice) -> dict[str, str]:
    """The values of every template variable for NOTICE."""
    quota = notice.quota
    level = ""
    level_size = ""
    if notice.level is not None:
        # The level as configured: 0.875 is 87.5%, not a rounded 87%.
        level = f"{(notice.level * 100).normalize():f}%"
        level_size = size(int((notice.level * quota.soft_bytes).to_integral_value(ROUND_FLOOR)))
    percent = (
        _percent(Decimal(quota.used_bytes * 100) / quota.soft_bytes) if quota.soft_bytes else "-"
    )
    grace_ends = ""
    deadline = ""
    if quota.grace_ends_at is not None and quota.state in ("soft", "grace_expired"):
        grace_ends = when(quota.grace_ends_at)
        deadline = grace_sentence(quota.grace_ends_at, notice.now)
    return {
        "member": notice.member,
        "event": notice.event,
        "scope": notice.scope,
        "scope_words": SCOPE_WORDS.get(notice.scope, f"your {notice.scope}"),
        "level": level,
        "level_size": level_size,
        "used": size(quota.used_bytes),
        "used_short": short_size(quota.used_bytes),
        "soft": size(quota.soft_bytes),
        "soft_short": short_size(quota.soft_bytes),
        "hard": size(quota.hard_bytes),
        "hard_short": short_size(quota.hard_bytes),
        "percent": percent,
        "headroom": size(max(0, quota.hard_bytes - quota.used_bytes)),
        "grace": duration_words(quota.grace_seconds),
        "state": notice.state,
        "state_words": STATE_WORDS[notice.state],
        "state_title": STATE_TITLES[notice.state],
        "previous_state": notice.previous_state,
        "previous_state_words": STATE_WORDS[notice.previous_state],
        "advice": STATE_ADVICE[notice.state],
        "grace_ends": grace_ends,
        "grace_deadline": deadline,
        "date": when(notice.now),
        "resources": _resource_table(notice),
        "quotas": _quota_table(notice),
    }


def _resource_table(notice: Notice) -> str:
    shown = [r for r in notice.resources if notice.scope in ("total", r.kind)]
    if not shown:
        return "  (no resources measured)"
    shown.sort(key=lambda r: (-r.bytes, r.source, r.name))
    rows = [[r.source, r.kind, r.name, short_size(r.bytes), f"{r.bytes:,}"] for r in shown]
    text = table(["source", "kind", "name", "size", "bytes"], rows, right=(3, 4))
    return _indent(text)


def _quota_table(notice: Notice) -> str:
    rows = [
        [
            q.scope,
            short_size(q.used_bytes),
            short_size(q.soft_bytes),
            short_size(q.hard_bytes),
            q.state,
        ]
        for q in sorted(notice.quotas, key=lambda q: (q.scope != "total", q.scope))
    ]
    text = table(["scope", "used", "soft limit", "hard limit", "state"], rows, right=(1, 2, 3))
    return _indent(text)


def _tidy(text: str) -> str:
    """TEXT without the trailing blanks and blank lines that empty variables leave."""
    # "-- " keeps its space: it is the signature separator mail readers look for.
    lines = [line if line == "-- " else line.rstrip() for line in text.split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip("\n") + "\n"


def _indent(text: str) -> str:
    return "\n".join(f"  {line}" if line else line for line in text.split("\n"))


def size(n: int) -> str:
    """A size in human units with the exact bytes: "9.2 GiB (9,876,543,210 bytes)"."""
    if n < 1024:  # noqa: PLR2004 - below one KiB the bytes are the human unit
        return "1 byte" if n == 1 else f"{n:,} bytes"
    return f"{short_size(n)} ({n:,} bytes)"


def short_size(n: int) -> str:
    """A size in binary units to one decimal, rounded to the nearest: "9.2 GiB"."""
    if n < 1024:  # noqa: PLR2004 - one KiB
        return f"{n} B"
    unit = 0
    value = Decimal(n) / 1024
    while True:
        rounded = value.quantize(Decimal("0.1"), ROUND_HALF_EVEN)
        # 1023.96 KiB rounds to 1024.0 KiB, which reads better as 1.0 MiB.
        if rounded < 1024 or unit == len(_UNITS) - 1:  # noqa: PLR2004 - the next unit
            return f"{rounded} {_UNITS[unit]}"
        value /= 1024
        unit += 1


def _percent(value: Decimal) -> str:
    # Rounded down: a member at 89.99% has not reached the 90% warning.
    return f"{value.to_integral_value(ROUND_FLOOR)}%"


def when(moment: dt.datetime) -> str:
    """A time in words, to the minute, in UTC: "Monday 7 December 2026 at 14:00 UTC"."""
    t = moment.astimezone(dt.UTC)
    return f"{WEEKDAYS[t.weekday()]} {day_words(t)} at {t:%H:%M} UTC"


def grace_sentence(ends: dt.datetime, now: dt.datetime) -> str:
    """The grace deadline as a sentence, with how far off it is."""
    left = ends - now
    if left > dt.timedelta(0):
        return f"Your grace period ends on {when(ends)}, in {duration_words(left)}."
    return f"Your grace period ended on {when(ends)}, {duration_words(-left)} ago."


def duration_words(span: dt.timedelta | int) -> str:
    """A span in the largest units that matter: "6 days", "1 day and 3 hours", "40 minutes"."""
    seconds = int(span.total_seconds()) if isinstance(span, dt.timedelta) else span
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes = rest // 60
    if days >= 2:  # noqa: PLR2004 - hours stop mattering after a couple of days
        return _plural(days, "day")
    if days == 1:
        return "1 day" + (f" and {_plural(hours, 'hour')}" if hours else "")
    if hours:
        return _plural(hours, "hour") + (f" and {_plural(minutes, 'minute')}" if minutes else "")
    if minutes:
        return _plural(minutes, "minute")
    return "less than a minute"


def _plural(count: int, unit: str) -> str:
    return f"{count} {unit}" if count == 1 else f"{count} {unit}s"


def _check_address(address: str) -> None:
    _, bare = parseaddr(address)
    if "@" not in bare or any(c in address for c in "\r\n"):
        raise ValueError(f"not a mail address: {address!r}")


def _refusals(answers: Mapping[str, tuple[int, bytes]]) -> str:
    return ", ".join(f"{address}: {_answer(*answer)}" for address, answer in answers.items())


def _answer(code: int, text: bytes | str) -> str:
    said = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
    return " ".join(f"{code} {said}".split())


def _describe(exc: BaseException, password: str | None) -> str:
    """One line about EXC; the password, should a server echo it, is masked."""
    if isinstance(exc, smtplib.SMTPResponseException):
        text = _answer(exc.smtp_code, exc.smtp_error)
    elif isinstance(exc, TimeoutError):
        text = "timed out"
    elif isinstance(exc, OSError) and exc.strerror:
        text = exc.strerror
    else:
        text = str(exc) or type(exc).__name__
    text = " ".join(text.split())
    return text.replace(password, "***") if password else text


def _close(conn: smtplib.SMTP) -> None:
    """Say goodbye if the server still listens; what was accepted is sent either way."""
    try:
        conn.quit()
    except (OSError, smtplib.SMTPException):
        conn.close()
