"""Default budgets: the budget a user's jobs and schedules get when their body has no
`budget` (dspy_service/budget_defaults.py; applied at submit by api/default_budgets.py).

- `GET /users/me/budget`, `PUT /users/me/budget {"budget": {...} | null}`: the caller's own;
- `GET /users/{name}/budget`, `PUT /users/{name}/budget`: any user's, for admins only.

A default is not a ceiling: a body's own `budget` (or `null`) replaces it. Failures: a
limit that is not > 0, or an unknown key, is a 422 naming `budget.<field>`; a non-admin on
another user's default is a 403; an unknown user a 404 (with auth on).
"""

from __future__ import annotations

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, Field

from api.deps import GatewayDep
from api.identity import AdminUser, CurrentUser
from api.openapi import ErrorDetail
from dspy_service import users
from dspy_service.budget import Budget
from dspy_service.budget_defaults import default_budget, set_default_budget
from dspy_service.settings import get_settings

router = APIRouter(tags=["users"])
FOR_ADMINS = {
    403: {"model": ErrorDetail, "description": "The caller is not an admin"},
    404: {"model": ErrorDetail, "description": "No user with this name"},
}


class DefaultBudget(BaseModel):
    budget: Budget | None = Field(
        description="Limits for jobs and schedules created from now on without their own `budget`; null: none."
    )


def answer(username: str, budget: Budget | None) -> dict:
    return {"username": username, "budget": budget.model_dump(exclude_none=True) if budget else None}


@router.get("/users/me/budget")
async def get_my_budget(gateway: GatewayDep, caller: CurrentUser):
    """The caller's default budget (null: none)."""
    return answer(caller.username, await default_budget(gateway.client, caller.username))


@router.put("/users/me/budget")
async def set_my_budget(body: DefaultBudget, gateway: GatewayDep, caller: CurrentUser):
    """Set (or with null, remove) the caller's default budget."""
    return answer(caller.username, await set_default_budget(gateway.client, caller.username, body.budget))


async def known_user(gateway: GatewayDep, username: str) -> str:
    if get_settings().auth != "off" and await users.get_user(gateway.client, username) is None:
        raise HTTPException(status_code=404, detail=f"user {username!r} not found")
    return username


@router.get("/users/{username}/budget", responses=FOR_ADMINS)
async def get_user_budget(username: str, gateway: GatewayDep, _admin: AdminUser):
    """A user's default budget (null: none)."""
    await known_user(gateway, username)
    return answer(username, await default_budget(gateway.client, username))


@router.put("/users/{username}/budget", responses=FOR_ADMINS)
async def set_user_budget(username: str, body: DefaultBudget, gateway: GatewayDep, _admin: AdminUser):
    """Set (or with null, remove) a user's default budget."""
    await known_user(gateway, username)
    return answer(username, await set_default_budget(gateway.client, username, body.budget))
