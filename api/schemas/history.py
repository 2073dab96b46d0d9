"""The shape of GET /me/usage/history (INTERFACE.md section 4)."""

from __future__ import annotations

from pydantic import BaseModel

from api.schemas.common import UtcTime


class Point(BaseModel):
    at: UtcTime
    bytes: int


class History(BaseModel):
    member: str
    points: list[Point]
