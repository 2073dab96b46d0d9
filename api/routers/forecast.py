"""Where usage is heading: the last 30 days' trend against the limits."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from api.deps import ContextDep, MemberDep, ReaderDep, SessionDep
from api.schemas.common import errors
from api.schemas.forecast import Forecast
from quotad.db import utcnow
from quotad.errors import Forbidden
from quotad.quotas.forecast import forecast

router = APIRouter(tags=["usage"])


@router.get("/me/forecast", response_model=Forecast, responses=errors(401, 403, 404))
def my_forecast(principal: MemberDep, session: SessionDep, context: ContextDep) -> Any:
    if principal.member is None:
        raise Forbidden("this token is bound to no member")
    return forecast(session, context.settings, principal.member, utcnow())


@router.get("/members/{name}/forecast", response_model=Forecast, responses=errors(401, 403, 404))
def member_forecast(
    name: str, principal: ReaderDep, session: SessionDep, context: ContextDep
) -> Any:
    # Checked before any lookup, as for usage: a member learns nothing of another.
    if principal.role == "member" and principal.member != name:
        raise Forbidden("a member may only see its own usage")
    return forecast(session, context.settings, name, utcnow())
