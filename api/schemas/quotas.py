"""Per-member quota overrides."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from api.schemas.common import Bytes


class QuotaIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    soft_bytes: Bytes = Field(examples=[10737418240])
    hard_bytes: Bytes = Field(examples=[12884901888])
    grace_seconds: Bytes | None = Field(
        default=None,
        description="left out or null: the scope's current grace, else 7 days",
        examples=[604800],
    )
    reason: str = Field(min_length=1, max_length=10_000, examples=["more room for the archive"])


class QuotaOut(BaseModel):
    member: str
    scope: str
    soft_bytes: int
    hard_bytes: int
    grace_seconds: int
