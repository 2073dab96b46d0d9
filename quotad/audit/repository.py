"""SQL for the audit log."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from quotad.audit.models import AuditEntry


class AuditRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def add(self, entry: AuditEntry) -> None:
        self.session.add(entry)

    def add_many(self, entries: Sequence[AuditEntry]) -> None:
        self.session.add_all(entries)

    def recent(self, limit: int = 100, subject: str | None = None) -> Sequence[AuditEntry]:
        query = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit)
        if subject is not None:
            query = query.where(AuditEntry.subject == subject)
        return self.session.scalars(query).all()
