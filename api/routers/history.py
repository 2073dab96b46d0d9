"""A member's total usage over time, at whole hours or days."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query

from api.deps import MemberDep, ReaderDep, SessionDep, actor_of
from api.schemas.common import TimeIn, errors
from api.schemas.history import History
from quotad.db import utcnow
from quotad.errors import Forbidden
from quotad.quotas.history import usage_history
from quotad.timeutil import format_time

router = APIRouter(tags=["usage"])

Start = Annotated[TimeIn | None, Query(description="default: end - 48 h (hour) or 30 days (day)")]
End = Annotated[TimeIn | None, Query(description="default: now")]
Step = Annotated[Literal["hour", "day"], Query()]


def _history(session: Any, name: str, *, start: Any, end: Any, step: str, actor: str) -> Any:
    points = usage_history(
        session, name, start=start, end=end, step=step, now=utcnow(), actor=actor
    )
    return {"member": name, "points": [{"at": format_time(t), "bytes": b} for t, b in points]}


@router.get("/me/usage/history", response_model=History, responses=errors(401, 403, 404, 422))
def my_history(
    principal: MemberDep,
    session: SessionDep,
    *,
    start: Start = None,
    end: End = None,
    step: Step = "day",
) -> Any:
    if principal.member is None:
        raise Forbidden("this token is bound to no member")
    return _history(
        session, principal.member, start=start, end=end, step=step, actor=actor_of(principal)
    )


@router.get(
    "/members/{name}/usage/history",
    response_model=History,
    responses=errors(401, 403, 404, 422),
)
def member_history(
    name: str,
    principal: ReaderDep,
    session: SessionDep,
    *,
    start: Start = None,
    end: End = None,
    step: Step = "day",
) -> Any:
    if principal.role == "member" and principal.member != name:
        raise Forbidden("a member may only see its own usage")
    return _history(session, name, start=start, end=end, step=step, actor=actor_of(principal))
