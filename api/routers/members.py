"""The member registry."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Response, status

from api.deps import SessionDep, StaffDep, WriteSessionDep, actor_of
from api.schemas.common import errors
from api.schemas.members import MemberIn, MemberOut
from quotad.members.models import Member
from quotad.members.service import MemberService
from quotad.timeutil import format_time
from scanners.base import MEMBER_NAME_RE

# The rule for a member's name, published so a client knows it; checked by
# MemberService, which words the 422 the same for the API and the CLI.
MemberName = Annotated[
    str,
    Path(
        description="lower-case letters, digits, '_', '.' and '-', "
        "starting with a letter or '_', at most 64",
        json_schema_extra={"pattern": MEMBER_NAME_RE.pattern},
    ),
]

router = APIRouter(tags=["members"])


def member_out(member: Member) -> MemberOut:
    return MemberOut(
        name=member.name,
        email=member.email,
        joined_at=format_time(member.joined_at),
        left_at=format_time(member.left_at),
    )


@router.get("/members", responses=errors(401, 403))
def list_members(principal: StaffDep, session: SessionDep) -> list[MemberOut]:
    return [member_out(m) for m in MemberService(session, actor_of(principal)).list()]


@router.put(
    "/members/{name}",
    responses={
        201: {"model": MemberOut, "description": "created"},
        **errors(401, 403, 409, 413, 422),
    },
)
def put_member(
    name: MemberName,
    body: MemberIn,
    principal: StaffDep,
    session: WriteSessionDep,
    response: Response,
) -> MemberOut:
    """Create the member, or update the fields given; a field sent as null is cleared."""
    changes = body.model_dump(include=body.model_fields_set)
    member, created = MemberService(session, actor_of(principal)).put(name, changes)
    if created:
        response.status_code = status.HTTP_201_CREATED
    return member_out(member)
