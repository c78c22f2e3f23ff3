"""/credentials: the caller's provider keys, stored as Prefect Secret blocks."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from api.credentials import CredentialCreate, Credentials
from api.deps import ScheduleGatewayDep, SecretStoreDep
from api.identity import CurrentUser

router = APIRouter(tags=["credentials"])


async def get_credentials(store: SecretStoreDep, schedules: ScheduleGatewayDep) -> Credentials:
    return Credentials(store, schedules)


CredentialsDep = Annotated[Credentials, Depends(get_credentials)]


@router.post("/credentials", status_code=201, responses={409: {"description": "you have a credential of that name"}})
async def create_credential(body: CredentialCreate, caller: CurrentUser, credentials: CredentialsDep):
    """Store a key (and optional headers); model configs use it with `"credential": name`.
    The answer shows the key's last 4 characters only."""
    return await credentials.create(caller.username, body)


@router.get("/credentials")
async def list_credentials(caller: CurrentUser, credentials: CredentialsDep):
    """Your credentials: names, header names and the last 4 characters of each key."""
    items = await credentials.list(caller.username)
    return {"items": items, "total": len(items)}


@router.delete(
    "/credentials/{name}",
    responses={404: {"description": "no such credential"}, 409: {"description": "a schedule uses it"}},
)
async def delete_credential(name: str, caller: CurrentUser, credentials: CredentialsDep):
    """Delete a credential; refused while one of your schedules uses it."""
    await credentials.delete(caller.username, name)
    return {"name": name, "deleted": True}
