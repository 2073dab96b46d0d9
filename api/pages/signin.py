"""Who is looking at a page, and the sign-in that lets them.

A page's caller is, in this order: the identity header from a trusted proxy
(production behind single sign-on), a bearer token (scripts), or the session
cookie that the token form sets. The cookie holds the API token itself,
HttpOnly and SameSite=Strict: revoking the token (`quotad token revoke`) ends
every session made with it, and the ledger keeps no second kind of secret.

Forms carry a double-submit CSRF token: a random value in an HttpOnly,
SameSite=Strict cookie that the form repeats in a hidden field. A cross-site
page can neither read the cookie nor make the browser send it, so it cannot
post a form that matches. Members' own sites may live on sibling subdomains,
which could plant cookies for the parent domain; so over HTTPS the cookies
are `__Host-` ones (only this host can set them), and a form whose browser
says it came from anywhere but this origin (Sec-Fetch-Site) is refused.
"""

from __future__ import annotations

import hmac
import secrets
import urllib.parse
from dataclasses import dataclass

from fastapi import Request, Response

from api.deps import AUTH_ACTOR, Context, credentials_of, peer_is_trusted
from quotad.auth.service import Principal, TokenService
from quotad.db import session_scope

SESSION_COOKIE = "quotad_session"
CSRF_COOKIE = "quotad_csrf"
CSRF_FIELD = "csrf"
# A working day: long enough for a visit, short enough that a browser left
# signed in on a shared machine forgets the token by the next day.
SESSION_SECONDS = 12 * 3600
# The sign-in form is one field; anything longer is not a form of ours.
MAX_FORM = 4096


@dataclass(frozen=True, slots=True)
class Caller:
    principal: Principal
    # How they proved it: "proxy", "bearer" or "cookie". Only cookie sessions
    # can sign out; a proxy's or a script's identity is not ours to end.
    via: str


class FormError(Exception):
    """A form that cannot be accepted; the sentence is shown on the page."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def caller(request: Request, context: Context) -> Caller | None:
    """The signed-in caller, or None when nobody is; Unauthorized for bad credentials."""
    principal = credentials_of(request, context)
    if principal is not None:
        return Caller(principal, "proxy" if principal.token_id is None else "bearer")
    kept = request.cookies.get(cookie_name(SESSION_COOKIE, secure=is_https(request, context)))
    if kept:
        return Caller(authenticate(context, kept), "cookie")
    return None


def authenticate(context: Context, token: str) -> Principal:
    # A write session, as for the API: authenticating notes the token's last use.
    with session_scope(context.engine, write=True) as session:
        return TokenService(session, AUTH_ACTOR).authenticate(token)


def is_https(request: Request, context: Context) -> bool:
    """Whether the browser reached us over HTTPS, directly or through a trusted proxy."""
    if request.url.scheme == "https":
        return True
    forwarded = request.headers.get("x-forwarded-proto", "")
    return forwarded.lower() == "https" and peer_is_trusted(request, context.settings)


def cookie_name(base: str, *, secure: bool) -> str:
    return f"__Host-{base}" if secure else base


def csrf_token(request: Request, *, secure: bool) -> str:
    """The browser's CSRF token, or a new one (set by `remember_csrf`)."""
    existing = request.cookies.get(cookie_name(CSRF_COOKIE, secure=secure), "")
    # Only a token we could have made is reused: a planted odd value is replaced.
    if len(existing) == 43 and existing.replace("-", "").replace("_", "").isalnum():  # noqa: PLR2004
        return existing
    return secrets.token_urlsafe(32)


def remember_csrf(response: Response, token: str, *, secure: bool) -> None:
    response.set_cookie(
        cookie_name(CSRF_COOKIE, secure=secure),
        token,
        httponly=True,
        samesite="strict",
        secure=secure,
        path="/",
    )


def start_session(response: Response, token: str, *, secure: bool) -> None:
    response.set_cookie(
        cookie_name(SESSION_COOKIE, secure=secure),
        token,
        max_age=SESSION_SECONDS,
        httponly=True,
        samesite="strict",
        secure=secure,
        path="/",
    )


def end_session(response: Response, *, secure: bool) -> None:
    response.delete_cookie(
        cookie_name(SESSION_COOKIE, secure=secure),
        path="/",
        httponly=True,
        samesite="strict",
        secure=secure,
    )


async def read_form(request: Request, *, secure: bool) -> dict[str, str]:
    """A urlencoded form posted by one of our pages, after the CSRF checks."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/x-www-form-urlencoded":
        raise FormError("this form must be sent as application/x-www-form-urlencoded", 415)
    if request.headers.get("sec-fetch-site", "same-origin") not in {"same-origin", "none"}:
        raise FormError("this form was sent from another site and was refused", 403)
    body = await request.body()
    if len(body) > MAX_FORM:
        raise FormError("this form is too large", 413)
    try:
        pairs = urllib.parse.parse_qsl(
            body.decode("ascii"), keep_blank_values=True, strict_parsing=False, max_num_fields=8
        )
    except (UnicodeDecodeError, ValueError) as exc:
        raise FormError("this form could not be read", 422) from exc
    form = dict(pairs)
    cookie = request.cookies.get(cookie_name(CSRF_COOKIE, secure=secure), "")
    sent = form.get(CSRF_FIELD, "")
    if not cookie or not hmac.compare_digest(cookie.encode(), sent.encode()):
        raise FormError(
            "this form has expired or was not sent by this site: reload the page and try again",
            403,
        )
    return form
