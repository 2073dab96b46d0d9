"""POST /scans: a scan an agent measured on its own host (INTERFACE.md section 4)."""

from __future__ import annotations

import datetime as dt
import re
import uuid
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PlainValidator, WithJsonSchema

from api.schemas.common import MAX_INT64, TIME_SCHEMA, Bytes
from quotad.config import SOURCE_NAME_RE
from quotad.timeutil import parse_time

# Unpaired surrogates cannot be stored or sent as UTF-8, NUL not in PostgreSQL.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def _storable(value: str) -> str:
    if _UNSTORABLE.search(value):
        raise ValueError("contains a NUL character or an unpaired surrogate")
    return value


def _scan_time(value: Any) -> dt.datetime:
    # A full RFC 3339 time with its zone; a bare date is no scan's time.
    if not isinstance(value, str) or len(value.strip()) <= len("YYYY-MM-DD"):
        raise ValueError("expected an RFC 3339 time with a zone, e.g. 2026-11-26T03:00:12Z")
    return parse_time(value)


ScanTime = Annotated[dt.datetime, PlainValidator(_scan_time), WithJsonSchema(TIME_SCHEMA)]
Text = Annotated[str, Field(strict=True), AfterValidator(_storable)]
ResourceName = Annotated[Text, Field(min_length=1, max_length=255)]
ResourceKind = Annotated[str, Field(strict=True, min_length=1, max_length=64)]
MemberName = Annotated[Text, Field(max_length=64)]
ErrorText = Annotated[Text, Field(min_length=1, max_length=10_000)]
DetailValue = (
    Annotated[int, Field(strict=True, ge=-MAX_INT64, le=MAX_INT64)]
    | Annotated[Text, Field(max_length=1000)]
)


class MeasurementIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    member: MemberName | None = Field(
        default=None, description="who the source says owns it; null when it cannot tell"
    )
    kind: ResourceKind = Field(examples=["maildir"])
    name: ResourceName = Field(
        examples=["alice"],
        description="as the agent prints it: bytes that are not UTF-8 as \\xNN",
    )
    bytes: Bytes = Field(examples=[1073741824])
    files: Bytes = Field(examples=[40211])
    detail: dict[Annotated[Text, Field(min_length=1, max_length=100)], DetailValue] = Field(
        default_factory=dict, max_length=100
    )


class FailureIn(BaseModel):
    """A resource found but not measured; its earlier value stands."""

    model_config = ConfigDict(extra="forbid")

    member: MemberName | None = None
    kind: ResourceKind
    name: ResourceName
    error: ErrorText


class ScanIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    scan_id: uuid.UUID
    source: Annotated[str, Field(strict=True, pattern=SOURCE_NAME_RE.pattern)] = Field(
        examples=["mail"]
    )
    source_kind: ResourceKind | None = Field(
        default=None,
        description="left out: as configured on the server, else as recorded before, "
        "else the kind whose scanner yields the scan's resources",
        examples=["maildir"],
    )
    started_at: ScanTime
    finished_at: ScanTime
    measurements: list[MeasurementIn] = Field(default_factory=list)
    failures: list[FailureIn] = Field(default_factory=list)
    error: ErrorText | None = Field(
        default=None, description="the source failed as a whole: no measurements, no failures"
    )


class ScanOut(BaseModel):
    scan_id: uuid.UUID
    source: str
    status: Literal["complete", "partial", "failed"]
    measurements: int
    failures: int
    zeroed: int = Field(description="resources this complete scan no longer found")
    created: bool = Field(description="false when this very scan had been recorded before")
