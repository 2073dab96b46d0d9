"""SQL for enforcement actions and warning mail."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from quotad.db import table_of
from quotad.enforcement.models import EnforcementAction, Notification
from quotad.members.models import Member

RESTRICT = "restrict"
LIFT = "lift"
PUSH_LIMIT = "push_limit"
STARTED = "started"
DONE = "done"
FAILED = "failed"


class EnforcementRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def add_action(self, row: dict[str, Any]) -> None:
        self.session.execute(table_of(EnforcementAction).insert(), [row])

    def restricted(self) -> list[EnforcementAction]:
        """The newest restrict or lift row of every resource that is (or may be) restricted.

        A restrict in any status may have acted; a lift counts as done only
        when it says so.
        """
        newest = (
            select(func.max(EnforcementAction.id))
            .where(EnforcementAction.action.in_([RESTRICT, LIFT]))
            .group_by(EnforcementAction.source, EnforcementAction.kind, EnforcementAction.resource)
        )
        rows = self.session.scalars(
            select(EnforcementAction).where(EnforcementAction.id.in_(newest))
        ).all()
        return [r for r in rows if r.action == RESTRICT or r.status != DONE]

    def actions(
        self, member_id: int | None = None, limit: int = 100
    ) -> Sequence[EnforcementAction]:
        query = select(EnforcementAction).order_by(EnforcementAction.id.desc()).limit(limit)
        if member_id is not None:
            query = query.where(EnforcementAction.member_id == member_id)
        return self.session.scalars(query).all()

    def recent(self, limit: int) -> list[tuple[EnforcementAction, str | None]]:
        """The newest LIMIT actions, newest first, each with its member's name (if any)."""
        query = (
            select(EnforcementAction, Member.name)
            .outerjoin(Member, Member.id == EnforcementAction.member_id)
            .order_by(EnforcementAction.id.desc())
            .limit(limit)
        )
        return [(action, name) for action, name in self.session.execute(query)]

    def add_notifications(self, rows: Sequence[dict[str, Any]]) -> None:
        if rows:
            self.session.execute(table_of(Notification).insert(), list(rows))

    def last_notifications(self, statuses: Sequence[str]) -> Sequence[Notification]:
        """The newest mail per member, scope, event and level, among those with STATUSES."""
        newest = (
            select(func.max(Notification.id))
            .where(Notification.status.in_(list(statuses)))
            .group_by(
                Notification.member_id, Notification.scope, Notification.event, Notification.level
            )
        )
        return self.session.scalars(select(Notification).where(Notification.id.in_(newest))).all()
