"""API tokens: issuing, listing, revoking, and knowing who a caller is.

A token is `qd_` and 43 characters of `secrets.token_urlsafe(32)`: 256 random
bits, shown once when it is made. The ledger keeps only its SHA-256.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy.orm import Session

from quotad.audit.service import AuditService
from quotad.auth.models import ApiToken
from quotad.auth.repository import TokenRepository
from quotad.config import SOURCE_NAME_RE
from quotad.db import utcnow
from quotad.errors import Conflict, InvalidInput, NotFound, Unauthorized
from quotad.members.models import Member
from quotad.members.repository import MemberRepository
from quotad.timeutil import format_time

ROLES: tuple[str, ...] = ("member", "portal", "admin", "scanner")

TOKEN_PREFIX = "qd_"  # noqa: S105 - a public prefix that says what a string is, not a secret
TOKEN_BYTES = 32  # 256 bits
# token_urlsafe(32) is 32 bytes in unpadded base64url: always 43 characters.
TOKEN_RE = re.compile(r"qd_[A-Za-z0-9_-]{43}")
# last_used_at is written at most this often per token: a busy scanner or
# portal would otherwise turn every read request into a write.
TOUCH_INTERVAL = dt.timedelta(minutes=1)
MAX_LABEL = 255

# One message for an unknown and a revoked token, so that a caller cannot
# learn which tokens once existed.
REFUSED = "the token is not valid"


@dataclass(frozen=True, slots=True)
class Principal:
    role: str  # one of ROLES
    member: str | None  # the member's name, for role "member"
    token_id: int | None  # None when authenticated by the proxy's identity header
    sources: frozenset[str] | None  # scanner tokens: the sources it may send; None = any
    label: str | None = None


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """What `token list` and the API show: never the secret."""

    id: int
    role: str
    member: str | None
    sources: tuple[str, ...] | None
    label: str | None
    created_at: dt.datetime
    created_by: str
    last_used_at: dt.datetime | None
    revoked_at: dt.datetime | None
    revoked_by: str | None


def hash_token(token: str) -> str:
    """The SHA-256 of the whole token, in hex.

    A fast hash is right here: a token holds 256 random bits, so there is no
    dictionary to guess from and nothing for a slow password hash (bcrypt,
    argon2) to protect; it would only slow down every request.
    """
    return hashlib.sha256(token.encode("ascii")).hexdigest()


def _info(token: ApiToken, member: str | None) -> TokenInfo:
    return TokenInfo(
        id=token.id,
        role=token.role,
        member=member,
        sources=None if token.sources is None else tuple(token.sources),
        label=token.label,
        created_at=token.created_at,
        created_by=token.created_by,
        last_used_at=token.last_used_at,
        revoked_at=token.revoked_at,
        revoked_by=token.revoked_by,
    )


def _has_left(member: Member, now: dt.datetime) -> bool:
    return member.left_at is not None and member.left_at <= now


def check_sources(sources: Sequence[str]) -> tuple[str, ...]:
    """Source names, checked like the config's, sorted and each once.

    They need not be configured yet: an agent's token can be made before its
    source is added to the central config.
    """
    for name in sources:
        if not SOURCE_NAME_RE.fullmatch(name):
            raise InvalidInput(
                f"invalid source name {name!r}: use letters, digits, '.', '_' and '-' only"
            )
    return tuple(sorted(set(sources)))


def check_label(label: str | None) -> str | None:
    if label is None or not label.strip():
        return None
    label = label.strip()
    if len(label) > MAX_LABEL:
        raise InvalidInput(f"a label has at most {MAX_LABEL} characters")
    if not label.isprintable():
        raise InvalidInput("a label cannot hold control characters")
    return label


class TokenService:
    def __init__(self, session: Session, actor: str) -> None:
        self.repo = TokenRepository(session)
        self.members = MemberRepository(session)
        self.audit = AuditService(session, actor)
        self.actor = actor

    def create(
        self,
        *,
        role: str,
        member: str | None = None,
        sources: Sequence[str] = (),
        label: str | None = None,
    ) -> tuple[TokenInfo, str]:
        """The new token's info and the token itself, which is shown once and never stored."""
        if role not in ROLES:
            raise InvalidInput(f"unknown role {role!r}: use one of {', '.join(ROLES)}")
        if isinstance(sources, str):
            raise InvalidInput("sources must be a list of names, not one string")
        if sources and role != "scanner":
            raise InvalidInput("only scanner tokens are limited to sources")
        names = check_sources(sources)
        label = check_label(label)
        now = utcnow()
        member_id = None
        if role == "member":
            if member is None:
                raise InvalidInput("a member token needs the member's name")
            found = self.members.get(member)
            if found is None:
                raise NotFound(f"no member named {member!r}")
            if _has_left(found, now):
                raise Conflict(f"member {member!r} left on {format_time(found.left_at)}")
            member_id = found.id
        elif member is not None:
            raise InvalidInput(f"a {role} token is not bound to a member")
        secret = TOKEN_PREFIX + secrets.token_urlsafe(TOKEN_BYTES)
        token = self.repo.add(
            ApiToken(
                secret_hash=hash_token(secret),
                role=role,
                member_id=member_id,
                sources=list(names) if names else None,
                label=label,
                created_at=now,
                created_by=self.actor,
            )
        )
        self.audit.record(
            "token.create",
            f"token:{token.id}",
            detail={
                "role": role,
                "member": member,
                "sources": list(names) if names else None,
                "label": label,
            },
        )
        return _info(token, member), secret

    def list(self) -> list[TokenInfo]:
        """Every token ever made, revoked ones included, oldest first."""
        return [_info(token, member) for token, member in self.repo.all()]

    def get(self, token_id: int) -> TokenInfo:
        found = self.repo.get(token_id)
        if found is None:
            raise NotFound(f"no token with id {token_id}")
        return _info(*found)

    def revoke(self, token_id: int) -> TokenInfo:
        """Refuse the token from now on; its row stays. Revoking twice is a Conflict."""
        found = self.repo.get(token_id)
        if found is None:
            raise NotFound(f"no token with id {token_id}")
        token, member = found
        if token.revoked_at is not None:
            raise Conflict(
                f"token {token_id} was already revoked at {format_time(token.revoked_at)}"
            )
        token.revoked_at = utcnow()
        token.revoked_by = self.actor
        self.repo.session.flush()
        self.audit.record(
            "token.revoke",
            f"token:{token.id}",
            detail={
                "role": token.role,
                "member": member,
                "sources": token.sources,
                "label": token.label,
            },
        )
        return _info(token, member)

    def authenticate(self, token: str, *, now: dt.datetime | None = None) -> Principal:
        """The caller a bearer token stands for; Unauthorized if it stands for nobody.

        A malformed token is refused before the ledger is asked. Comparing in
        constant time is moot: the lookup is by the token's hash, and an
        attacker who cannot invert SHA-256 learns nothing from its timing.
        """
        if not TOKEN_RE.fullmatch(token):
            raise Unauthorized("the token is malformed: a quotad token is qd_ and 43 characters")
        when = now or utcnow()
        found = self.repo.by_hash(hash_token(token))
        if found is None:
            raise Unauthorized(REFUSED)
        row, member = found
        if row.revoked_at is not None and row.revoked_at <= when:
            raise Unauthorized(REFUSED)
        if member is not None and _has_left(member, when):
            raise Unauthorized(REFUSED)
        if row.last_used_at is None or row.last_used_at < when - TOUCH_INTERVAL:
            self.repo.touch(row.id, when, when - TOUCH_INTERVAL)
        return Principal(
            role=row.role,
            member=member.name if member is not None else None,
            token_id=row.id,
            sources=None if row.sources is None else frozenset(row.sources),
            label=row.label,
        )

    def member_principal(self, name: str, *, now: dt.datetime | None = None) -> Principal:
        """The member a trusted proxy names; Unauthorized if unknown or gone."""
        member = self.members.get(name)
        if member is None or _has_left(member, now or utcnow()):
            raise Unauthorized(f"{name!r} is not a current member")
        return Principal(role="member", member=member.name, token_id=None, sources=None)
