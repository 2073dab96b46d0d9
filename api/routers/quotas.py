"""Per-member overrides of the default plan; every change audited."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, status

from api.deps import AdminDep, ContextDep, WriteSessionDep, actor_of
from api.schemas.common import errors
from api.schemas.quotas import QuotaIn, QuotaOut
from quotad.quotas.service import QuotaService

router = APIRouter(tags=["quotas"])

DEFAULT_RESET_REASON = "reset to the default plan"


@router.put("/members/{name}/quotas/{scope}", responses=errors(401, 403, 404, 413, 422))
def set_quota(
    *,
    name: str,
    scope: str,
    body: QuotaIn,
    principal: AdminDep,
    session: WriteSessionDep,
    context: ContextDep,
) -> QuotaOut:
    limit = QuotaService(session, context.settings, actor_of(principal)).set(
        name,
        scope,
        soft=body.soft_bytes,
        hard=body.hard_bytes,
        grace=body.grace_seconds,
        reason=body.reason,
    )
    return QuotaOut(
        member=name,
        scope=limit.scope,
        soft_bytes=limit.soft_bytes,
        hard_bytes=limit.hard_bytes,
        grace_seconds=limit.grace_seconds,
    )


@router.delete(
    "/members/{name}/quotas/{scope}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=errors(401, 403, 404, 422),
)
def reset_quota(
    *,
    name: str,
    scope: str,
    principal: AdminDep,
    session: WriteSessionDep,
    context: ContextDep,
    reason: Annotated[str, Query(min_length=1, max_length=10_000)] = DEFAULT_RESET_REASON,
) -> None:
    """Back to the default plan; 404 when the member has no override for the scope."""
    QuotaService(session, context.settings, actor_of(principal)).reset(name, scope, reason)
