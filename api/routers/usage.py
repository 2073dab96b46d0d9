"""Usage against limits: one's own, one member's, everyone's."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from api.deps import AdminDep, ContextDep, MemberDep, ReaderDep, SessionDep, actor_of
from api.schemas.common import errors
from api.schemas.usage import Usage
from quotad.errors import Forbidden
from quotad.quotas.service import QuotaService

router = APIRouter(tags=["usage"])


@router.get(
    "/me/usage",
    response_model=Usage,
    response_model_exclude_unset=True,
    responses=errors(401, 403, 404),
)
def my_usage(principal: MemberDep, session: SessionDep, context: ContextDep) -> Any:
    if principal.member is None:
        raise Forbidden("this token is bound to no member")
    return QuotaService(session, context.settings, actor_of(principal)).usage(principal.member)


@router.get(
    "/members/{name}/usage",
    response_model=Usage,
    response_model_exclude_unset=True,
    responses=errors(401, 403, 404),
)
def member_usage(name: str, principal: ReaderDep, session: SessionDep, context: ContextDep) -> Any:
    # Checked before any lookup: a member learns nothing of another, not even
    # whether the name exists.
    if principal.role == "member" and principal.member != name:
        raise Forbidden("a member may only see its own usage")
    return QuotaService(session, context.settings, actor_of(principal)).usage(name)


@router.get(
    "/report",
    response_model=list[Usage],
    response_model_exclude_unset=True,
    responses=errors(401, 403),
)
def report(principal: AdminDep, session: SessionDep, context: ContextDep) -> Any:
    return QuotaService(session, context.settings, actor_of(principal)).report()
