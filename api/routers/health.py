"""Liveness: the process answers and its ledger is reachable and migrated."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import text

from api.deps import ContextDep
from api.schemas.common import errors

router = APIRouter(tags=["health"])


@router.get("/healthz", responses=errors(503))
def healthz(context: ContextDep) -> dict[str, str]:
    context.ensure_ready()
    with context.engine.connect() as connection:
        connection.execute(text("SELECT 1"))
    return {"status": "ok"}
