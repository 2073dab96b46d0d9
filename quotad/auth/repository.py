"""SQL for API tokens."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import or_, select, text, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from quotad.auth.models import ApiToken
from quotad.members.models import Member


class TokenRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def get(self, token_id: int) -> tuple[ApiToken, str | None] | None:
        """The token and its member's name, if any."""
        row = self.session.execute(
            select(ApiToken, Member.name)
            .outerjoin(Member, Member.id == ApiToken.member_id)
            .where(ApiToken.id == token_id)
        ).one_or_none()
        return None if row is None else (row[0], row[1])

    def by_hash(self, secret_hash: str) -> tuple[ApiToken, Member | None] | None:
        """The token whose secret hashes to SECRET_HASH, and its member, if any."""
        row = self.session.execute(
            select(ApiToken, Member)
            .outerjoin(Member, Member.id == ApiToken.member_id)
            .where(ApiToken.secret_hash == secret_hash)
        ).one_or_none()
        return None if row is None else (row[0], row[1])

    def all(self) -> list[tuple[ApiToken, str | None]]:
        rows = self.session.execute(
            select(ApiToken, Member.name)
            .outerjoin(Member, Member.id == ApiToken.member_id)
            .order_by(ApiToken.id)
        )
        return [(token, name) for token, name in rows.tuples()]

    def add(self, token: ApiToken) -> ApiToken:
        self.session.add(token)
        self.session.flush()
        return token

    def touch(self, token_id: int, now: dt.datetime, before: dt.datetime) -> bool:
        """Set last_used_at to NOW unless it is already at or after BEFORE.

        Best effort: a busy SQLite ledger (a read transaction cannot always
        become a writer) skips the write, in a savepoint, rather than refuse
        a valid token. Returns whether the row was written.
        """
        statement = (
            update(ApiToken)
            .where(ApiToken.id == token_id)
            .where(or_(ApiToken.last_used_at.is_(None), ApiToken.last_used_at < before))
            .values(last_used_at=now)
            .execution_options(synchronize_session=False)
        )
        if self.session.get_bind().dialect.name == "postgresql":
            # A last use lost in a crash is harmless: not waiting for the WAL
            # flush keeps this write off the request's latency.
            self.session.execute(text("SET LOCAL synchronous_commit TO OFF"))
            result = self.session.execute(statement)
            return bool(getattr(result, "rowcount", 0))
        try:
            with self.session.begin_nested():
                result = self.session.execute(statement)
        except OperationalError:
            return False
        return bool(getattr(result, "rowcount", 0))
