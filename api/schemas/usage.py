"""The shape of GET /me/usage (INTERFACE.md section 4)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from api.schemas.common import UtcTime


class Total(BaseModel):
    bytes: int
    files: int


class Resource(BaseModel):
    source: str
    kind: str
    name: str
    bytes: int
    files: int
    measured_at: UtcTime | None
    stale: bool
    detail: dict[str, int | str]
    # Only on a resource whose last measurement failed; it keeps its earlier value.
    error: str | None = None
    failed_at: UtcTime | None = None


class QuotaStatus(BaseModel):
    scope: str
    soft_bytes: int
    hard_bytes: int
    grace_seconds: int
    used_bytes: int
    state: Literal["ok", "soft", "grace_expired", "hard"]
    grace_ends_at: UtcTime | None


class Usage(BaseModel):
    member: str
    total: Total
    resources: list[Resource]
    quotas: list[QuotaStatus]
