"""The HTTP API (INTERFACE.md section 4): `create_app(settings)`, nothing at import time."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from api import errors, metrics, requestid
from api.deps import Context
from api.pages import routes as pages
from api.routers import (
    audit,
    billing,
    forecast,
    health,
    history,
    members,
    quotas,
    scans,
    usage,
)
from api.schemas.common import errors as error_responses
from quotad.config import Settings
from quotad.db import make_engine
from quotad.scheduler import Scheduler


def create_app(settings: Settings, *, scheduler: bool = False) -> FastAPI:
    """An app on the ledger of SETTINGS; with SCHEDULER, running the scheduled jobs too.

    The engine is made here and connects lazily; until the ledger is migrated
    every endpoint answers 503 `ledger_not_ready`, /healthz included, so a
    `quotad db upgrade` run later needs no restart.
    """
    # Sync routes run on up to 40 worker threads. A pool smaller than that
    # closes every connection over its size on return, and a busy server then
    # opens a new database connection for nearly every request.
    engine = make_engine(settings.database_url, pool_size=20, max_overflow=20)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        # In the lifespan rather than around uvicorn.run: on SIGTERM uvicorn
        # shuts the app down and then re-raises the signal, so this is the
        # last point at which runs in progress can end and record themselves.
        jobs = Scheduler(engine, settings) if scheduler else None
        if jobs is not None:
            jobs.start()
        try:
            yield
        finally:
            if jobs is not None:
                await asyncio.to_thread(jobs.shutdown, wait=True)
            engine.dispose()

    app = FastAPI(
        lifespan=lifespan,
        title="quotad",
        summary="Quota accounting and disk-usage charging for a hosting co-operative",
        version="0.1.0",
        docs_url="/docs",
        redoc_url=None,
        # Every endpoint answers 503 while the ledger is not migrated or not
        # answering, so every one documents it.
        responses=error_responses(503),
    )
    app.state.quotad = Context(settings=settings, engine=engine)
    errors.install(app, settings.server.max_body)
    for module in (health, usage, history, forecast, members, quotas, audit, scans, billing):
        app.include_router(module.router)
    app.include_router(pages.router)
    requestid.install(app, observe=metrics.install(app).observe)

    return app
