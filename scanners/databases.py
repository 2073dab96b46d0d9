"""What the database scanners (`postgres`, `mysql`) share: whose a database is, and options.

A database server knows nothing of members, so each scanner applies a rule
(the owning role, a name prefix, the account holding grants) and the
`members` table of exceptions, which wins over the rule. Whatever no rule
can attribute is recorded unattributed, with the reason in `detail`, never
dropped.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from scanners.base import DetailValue, OptionError, is_member_name
from scanners.options import Options

# Key in `detail` saying why a database has no member.
UNATTRIBUTED = "unattributed"


@dataclass(frozen=True, slots=True)
class Attribution:
    """The member a database is charged to, or None and why."""

    member: str | None
    reason: str | None = None

    def detail(self) -> dict[str, DetailValue]:
        return {UNATTRIBUTED: self.reason} if self.member is None and self.reason else {}


def member_from(reader: Options, choices: Iterable[str], default: str) -> str:
    """The `member_from` option, one of CHOICES."""
    allowed = tuple(choices)
    value = reader.string("member_from", default)
    if value not in allowed:
        listed = ", ".join(f'"{c}"' for c in allowed)
        raise OptionError("member_from", f"must be one of {listed}, got {value!r}")
    return value


def members_table(reader: Options) -> dict[str, str | None]:
    """The `members` exceptions: database name -> member, or None for "nobody"."""
    result: dict[str, str | None] = {}
    for database, member in reader.table("members").items():
        if not isinstance(member, str) or not (member == "" or is_member_name(member)):
            raise OptionError(
                f"members.{database}",
                f'must be a member name, or "" for nobody, got {member!r}',
            )
        # "" is an explicit "nobody": a shared or administrative database
        # that the rule would otherwise pin on whoever its name suggests.
        result[database] = member or None
    return result


def timeout(reader: Options) -> int:
    """The `timeout` option in whole seconds, more than 0."""
    seconds = reader.duration("timeout", "30s")
    if seconds <= 0:
        raise OptionError("timeout", "must be more than 0 seconds")
    return seconds


def by_exception(database: str, members: Mapping[str, str | None]) -> Attribution | None:
    """The attribution the `members` table gives DATABASE, or None if it does not list it."""
    if database not in members:
        return None
    member = members[database]
    return Attribution(member, None if member else "the members table says nobody")


def by_prefix(database: str) -> Attribution:
    """`member_dbname`: the part before the first "_" names the member."""
    prefix, underscore, _rest = database.partition("_")
    if not underscore:
        return Attribution(None, 'no "_" in the name, so no member prefix')
    if not is_member_name(prefix):
        return Attribution(None, f"the prefix {prefix!r} is not a member name")
    return Attribution(prefix)


def redact(text: str, secret: str | None) -> str:
    """TEXT with SECRET (a password) replaced, in case a driver ever echoes it."""
    if secret:
        return text.replace(secret, "***")
    return text


def one_line(text: str) -> str:
    """A driver's multi-line message on one line, for a scan's error column."""
    return " ".join(part.strip() for part in text.strip().splitlines() if part.strip())
