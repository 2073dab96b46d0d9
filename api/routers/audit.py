"""The audit log, newest first."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from api.deps import AdminDep, SessionDep, actor_of
from api.schemas.audit import AuditEntryOut
from api.schemas.common import errors
from quotad.audit.service import AuditService
from quotad.timeutil import format_time

router = APIRouter(tags=["audit"])


@router.get("/audit", responses=errors(401, 403, 422))
def audit(
    principal: AdminDep,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    subject: Annotated[str | None, Query(max_length=255, examples=["member:alice"])] = None,
) -> list[AuditEntryOut]:
    entries = AuditService(session, actor_of(principal)).recent(limit, subject)
    return [
        AuditEntryOut(
            id=e.id,
            at=format_time(e.at) or "",
            actor=e.actor,
            action=e.action,
            subject=e.subject,
            reason=e.reason,
            detail=e.detail,
        )
        for e in entries
    ]
