"""Statements, finalizing a period, and adjustments (INTERFACE.md sections 4 and 5).

Statements are sent as the service's canonical text, never re-serialized,
and each answer carries an ETag of exactly the bytes sent: a portal that
polls with If-None-Match gets a 304 until a scan or an adjustment changes a
draft, and a final statement's tag never changes.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Path, Query, Response, status

from api.deps import (
    AdminDep,
    ContextDep,
    MemberDep,
    SessionDep,
    StaffDep,
    WriteSessionDep,
    actor_of,
)
from api.schemas.billing import (
    PERIOD_PATTERN,
    AdjustmentIn,
    AdjustmentOut,
    FinalizeOut,
    StatementOut,
)
from api.schemas.common import errors
from quotad.auth.service import Principal
from quotad.billing.arithmetic import Period
from quotad.billing.export import statements_csv
from quotad.billing.service import BillingService, StatementDoc
from quotad.db import utcnow
from quotad.errors import Forbidden

router = APIRouter(tags=["billing"])

# Statements are per member and drafts change with every scan: a cache may
# keep one but must ask again each time (and a 304 makes asking cheap).
CACHE_CONTROL = "private, no-cache"
JSON = "application/json"
CSV = "text/csv; charset=utf-8"
# An entity-tag (RFC 9110 section 8.8.3), weak or strong, or "*".
ENTITY_TAG = re.compile(r'(?:W/)?"[^"]*"|\*')

# Published, not enforced here: Period.parse words the 422 the same for the
# API and the CLI.
PERIOD_SCHEMA = {"pattern": PERIOD_PATTERN, "examples": ["2026-10"]}
PeriodPath = Annotated[str, Path(description="a month, YYYY-MM", json_schema_extra=PERIOD_SCHEMA)]
PeriodQuery = Annotated[str, Query(description="a month, YYYY-MM", json_schema_extra=PERIOD_SCHEMA)]
CurrentPeriod = Annotated[
    str | None,
    Query(
        description="a month, YYYY-MM; default: the current one", json_schema_extra=PERIOD_SCHEMA
    ),
]
PeriodFilter = Annotated[
    str | None,
    Query(description="only those on this month's statement", json_schema_extra=PERIOD_SCHEMA),
]
IfNoneMatch = Annotated[
    str | None,
    Header(description="ETags of copies the client holds; a match answers 304 with no body"),
]

NOT_MODIFIED: dict[int | str, dict[str, Any]] = {
    304: {"description": "not modified: the copy whose ETag was sent is current"}
}


def _service(session: Any, context: ContextDep, principal: Principal) -> BillingService:
    return BillingService(session, context.settings.billing, actor_of(principal))


def etag_of(data: bytes) -> str:
    """The tag of a representation: its hash, shaped like StatementDoc.etag."""
    return '"' + hashlib.sha256(data).hexdigest()[:32] + '"'


def matches(if_none_match: str | None, etag: str) -> bool:
    """If-None-Match's weak comparison: W/ is ignored, and "*" matches any current copy."""
    if if_none_match is None:
        return False
    opaque = etag.removeprefix("W/")
    return any(
        tag == "*" or tag.removeprefix("W/") == opaque for tag in ENTITY_TAG.findall(if_none_match)
    )


def conditional(
    body: bytes,
    media_type: str,
    etag: str,
    if_none_match: str | None,
    headers: dict[str, str] | None = None,
) -> Response:
    """BODY with its ETag, or a 304 with no body when the client already holds it."""
    tagged = {"ETag": etag, "Cache-Control": CACHE_CONTROL}
    if matches(if_none_match, etag):
        return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers=tagged)
    return Response(body, media_type=media_type, headers={**tagged, **(headers or {})})


def _one(doc: StatementDoc, if_none_match: str | None) -> Response:
    return conditional(doc.text.encode(), JSON, doc.etag, if_none_match)


def _json_list(docs: Sequence[StatementDoc], if_none_match: str | None) -> Response:
    body = ("[" + ",".join(d.text for d in docs) + "]").encode()
    return conditional(body, JSON, etag_of(body), if_none_match)


def _csv_list(period: Period, docs: Sequence[StatementDoc], if_none_match: str | None) -> Response:
    body = statements_csv(d.body for d in docs).encode()
    disposition = f'attachment; filename="quotad-statements-{period}.csv"'
    return conditional(
        body, CSV, etag_of(body), if_none_match, {"Content-Disposition": disposition}
    )


@router.get(
    "/billing/statements",
    response_model=list[StatementOut],
    responses={
        200: {
            "description": "every member's statement: JSON, or CSV with format=csv",
            "content": {CSV: {"schema": {"type": "string"}}},
        },
        **NOT_MODIFIED,
        **errors(401, 403, 409, 422),
    },
)
def list_statements(
    *,
    principal: StaffDep,
    session: SessionDep,
    context: ContextDep,
    period: PeriodQuery,
    as_format: Annotated[Literal["json", "csv"], Query(alias="format")] = "json",
    if_none_match: IfNoneMatch = None,
) -> Response:
    """Every member's statement for a period: final ones as frozen, else drafts.

    A draft counts the last measurements as holding until the period's end.
    """
    month = Period.parse(period)
    docs = _service(session, context, principal).statements(month)
    if as_format == "csv":
        return _csv_list(month, docs, if_none_match)
    return _json_list(docs, if_none_match)


@router.get(
    "/billing/statements/{member}/{period}",
    response_model=StatementOut,
    responses={**NOT_MODIFIED, **errors(401, 403, 404, 409, 422)},
)
def get_statement(
    *,
    member: str,
    period: PeriodPath,
    principal: StaffDep,
    session: SessionDep,
    context: ContextDep,
    if_none_match: IfNoneMatch = None,
) -> Response:
    doc = _service(session, context, principal).statement(member, Period.parse(period))
    return _one(doc, if_none_match)


@router.get(
    "/me/charges",
    response_model=StatementOut,
    responses={**NOT_MODIFIED, **errors(401, 403, 404, 409, 422)},
)
def my_charges(
    principal: MemberDep,
    session: SessionDep,
    context: ContextDep,
    period: CurrentPeriod = None,
    if_none_match: IfNoneMatch = None,
) -> Response:
    """The caller's statement for a period, by default the current month's draft."""
    if principal.member is None:
        raise Forbidden("this token is bound to no member")
    month = Period.containing(utcnow()) if period is None else Period.parse(period)
    doc = _service(session, context, principal).statement(principal.member, month)
    return _one(doc, if_none_match)


@router.post(
    "/billing/periods/{period}/finalize",
    status_code=status.HTTP_201_CREATED,
    responses={
        200: {"model": FinalizeOut, "description": "the period was finalized before"},
        **errors(401, 403, 409, 422),
    },
)
def finalize(
    period: PeriodPath,
    principal: AdminDep,
    session: WriteSessionDep,
    context: ContextDep,
    response: Response,
) -> FinalizeOut:
    """Freeze a past period's statements: 201 the first time, 200 with the same answer after."""
    result = _service(session, context, principal).finalize(Period.parse(period))
    if not result.created:
        response.status_code = status.HTTP_200_OK
    return FinalizeOut(**result.as_json())


@router.post(
    "/billing/adjustments",
    status_code=status.HTTP_201_CREATED,
    responses=errors(401, 403, 404, 413, 422),
)
def add_adjustment(
    body: AdjustmentIn,
    principal: AdminDep,
    session: WriteSessionDep,
    context: ContextDep,
) -> AdjustmentOut:
    """A credit (negative) or debit, shown on the first open period from the one it corrects."""
    corrects = Period.parse(body.corrects) if body.corrects is not None else None
    row = _service(session, context, principal).adjust(
        body.member, body.amount, body.reason, corrects
    )
    return AdjustmentOut(**row)


@router.get("/billing/adjustments", responses=errors(401, 403, 404, 422))
def list_adjustments(
    principal: StaffDep,
    session: SessionDep,
    context: ContextDep,
    period: PeriodFilter = None,
    member: Annotated[str | None, Query(max_length=255)] = None,
) -> list[AdjustmentOut]:
    """Adjustments, oldest first; PERIOD is the statement they show on."""
    month = Period.parse(period) if period is not None else None
    rows = _service(session, context, principal).adjustments(month, member)
    return [AdjustmentOut(**row) for row in rows]
