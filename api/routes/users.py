"""/users: token users, managed by an admin (the store is dspy_service/users.py).

A token is shown once, in the answer to POST /users or POST /users/{name}/rotate. A
revoke or rotation takes effect at once on this replica and within
`token_cache_seconds` on the others.
"""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel, Field

from api.deps import GatewayDep
from api.identity import AdminUser, token_cache
from api.openapi import ErrorDetail
from api.routes import budgets
from dspy_service import users
from dspy_service.contract import USERNAME_PATTERN

router = APIRouter(tags=["users"])
router.include_router(budgets.router)  # /users/me/budget, /users/{name}/budget: users' default budgets
FORBIDDEN = {403: {"model": ErrorDetail, "description": "The caller is not an admin"}}
UNKNOWN = {404: {"model": ErrorDetail, "description": "No user with this name"}}
TAKEN = {409: {"model": ErrorDetail, "description": "The name is taken"}}


class NewUser(BaseModel):
    username: str = Field(pattern=USERNAME_PATTERN, description="lowercase letters, digits, '-' and '_'")
    admin: bool = False


@router.post("/users", status_code=201, responses={**FORBIDDEN, **TAKEN})
async def add_user(new: NewUser, gateway: GatewayDep, _admin: AdminUser):
    """Create a user; the answer holds their token, the only time it is shown."""
    try:
        token = await users.add_user(gateway.client, new.username, new.admin)
    except users.UserExists as exc:
        raise HTTPException(status_code=409, detail=str(exc)) from None
    return {"username": new.username, "admin": new.admin, "token": token}


@router.get("/users", responses=FORBIDDEN)
async def list_users(gateway: GatewayDep, _admin: AdminUser):
    items = [user.public() for user in await users.list_users(gateway.client)]
    return {"items": items, "total": len(items)}


@router.delete("/users/{username}", responses={**FORBIDDEN, **UNKNOWN})
async def revoke_user(username: str, request: Request, gateway: GatewayDep, _admin: AdminUser):
    """Delete the user; their token stops working. Their jobs and schedules stay."""
    try:
        await users.revoke_user(gateway.client, username)
    except users.UnknownUser as exc:
        raise HTTPException(status_code=404, detail=str(exc)) from None
    finally:
        token_cache(request).forget(username)
    return {"username": username, "deleted": True}


@router.post("/users/{username}/rotate", responses={**FORBIDDEN, **UNKNOWN})
async def rotate_token(username: str, request: Request, gateway: GatewayDep, _admin: AdminUser):
    """A new token for the user (shown this once); the old one stops working."""
    try:
        token = await users.rotate_token(gateway.client, username)
    except users.UnknownUser as exc:
        raise HTTPException(status_code=404, detail=str(exc)) from None
    finally:
        token_cache(request).forget(username)
    return {"username": username, "token": token}
