"""Scans sent by agents on other hosts."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Response, status

from api.deps import ContextDep, WriteSessionDep, actor_of, require
from api.schemas.common import errors
from api.schemas.scans import ScanIn, ScanOut
from quotad.auth.service import Principal
from quotad.ingest import ingest
from scanners.base import Measurement, ResourceFailure

router = APIRouter(tags=["scans"])

ScannerDep = Annotated[Principal, Depends(require("scanner"))]


@router.post(
    "/scans",
    status_code=status.HTTP_201_CREATED,
    responses={
        200: {"model": ScanOut, "description": "this very scan was recorded before"},
        **errors(401, 403, 409, 413, 422),
    },
)
def post_scan(
    body: ScanIn,
    principal: ScannerDep,
    session: WriteSessionDep,
    context: ContextDep,
    response: Response,
) -> ScanOut:
    """Record a scan: 201 the first time, 200 with the same answer for a replay."""
    result = ingest(
        session,
        context.settings,
        scan_id=body.scan_id,
        source=body.source,
        declared_kind=body.source_kind,
        started_at=body.started_at,
        finished_at=body.finished_at,
        measurements=[
            Measurement(m.member, m.kind, m.name, m.bytes, m.files, m.detail)
            for m in body.measurements
        ],
        failures=[ResourceFailure(f.member, f.kind, f.name, f.error) for f in body.failures],
        error=body.error,
        actor=actor_of(principal),
        allowed_sources=principal.sources,
    )
    if not result.created:
        response.status_code = status.HTTP_200_OK
    return ScanOut(
        scan_id=result.scan_id,
        source=body.source,
        status=result.status,  # type: ignore[arg-type]
        measurements=result.measurements,
        failures=result.failures,
        zeroed=result.zeroed,
        created=result.created,
    )
