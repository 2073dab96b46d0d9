"""SQL for the audit log."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from quotad.audit.models import AuditEntry
from quotad.db import table_of


class AuditRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def add(self, entry: AuditEntry) -> None:
        self.session.add(entry)

    def add_rows(self, rows: Sequence[dict[str, Any]]) -> None:
        """Insert entries given as column dicts in one statement, without ORM objects.

        A first scan may register thousands of members; building an object
        per entry cost more than writing them (measured: 5,000 entries).
        """
        if rows:
            self.session.execute(insert(table_of(AuditEntry)), list(rows))

    def recent(self, limit: int = 100, subject: str | None = None) -> Sequence[AuditEntry]:
        query = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit)
        if subject is not None:
            query = query.where(AuditEntry.subject == subject)
        return self.session.scalars(query).all()
