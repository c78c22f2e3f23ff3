"""Who is calling: the `CurrentUser` dependency every route but GET /health declares.

With auth on (the default) a request needs `Authorization: Bearer <token>` naming a user
of the store (dspy_service/users.py); a missing, malformed, unknown, revoked or rotated
token is answered 401 with `WWW-Authenticate: Bearer`. Each replica trusts a token it
has checked for `token_cache_seconds`; revokes and rotations made through this replica
drop its entries at once.

With auth off the caller is the open single user of the original service: an admin-like
`Caller` (the body's `username` names the owner). It is refused with 403 on a connection
that did not arrive on a loopback address (the API also refuses to start on one, see
api/main.py).

`Caller.owns` is the one ownership rule: a caller acts on an object when it is theirs,
or when they are an admin. Objects of other users are answered 404 (never 403), so that
an id does not reveal that it exists.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request

from dspy_service import users
from dspy_service.settings import get_settings, is_loopback_host

# The caller of an auth-off service when a body names nobody (the original default).
OPEN_USERNAME = "anonymous"
BEARER = {"WWW-Authenticate": "Bearer"}


@dataclass(frozen=True)
class Caller:
    username: str
    admin: bool = False

    def owns(self, owner: str | None) -> bool:
        return self.admin or (owner is not None and owner == self.username)


class TokenCache:
    """Tokens this replica has verified, by hash, until they expire."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self._entries: dict[str, tuple[Caller, float]] = {}

    def get(self, token: str) -> Caller | None:
        key = users.token_hash(token)
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[1] <= time.monotonic():
            del self._entries[key]
            return None
        return entry[0]

    def put(self, token: str, caller: Caller) -> None:
        if self.seconds <= 0:
            return
        now = time.monotonic()
        if len(self._entries) > 10_000:  # bounded: drop what has expired
            self._entries = {k: v for k, v in self._entries.items() if v[1] > now}
        self._entries[users.token_hash(token)] = (caller, now + self.seconds)

    def forget(self, username: str) -> None:
        """Drop every entry of `username` (after a revoke or a rotation)."""
        self._entries = {k: v for k, v in self._entries.items() if v[0].username != username}


def token_cache(request: Request) -> TokenCache:
    state = request.app.state
    if getattr(state, "tokens", None) is None:
        state.tokens = TokenCache(get_settings().token_cache_seconds)
    return state.tokens


def unauthorized(detail: str) -> HTTPException:
    return HTTPException(status_code=401, detail=detail, headers=BEARER)


def bearer_token(request: Request) -> str:
    header = request.headers.get("authorization")
    if not header:
        raise unauthorized("authentication required: send `Authorization: Bearer <token>`")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise unauthorized("the Authorization header must read `Bearer <token>`")
    return token.strip()


def open_caller(request: Request) -> Caller:
    """Auth off: the single open user, on loopback connections only."""
    server = request.scope.get("server")
    host = server[0] if server else None
    if not is_loopback_host(host):
        raise HTTPException(
            status_code=403,
            detail="this service runs without authentication (DSPY_SERVICE_AUTH=off) and answers on loopback only",
        )
    return Caller(OPEN_USERNAME, admin=True)


async def current_user(request: Request) -> Caller:
    """The authenticated caller (401 without a valid token)."""
    if get_settings().auth == "off":
        return open_caller(request)
    token = bearer_token(request)
    cache = token_cache(request)
    caller = cache.get(token)
    if caller is not None:
        return caller
    user = await users.verify_token(request.app.state.gateway.client, token)
    if user is None:
        raise unauthorized("invalid, revoked or rotated token")
    caller = Caller(user.username, user.admin)
    cache.put(token, caller)
    return caller


CurrentUser = Annotated[Caller, Depends(current_user)]


async def admin_user(caller: CurrentUser) -> Caller:
    if not caller.admin:
        raise HTTPException(status_code=403, detail="only an admin may manage users")
    return caller


AdminUser = Annotated[Caller, Depends(admin_user)]
