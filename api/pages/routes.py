"""The page routes: `/`, `/admin`, `/admin/members/{name}`, sign-in and sign-out."""

from __future__ import annotations

import importlib.resources
from collections.abc import Mapping
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from starlette.concurrency import run_in_threadpool

from api.deps import Context, ContextDep
from api.pages import signin
from api.pages.signin import Caller, FormError
from api.pages.views import SORTS, admin_page, member_page
from quotad.auth.service import Principal
from quotad.db import session_scope, utcnow
from quotad.errors import NotFound, Unauthorized

router = APIRouter(include_in_schema=False)

templates = Environment(
    loader=PackageLoader("api", "templates"),
    autoescape=select_autoescape(["html"]),
    undefined=StrictUndefined,  # a misspelt name fails a test instead of showing nothing
    trim_blocks=True,
    lstrip_blocks=True,
)

# Pages carry one member's figures: never cached, never framed, and nothing
# but our own stylesheet may load (no script at all).
PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self' data:; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
}
STAFF = ("admin", "portal")

Sort = Annotated[str, Query(max_length=16)]
Order = Annotated[str, Query(max_length=4)]


def render(
    request: Request,
    context: Context,
    template: str,
    values: Mapping[str, Any],
    *,
    status: int = 200,
    who: Caller | None = None,
) -> HTMLResponse:
    secure = signin.is_https(request, context)
    csrf = signin.csrf_token(request, secure=secure)
    body = templates.get_template(template).render(
        **values,
        who=who,
        csrf=csrf,
        csrf_field=signin.CSRF_FIELD,
    )
    response = HTMLResponse(body, status_code=status, headers=PAGE_HEADERS)
    signin.remember_csrf(response, csrf, secure=secure)
    return response


def error_page(
    request: Request, context: Context, status: int, title: str, detail: str, *, who: Caller | None
) -> HTMLResponse:
    values = {"title": title, "detail": detail, "status": status}
    return render(request, context, "error.html", values, status=status, who=who)


def to_signin(request: Request, context: Context, *, expired: bool = False) -> Response:
    response = RedirectResponse("/signin?expired=1" if expired else "/signin", status_code=303)
    if expired:
        # A revoked or outdated token: forget it, or every page would bounce.
        signin.end_session(response, secure=signin.is_https(request, context))
    response.headers.update(PAGE_HEADERS)
    return response


def identify(request: Request, context: Context) -> Caller | Response:
    """The caller, or the answer for someone not (or no longer) signed in."""
    try:
        who = signin.caller(request, context)
    except Unauthorized as exc:
        if (
            signin.cookie_name(signin.SESSION_COOKIE, secure=signin.is_https(request, context))
            in (request.cookies)
            and "authorization" not in request.headers
        ):
            return to_signin(request, context, expired=True)
        return error_page(request, context, 401, "Not signed in", str(exc), who=None)
    if who is None:
        return to_signin(request, context)
    return who


def member_of(principal: Principal) -> str | None:
    return principal.member if principal.role == "member" else None


@router.get("/", response_class=HTMLResponse)
def home(request: Request, context: ContextDep) -> Response:
    who = identify(request, context)
    if isinstance(who, Response):
        return who
    name = member_of(who.principal)
    if who.principal.role in STAFF:
        return RedirectResponse("/admin", status_code=303, headers=PAGE_HEADERS)
    if name is None:
        return error_page(
            request,
            context,
            403,
            "No page for this token",
            f"A {who.principal.role} token has no page of its own: sign in with a member's token.",
            who=who,
        )
    return member(request, context, who, name, own=True)


def member(request: Request, context: Context, who: Caller, name: str, *, own: bool) -> Response:
    with session_scope(context.engine) as session:
        try:
            values = member_page(session, context.settings, name, utcnow(), own=own)
        except NotFound as exc:
            return error_page(request, context, 404, "No such member", str(exc), who=who)
    return render(request, context, "member.html", values, who=who)


@router.get("/admin", response_class=HTMLResponse)
def admin(
    request: Request, context: ContextDep, sort: Sort = "state", order: Order = "desc"
) -> Response:
    who = identify(request, context)
    if isinstance(who, Response):
        return who
    if who.principal.role not in STAFF:
        return error_page(
            request, context, 403, "For administrators only", "This page is for admins.", who=who
        )
    if sort not in SORTS or order not in {"asc", "desc"}:
        detail = (
            f"The table sorts by {', '.join(SORTS)}, in asc or desc order; "
            f"not by {sort!r} in {order!r} order."
        )
        return error_page(request, context, 422, "Unknown sort order", detail, who=who)
    with session_scope(context.engine) as session:
        values = admin_page(session, context.settings, utcnow(), sort, order)
    return render(request, context, "admin.html", {**values, "sorts": list(SORTS)}, who=who)


@router.get("/admin/members/{name}", response_class=HTMLResponse)
def admin_member(name: str, request: Request, context: ContextDep) -> Response:
    who = identify(request, context)
    if isinstance(who, Response):
        return who
    if who.principal.role not in STAFF:
        # Checked before any lookup: a member learns nothing of another, not
        # even whether the name exists.
        if member_of(who.principal) == name:
            return RedirectResponse("/", status_code=303, headers=PAGE_HEADERS)
        return error_page(
            request, context, 403, "Not your page", "You may only see your own usage.", who=who
        )
    return member(request, context, who, name, own=False)


@router.get("/signin", response_class=HTMLResponse)
def signin_form(request: Request, context: ContextDep, expired: str | None = None) -> Response:
    note = "Your session has ended: sign in again." if expired else None
    return render(request, context, "signin.html", {"error": None, "note": note})


@router.post("/signin", response_class=HTMLResponse)
async def signin_post(request: Request, context: ContextDep) -> Response:
    # Templates render without the ledger, so only authenticating goes to a thread.
    secure = signin.is_https(request, context)
    try:
        form = await signin.read_form(request, secure=secure)
    except FormError as exc:
        return signin_again(request, context, str(exc), exc.status)
    token = form.get("token", "").strip()
    if not token:
        return signin_again(request, context, "Enter your API token.", 401)
    try:
        principal = await run_in_threadpool(signin.authenticate, context, token)
    except Unauthorized as exc:
        return signin_again(request, context, f"That token was not accepted: {exc}.", 401)
    if principal.role == "scanner":
        return signin_again(request, context, "A scanner token cannot sign in to the pages.", 403)
    response = RedirectResponse(
        "/admin" if principal.role in STAFF else "/", status_code=303, headers=PAGE_HEADERS
    )
    signin.start_session(response, token, secure=secure)
    return response


def signin_again(request: Request, context: Context, error: str, status: int) -> HTMLResponse:
    values = {"error": error, "note": None}
    return render(request, context, "signin.html", values, status=status)


@router.post("/signout", response_class=HTMLResponse)
async def signout(request: Request, context: ContextDep) -> Response:
    secure = signin.is_https(request, context)
    try:
        await signin.read_form(request, secure=secure)
    except FormError as exc:
        return error_page(request, context, exc.status, "Not signed out", str(exc), who=None)
    response = RedirectResponse("/signin", status_code=303, headers=PAGE_HEADERS)
    signin.end_session(response, secure=secure)
    return response


STYLESHEET = importlib.resources.files("api").joinpath("static/quotad.css").read_bytes()


@router.get("/static/quotad.css")
async def stylesheet() -> Response:
    # Read once at import: the file ships with the package and changes only
    # with a new release, when the process restarts anyway.
    return Response(
        STYLESHEET,
        media_type="text/css",
        headers={"Cache-Control": "public, max-age=3600", "X-Content-Type-Options": "nosniff"},
    )
