"""The one mapping from errors to HTTP answers: `{"error": CODE, "detail": SENTENCE}`.

Domain errors map by class; FastAPI's validation errors become 422; Starlette's
own (unknown path, wrong method) keep their status in the same format; an
error nobody foresaw is logged and answered with a 500 that says nothing of
the internals.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError, IntegrityError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from quotad.errors import (
    Conflict,
    Forbidden,
    InvalidInput,
    NotFound,
    QuotadError,
    TooLarge,
    Unauthorized,
)
from quotad.migrate import LedgerNotReady

log = logging.getLogger(__name__)

STATUS: dict[type[QuotadError], int] = {
    Unauthorized: 401,
    Forbidden: 403,
    NotFound: 404,
    Conflict: 409,
    TooLarge: 413,
    InvalidInput: 422,
    LedgerNotReady: 503,
}

# Starlette raises these itself (routing, body parsing); same format, our codes.
HTTP_CODES = {
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid_input",
}

# RFC 6750: a 401 names the scheme the client should use.
AUTHENTICATE = {"WWW-Authenticate": 'Bearer realm="quotad"'}

MAX_DETAILS = 5


def error_response(
    status: int, code: str, detail: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    if status == 401:  # noqa: PLR2004 - the status that needs the header
        headers = {**AUTHENTICATE, **(headers or {})}
    return JSONResponse({"error": code, "detail": detail}, status_code=status, headers=headers)


def status_of(exc: QuotadError) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    # A domain error this table does not know yet: the caller's input, most likely.
    return 400


async def _quotad_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, QuotadError)
    return error_response(status_of(exc), exc.code, str(exc) or exc.code.replace("_", " "))


def _location(loc: tuple[Any, ...] | list[Any]) -> str:
    # ("body", "soft_bytes") -> "soft_bytes"; ("query", "limit") -> "limit (query)"
    parts = [str(p) for p in loc]
    if parts and parts[0] == "body":
        return ".".join(parts[1:]) or "body"
    if parts and parts[0] in {"query", "path", "header"}:
        return f"{'.'.join(parts[1:])} ({parts[0]})"
    return ".".join(parts)


def validation_detail(errors: Any) -> str:
    items = [f"{_location(e.get('loc', ()))}: {e.get('msg', 'invalid')}" for e in errors]
    extra = f" (and {len(items) - MAX_DETAILS} more)" if len(items) > MAX_DETAILS else ""
    return "; ".join(items[:MAX_DETAILS]) + extra or "invalid input"


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return error_response(422, "invalid_input", validation_detail(exc.errors()))


# FastAPI answers 400 to a body it cannot decode at all (bytes that are not UTF-8,
# nesting too deep), and raises it for nothing else.
UNPARSABLE_BODY = 400


async def _http_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == UNPARSABLE_BODY:
        # Input the contract calls invalid, like a body that is not JSON (422).
        return error_response(
            422, InvalidInput.code, "the request body cannot be read as JSON in UTF-8"
        )
    code = HTTP_CODES.get(exc.status_code, "error")
    detail = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
    if exc.status_code == 404 and detail == "Not Found":  # noqa: PLR2004 - the router's own
        detail = "no such endpoint; see /docs"
    return error_response(exc.status_code, code, detail, dict(exc.headers or {}))


async def _integrity_error(_request: Request, exc: Exception) -> JSONResponse:
    # Two requests raced to create the same row; the loser is told, not crashed.
    log.info("integrity error answered as 409: %s", exc)
    # Retry-After tells an agent this 409 passes (the other request's row is
    # there now), unlike a conflict in the content, which never will.
    return error_response(
        409,
        "conflict",
        "the change conflicts with another one; try again",
        {"Retry-After": "1"},
    )


async def _unstorable(_request: Request, exc: Exception) -> JSONResponse:
    # The database refused a value the checks let through (PostgreSQL takes no
    # NUL in text): the input's fault, so never a 500.
    log.info("data error answered as 422: %s", exc)
    return error_response(
        422, InvalidInput.code, "a value in the request cannot be stored (a NUL character?)"
    )


async def _ledger_unavailable(_request: Request, exc: Exception) -> JSONResponse:
    log.error("ledger unavailable: %s", exc)
    return error_response(503, "ledger_unavailable", "the ledger database is not answering")


class CatchAll:
    """Any exception that got this far: logged once, answered as an opaque 500."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception:
            log.exception("unhandled error in %s %s", scope.get("method"), scope.get("path"))
            if started:
                raise
            response = error_response(
                500, "internal_error", "an internal error occurred; it has been logged"
            )
            await response(scope, receive, send)


class BodyLimit:
    """Bodies over `[server] max_body` get a 413 in the error format.

    A declared Content-Length over the limit is refused before the app runs; a
    body that grows past it while streaming is cut off (the app sees the client
    go away) and whatever the app answers is replaced by the 413.
    """

    def __init__(self, app: ASGIApp, max_body: int) -> None:
        self.app = app
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        guard = _BodyGuard(self.max_body, scope, receive, send)
        declared = _content_length(scope)
        if declared is not None and declared > self.max_body:
            await guard.refuse()
            return
        try:
            await self.app(scope, guard.receive, guard.send)
        except Exception:
            if not guard.exceeded:
                raise
        if guard.exceeded:
            await guard.refuse()


class _BodyGuard:
    """One request's byte count, and the 413 sent at most once."""

    def __init__(self, limit: int, scope: Scope, receive: Receive, send: Send) -> None:
        self.limit = limit
        self.scope = scope
        self._receive = receive
        self._send = send
        self.seen = 0
        self.exceeded = False
        self.answered = False

    async def receive(self) -> Message:
        if self.exceeded:
            return {"type": "http.disconnect"}
        message = await self._receive()
        if message["type"] == "http.request":
            self.seen += len(message.get("body", b""))
            if self.seen > self.limit:
                self.exceeded = True
                return {"type": "http.disconnect"}
        return message

    async def send(self, message: Message) -> None:
        if self.exceeded:
            await self.refuse()
        else:
            await self._send(message)

    async def refuse(self) -> None:
        if self.answered:
            return
        self.answered = True
        response = error_response(
            413, TooLarge.code, f"the request body exceeds the limit of {self.limit} bytes"
        )
        await response(self.scope, self._receive, self._send)


def _content_length(scope: Scope) -> int | None:
    for key, value in scope.get("headers", ()):
        if key == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def install(app: FastAPI, max_body: int) -> None:
    app.add_exception_handler(QuotadError, _quotad_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(IntegrityError, _integrity_error)
    app.add_exception_handler(DataError, _unstorable)
    app.add_exception_handler(OperationalError, _ledger_unavailable)
    # The last added runs outermost: every answer, the 413 included, is caught.
    app.add_middleware(BodyLimit, max_body=max_body)
    app.add_middleware(CatchAll)
