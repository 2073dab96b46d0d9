"""Members as the API shows and takes them."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from api.schemas.common import TimeIn, UtcTime


class MemberOut(BaseModel):
    name: str
    email: str | None
    joined_at: UtcTime | None
    left_at: UtcTime | None


class MemberIn(BaseModel):
    """Each field optional: one left out keeps its value, null clears it."""

    model_config = ConfigDict(extra="forbid")

    email: str | None = Field(default=None, max_length=254, examples=["alice@example.org"])
    joined_at: TimeIn | None = None
    left_at: TimeIn | None = None
