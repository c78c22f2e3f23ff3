"""Credentials: an owner's named provider keys, each a Prefect Secret block.

A credential is {api_key, headers} stored in the block `contract.credential_block(owner,
name)`; model configs refer to it with `"credential": name` (api/job_secrets.py). Views
show its name, the header names and the key's last 4 characters (none for keys shorter
than MIN_KEY_FOR_LAST4), never more.

Failures: CredentialExists (409) for a name the owner uses already, CredentialNotFound
(404), CredentialInUse (409) on deleting one a schedule of the owner uses; Prefect's
errors propagate.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from api.job_secrets import credential_blocks_of
from api.schedule_gateway import ScheduleGateway
from dspy_service.contract import CREDENTIAL_BLOCK_PREFIX, CREDENTIAL_NAME_PATTERN, credential_block, owner_digest
from dspy_service.secret_store import SecretNameTaken, SecretStore

MIN_KEY_FOR_LAST4 = 8


class CredentialError(Exception):
    status_code = 400

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class CredentialExists(CredentialError):
    status_code = 409


class CredentialNotFound(CredentialError):
    status_code = 404


class CredentialInUse(CredentialError):
    status_code = 409


class CredentialCreate(BaseModel):
    """POST /credentials."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=CREDENTIAL_NAME_PATTERN, description="Lowercase letters, digits and dashes.")
    api_key: str = Field(min_length=1, max_length=10_000)
    headers: dict[str, str] = Field(default_factory=dict, description="Extra request headers, e.g. for a gateway.")


def credential_view(name: str, value: dict[str, Any], created: dt.datetime | None) -> dict[str, Any]:
    key = str(value.get("api_key") or "")
    return {
        "name": name,
        "api_key_last4": key[-4:] if len(key) >= MIN_KEY_FOR_LAST4 else None,
        "headers": sorted(value.get("headers") or {}),
        "created_at": created.isoformat() if created else None,
    }


class Credentials:
    """The credentials of one owner at a time."""

    def __init__(self, store: SecretStore, schedules: ScheduleGateway):
        self.store = store
        self.schedules = schedules

    async def create(self, owner: str, body: CredentialCreate) -> dict[str, Any]:
        block = credential_block(owner, body.name)
        value = {"api_key": body.api_key, "headers": body.headers}
        try:
            await self.store.store(block, value)
        except SecretNameTaken:
            raise CredentialExists(f"you have a credential named {body.name!r} already") from None
        return credential_view(body.name, value, await self.store.created(block))

    async def list(self, owner: str) -> list[dict[str, Any]]:
        prefix = f"{CREDENTIAL_BLOCK_PREFIX}{owner_digest(owner)}-"
        views = []
        for block in await self.store.names(prefix):
            entry = await self.store.entry(block)
            if entry is not None:  # deleted meanwhile
                views.append(credential_view(block.removeprefix(prefix), *entry))
        return views

    async def delete(self, owner: str, name: str) -> None:
        if not re.fullmatch(CREDENTIAL_NAME_PATTERN, name):  # no block can have that name
            raise CredentialNotFound(f"credential {name!r} not found")
        block = credential_block(owner, name)
        if await self.store.created(block) is None:
            raise CredentialNotFound(f"credential {name} not found")
        users = await self.schedules_using(block)
        if users:
            raise CredentialInUse(
                f"credential {name!r} is used by schedule(s) {', '.join(users)}; change or delete them first"
            )
        if not await self.store.delete(block):
            raise CredentialNotFound(f"credential {name} not found")

    async def schedules_using(self, block: str) -> list[str]:
        """Names (or ids) of the schedules whose stored job refers to `block`."""
        users = []
        for schedule in await self.schedules.list():
            if block in credential_blocks_of(schedule.parameters):
                users.append(schedule.slug or str(schedule.id))
        return users
