"""SQL for quota overrides."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from quotad.db import table_of
from quotad.quotas.models import QuotaOverride, QuotaStateRow


class QuotaRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def add(self, override: QuotaOverride) -> None:
        self.session.add(override)
        self.session.flush()

    def latest(self, member_ids: Sequence[int] | None = None) -> Sequence[QuotaOverride]:
        """The newest override row per member and scope (a reset row included)."""
        newest = select(func.max(QuotaOverride.id)).group_by(
            QuotaOverride.member_id, QuotaOverride.scope
        )
        if member_ids is not None:
            # Inside the grouping: one member's lookup reads that member's
            # index entries, not every override ever set.
            newest = newest.where(QuotaOverride.member_id.in_(list(member_ids)))
        return self.session.scalars(select(QuotaOverride).where(QuotaOverride.id.in_(newest))).all()

    def history(self, member_id: int) -> Sequence[QuotaOverride]:
        return self.session.scalars(
            select(QuotaOverride)
            .where(QuotaOverride.member_id == member_id)
            .order_by(QuotaOverride.id)
        ).all()

    def latest_states(self, member_ids: Sequence[int] | None = None) -> Sequence[QuotaStateRow]:
        """The state in force per member and scope (the newest row of each)."""
        newest = select(func.max(QuotaStateRow.id)).group_by(
            QuotaStateRow.member_id, QuotaStateRow.scope
        )
        if member_ids is not None:
            newest = newest.where(QuotaStateRow.member_id.in_(list(member_ids)))
        return self.session.scalars(select(QuotaStateRow).where(QuotaStateRow.id.in_(newest))).all()

    def add_states(self, rows: Sequence[dict[str, object]]) -> None:
        if rows:
            self.session.execute(table_of(QuotaStateRow).insert(), list(rows))

    def state_history(self, member_id: int) -> Sequence[QuotaStateRow]:
        return self.session.scalars(
            select(QuotaStateRow)
            .where(QuotaStateRow.member_id == member_id)
            .order_by(QuotaStateRow.id)
        ).all()
