"""Types every schema shares: errors, times, sizes."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from pydantic import BaseModel, Field, PlainValidator, WithJsonSchema

from quotad.timeutil import parse_time

# The ledger stores sizes as signed 64-bit integers; a larger number is refused
# as input instead of overflowing the database.
MAX_INT64 = 2**63 - 1

TIME_SCHEMA = {"type": "string", "format": "date-time", "example": "2026-11-26T03:00:12Z"}

# Times on the way out are already RFC 3339 strings in UTC with a Z.
UtcTime = Annotated[str, WithJsonSchema(TIME_SCHEMA)]


def _time_in(value: Any) -> dt.datetime:
    if not isinstance(value, str):
        raise ValueError("expected an RFC 3339 time with a zone, or a date YYYY-MM-DD")
    return parse_time(value)


TimeIn = Annotated[
    dt.datetime,
    PlainValidator(_time_in),
    WithJsonSchema({"type": "string", "format": "date-time", "example": "2026-11-01T00:00:00Z"}),
]

Bytes = Annotated[int, Field(strict=True, ge=0, le=MAX_INT64)]


class ErrorOut(BaseModel):
    error: str = Field(examples=["not_found"])
    detail: str = Field(examples=["no member named 'carol'"])


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for the error statuses an endpoint can answer."""
    return {status: {"model": ErrorOut} for status in statuses}
