"""The member registry: who exists, since when, until when."""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from sqlalchemy.orm import Session

from quotad.audit.repository import AuditRepository
from quotad.audit.service import AuditService
from quotad.db import utcnow
from quotad.errors import Conflict, InvalidInput, NotFound
from quotad.members.models import Member
from quotad.members.repository import MemberRepository
from quotad.timeutil import format_time
from scanners.base import is_member_name

MEMBER_FIELDS = ("email", "joined_at", "left_at")


def _field_json(value: Any) -> Any:
    return format_time(value) if isinstance(value, dt.datetime) else value


def check_name(name: str) -> str:
    if not is_member_name(name):
        raise InvalidInput(
            f"invalid member name {name!r}: use lower-case letters, digits, "
            "'_', '.' and '-', starting with a letter or '_', at most 64"
        )
    return name


def check_email(email: str | None) -> str | None:
    if email is None:
        return None
    email = email.strip()
    if not email:
        return None
    local, at, domain = email.rpartition("@")
    too_long = len(email) > 254  # noqa: PLR2004 - RFC 5321's limit on a path
    spaces = any(c.isspace() for c in email) or not email.isprintable()
    if not at or not local or "." not in domain or spaces or too_long:
        raise InvalidInput(f"invalid email address {email!r}")
    return email


def check_period(joined_at: dt.datetime | None, left_at: dt.datetime | None) -> None:
    if joined_at is not None and left_at is not None and left_at < joined_at:
        raise InvalidInput("a member cannot leave before joining")


class MemberService:
    def __init__(self, session: Session, actor: str) -> None:
        self.repo = MemberRepository(session)
        self.audit = AuditService(session, actor)
        self.actor = actor

    def get(self, name: str) -> Member:
        member = self.repo.get(name)
        if member is None:
            raise NotFound(f"no member named {name!r}")
        return member

    def list(self) -> Sequence[Member]:
        return self.repo.all()

    def add(
        self,
        name: str,
        *,
        email: str | None = None,
        joined_at: dt.datetime | None = None,
        left_at: dt.datetime | None = None,
    ) -> Member:
        check_name(name)
        email = check_email(email)
        check_period(joined_at, left_at)
        existing = self.repo.get(name)
        if existing is not None:
            state = f" (left {format_time(existing.left_at)})" if existing.left_at else ""
            raise Conflict(f"member {name!r} already exists{state}")
        member = self.repo.add(
            Member(
                name=name, email=email, joined_at=joined_at, left_at=left_at, created_at=utcnow()
            )
        )
        self.audit.record(
            "member.add",
            f"member:{name}",
            detail={
                "email": email,
                "joined_at": format_time(joined_at),
                "left_at": format_time(left_at),
            },
        )
        return member

    def put(self, name: str, changes: Mapping[str, Any]) -> tuple[Member, bool]:
        """Create the member or update it; CHANGES holds only the fields to set.

        Keys are `email`, `joined_at` and `left_at`; None clears a field. The
        second value says whether the member was created. An update that
        changes nothing records nothing.
        """
        check_name(name)
        unknown = set(changes) - set(MEMBER_FIELDS)
        if unknown:
            raise InvalidInput(f"unknown member fields: {', '.join(sorted(unknown))}")
        existing = self.repo.get(name)
        if existing is None:
            member = self.add(
                name,
                email=changes.get("email"),
                joined_at=changes.get("joined_at"),
                left_at=changes.get("left_at"),
            )
            return member, True
        email = check_email(changes["email"]) if "email" in changes else existing.email
        joined_at = changes.get("joined_at", existing.joined_at)
        left_at = changes.get("left_at", existing.left_at)
        check_period(joined_at, left_at)
        after = {"email": email, "joined_at": joined_at, "left_at": left_at}
        before = {f: getattr(existing, f) for f in MEMBER_FIELDS}
        changed = {f: after[f] for f in MEMBER_FIELDS if after[f] != before[f]}
        if changed:
            for key, value in changed.items():
                setattr(existing, key, value)
            self.repo.session.flush()
            self.audit.record(
                "member.update",
                f"member:{name}",
                detail={
                    "before": {f: _field_json(before[f]) for f in changed},
                    "after": {f: _field_json(after[f]) for f in changed},
                },
            )
        return existing, False

    def remove(self, name: str, *, now: dt.datetime | None = None) -> Member:
        """Mark the member as gone from now on; every record of them stays."""
        member = self.get(name)
        if member.left_at is not None:
            raise Conflict(f"member {name!r} already left on {format_time(member.left_at)}")
        when = now or utcnow()
        if member.joined_at is not None and when < member.joined_at:
            raise InvalidInput(f"member {name!r} has not joined yet")
        member.left_at = when
        self.audit.record("member.remove", f"member:{name}", detail={"left_at": format_time(when)})
        return member

    def emails(self) -> dict[str, str]:
        """Current members' addresses (lower case) -> name.

        An address two members share maps to neither: it says nothing about who.
        """
        by_address: dict[str, list[str]] = {}
        for member in self.repo.all():
            if member.email and member.left_at is None:
                by_address.setdefault(member.email.strip().lower(), []).append(member.name)
        return {address: names[0] for address, names in by_address.items() if len(names) == 1}

    def resolve(
        self, names: Collection[str], *, auto_register: bool, source: str
    ) -> dict[str, int]:
        """Member ids for the names a scan attributes resources to.

        Unknown names are registered when auto_register is on, and otherwise
        left out so their resources are recorded as unattributed.
        """
        known = self.repo.ids_by_name()
        result = {n: known[n] for n in names if n in known}
        missing = sorted(n for n in names if n not in known)
        if missing and auto_register:
            now = utcnow()
            result.update(self.repo.create_many(missing, now))
            AuditRepository(self.repo.session).add_rows(
                [
                    {
                        "at": now,
                        "actor": self.actor,
                        "action": "member.auto_register",
                        "subject": f"member:{n}",
                        "reason": f"first seen by source {source!r}",
                        "detail": None,
                    }
                    for n in missing
                ]
            )
        return result
