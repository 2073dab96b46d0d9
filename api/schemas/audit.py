"""The audit log: who changed what, when, why."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from api.schemas.common import UtcTime


class AuditEntryOut(BaseModel):
    id: int
    at: UtcTime
    actor: str
    action: str
    subject: str
    reason: str | None
    detail: dict[str, Any] | None
