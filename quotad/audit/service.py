"""Recording who changed what, when and why."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy.orm import Session

from quotad.audit.models import AuditEntry
from quotad.audit.repository import AuditRepository
from quotad.db import utcnow


class AuditService:
    def __init__(self, session: Session, actor: str) -> None:
        self.repo = AuditRepository(session)
        self.actor = actor

    def record(
        self,
        action: str,
        subject: str,
        *,
        reason: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        self.repo.add(
            AuditEntry(
                at=utcnow(),
                actor=self.actor,
                action=action,
                subject=subject,
                reason=reason,
                detail=detail,
            )
        )

    def recent(self, limit: int = 100, subject: str | None = None) -> Sequence[AuditEntry]:
        return self.repo.recent(limit, subject)
