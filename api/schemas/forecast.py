"""The shape of GET /me/forecast."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from api.schemas.common import UtcTime


class LimitForecast(BaseModel):
    limit_bytes: int
    # Already at or over the limit.
    over: bool
    # When the trend meets the limit; null when it does not grow, is over, or
    # meets it only beyond ten years.
    reaches_at: UtcTime | None


class ScopeForecast(BaseModel):
    scope: str
    used_bytes: int
    trend: Literal["growing", "flat", "shrinking", "unknown"]
    growth_bytes_per_day: int | None
    points: int
    since: UtcTime | None
    soft: LimitForecast | None
    hard: LimitForecast | None
    summary: str


class Forecast(BaseModel):
    member: str
    at: UtcTime
    window_days: int
    forecasts: list[ScopeForecast]
