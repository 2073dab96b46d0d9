"""What routes depend on: the app's context, a session per request, the caller.

A request's session commits when the route returns and rolls back when it
raises, before the answer is sent, so a client never sees a success that was
not committed.
"""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, Request
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from quotad import migrate
from quotad.auth.service import Principal, TokenService
from quotad.config import Settings
from quotad.db import session_scope
from quotad.errors import Forbidden, Unauthorized

AUTH_ACTOR = "api"


@dataclass
class Context:
    """What one app holds: its settings and its engine."""

    settings: Settings
    engine: Engine
    _ready: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def ensure_ready(self) -> None:
        """Raise LedgerNotReady until the ledger is migrated; then stop asking."""
        if self._ready:
            return
        with self._lock:
            if not self._ready:
                migrate.require_current(self.engine)
                self._ready = True


# Dependencies that neither block nor touch the ledger are coroutines: a
# plain function would cost each request a trip through the thread pool.
async def get_context(request: Request) -> Context:
    context: Context = request.app.state.quotad
    return context


ContextDep = Annotated[Context, Depends(get_context)]


def _session(context: Context, *, write: bool) -> Iterator[Session]:
    context.ensure_ready()
    with session_scope(context.engine, write=write) as session:
        yield session


def read_session(context: ContextDep) -> Iterator[Session]:
    yield from _session(context, write=False)


def write_session(context: ContextDep) -> Iterator[Session]:
    yield from _session(context, write=True)


# scope="function": the commit happens before the answer goes out.
SessionDep = Annotated[Session, Depends(read_session, scope="function")]
WriteSessionDep = Annotated[Session, Depends(write_session, scope="function")]


def peer_is_trusted(request: Request, settings: Settings) -> bool:
    """Whether the TCP peer (never a forwarded-for header) is a trusted proxy."""
    if request.client is None or not settings.server.trusted_proxies:
        return False
    try:
        peer = ipaddress.ip_address(request.client.host)
    except ValueError:
        return False
    if isinstance(peer, ipaddress.IPv6Address) and peer.ipv4_mapped is not None:
        peer = peer.ipv4_mapped
    return any(peer in network for network in settings.server.trusted_proxies)


def get_principal(request: Request, context: ContextDep) -> Principal:
    """The caller, from a bearer token or, from a trusted proxy, the identity header."""
    principal = credentials_of(request, context)
    if principal is None:
        raise Unauthorized("credentials are required: send `Authorization: Bearer TOKEN`")
    return principal


def credentials_of(request: Request, context: Context) -> Principal | None:
    """The caller the request's headers name, None if they name nobody; Unauthorized if bad.

    The pages ask this too, before their own session cookie, so that both
    weigh a bearer token and the proxy's header alike.
    """
    context.ensure_ready()
    authorization = request.headers.get("authorization")
    if authorization is not None:
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("the Authorization header must be `Bearer TOKEN`")
        # A write session: authenticating notes the token's last use (once a
        # minute), and on SQLite a read that turns into a write can fail.
        with session_scope(context.engine, write=True) as session:
            return TokenService(session, AUTH_ACTOR).authenticate(token.strip())
    header = context.settings.server.identity_header
    identity = request.headers.get(header)
    if identity is not None and peer_is_trusted(request, context.settings):
        if not identity.strip():
            raise Unauthorized(f"the {header} header is empty")
        with session_scope(context.engine) as session:
            return TokenService(session, AUTH_ACTOR).member_principal(identity.strip())
    return None


def require(*roles: str) -> Callable[[Principal], Coroutine[Any, Any, Principal]]:
    allowed = ", ".join(roles)

    async def check(principal: Annotated[Principal, Depends(get_principal)]) -> Principal:
        if principal.role not in roles:
            raise Forbidden(f"the {principal.role} role may not do this (allowed: {allowed})")
        return principal

    return check


MemberDep = Annotated[Principal, Depends(require("member"))]
StaffDep = Annotated[Principal, Depends(require("admin", "portal"))]
AdminDep = Annotated[Principal, Depends(require("admin"))]
# Endpoints a member may call for itself only; the route checks which member.
ReaderDep = Annotated[Principal, Depends(require("member", "admin", "portal"))]


def actor_of(principal: Principal) -> str:
    """How the audit log names the caller: role, token and its label."""
    if principal.token_id is None:
        return f"api:{principal.role}:{principal.member} (via proxy)"
    who = f"api:{principal.role}:token {principal.token_id}"
    if principal.member:
        who += f" of {principal.member}"
    return f"{who} ({principal.label})" if principal.label else who
