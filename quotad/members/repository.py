"""SQL for the member registry."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from quotad.db import table_of
from quotad.members.models import Member

# Members created in bulk (a first scan can find thousands) skip the ORM.
_MEMBERS = table_of(Member)


class MemberRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def get(self, name: str) -> Member | None:
        return self.session.scalars(select(Member).where(Member.name == name)).one_or_none()

    def all(self) -> Sequence[Member]:
        return self.session.scalars(select(Member).order_by(Member.name)).all()

    def ids_by_name(self) -> dict[str, int]:
        return {name: id_ for id_, name in self.session.execute(select(Member.id, Member.name))}

    def names_by_id(self, ids: Iterable[int]) -> dict[int, str]:
        wanted = list(set(ids))
        if not wanted:
            return {}
        rows = self.session.execute(select(Member.id, Member.name).where(Member.id.in_(wanted)))
        return dict(rows.tuples().all())

    def add(self, member: Member) -> Member:
        self.session.add(member)
        self.session.flush()
        return member

    def create_many(self, names: Sequence[str], now: dt.datetime) -> dict[str, int]:
        if not names:
            return {}
        rows = self.session.execute(
            insert(_MEMBERS).returning(_MEMBERS.c.id, _MEMBERS.c.name),
            [{"name": n, "created_at": now} for n in names],
        )
        return {name: id_ for id_, name in rows}
