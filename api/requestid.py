"""X-Request-ID on every answer, in every log line of its request, and one access line each.

A client's (or proxy's) id is kept if it is sane: 1 to 128 visible ASCII
characters, so it cannot forge a log line or smuggle a header. Anything else
is replaced by a fresh one. The access line is written here, inside the
request's log context, because uvicorn's own is written outside it.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable

from fastapi import FastAPI
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from quotad.logs import log_context

HEADER = "X-Request-ID"
_SANE = re.compile(r"[!-~]{1,128}")
# Probes poll these; their successful answers are logged at DEBUG only.
_PROBES = frozenset({"/healthz", "/metrics"})

access = logging.getLogger("quotad.access")


def request_id(scope: Scope) -> str:
    """The request's id: the one it brought if sane, else a new uuid4 in hex."""
    for key, value in scope.get("headers", ()):
        if key == b"x-request-id":
            given: str = value.decode("latin-1").strip()
            if _SANE.fullmatch(given):
                return given
            break
    return uuid.uuid4().hex


# Told of every answer: method, route template (None if none matched), status, seconds.
Observer = Callable[[str, str | None, int, float], None]


class RequestId:
    """Tags each HTTP request with an id, logs it once answered and tells OBSERVE (outermost).

    The one middleware that times requests: the access line and /metrics'
    counts come from the same measurement.
    """

    def __init__(self, app: ASGIApp, observe: Observer | None = None) -> None:
        self.app = app
        self.observe = observe

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = request_id(scope)
        started = time.perf_counter()
        status = 500  # what the server answers when the app raised before answering

        async def tagged(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                MutableHeaders(scope=message)[HEADER] = rid
            await send(message)

        with log_context(request_id=rid):
            try:
                await self.app(scope, receive, tagged)
            finally:
                seconds = time.perf_counter() - started
                self._log(scope, status, seconds)
                if self.observe is not None:
                    route = getattr(scope.get("route"), "path", None)
                    self.observe(scope["method"], route, status, seconds)

    @staticmethod
    def _log(scope: Scope, status: int, seconds: float) -> None:
        path = scope.get("path", "")
        route = getattr(scope.get("route"), "path", None)
        client = scope.get("client")
        duration_ms = round(seconds * 1000, 1)
        probe = path in _PROBES and status < 400  # noqa: PLR2004 - success or redirect
        access.log(
            logging.DEBUG if probe else logging.INFO,
            "%s %s %d %.1fms",
            scope.get("method", ""),
            path,
            status,
            duration_ms,
            extra={
                "method": scope.get("method", ""),
                "path": path,
                "route": route,
                "status": status,
                "duration_ms": duration_ms,
                "client": client[0] if client else None,
            },
        )


def install(app: FastAPI, observe: Observer | None = None) -> None:
    """Add the middleware; installed last, it runs outermost, so 413s and 500s get an id too."""
    app.add_middleware(RequestId, observe=observe)
