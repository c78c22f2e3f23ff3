"""Secret blocks on a Prefect server: where provider secrets are kept (what they hold and
how a job resolves them: dspy_service/secrets.py, which imports no Prefect, so the job
supervisor starts without it).

Failures: a name in use raises SecretNameTaken; a block that is gone reads as None;
Prefect's transport and HTTP errors propagate.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import TYPE_CHECKING, Any

from prefect.blocks.system import Secret
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

from dspy_service.contract import SECRET_BLOCK_TYPE
from dspy_service.prefect_pages import read_in_pages

if TYPE_CHECKING:
    from prefect.client.orchestration import PrefectClient

class SecretNameTaken(ValueError):
    """A Secret block of that name exists already."""


class SecretStore:
    """Secret blocks on a Prefect server, through one client."""

    def __init__(self, client: PrefectClient):
        self.client = client

    async def store(self, name: str, value: dict[str, Any]) -> None:
        """Create the block; SecretNameTaken when the name is in use."""
        try:
            # A JSON string, not a dict: Prefect 3.9 obfuscates only string Secret values
            # in its API answers (a dict value reads back in plain text without include_secrets).
            await Secret(value=json.dumps(value))._save(name=name, overwrite=False, client=self.client)
        except (ObjectAlreadyExists, ValueError) as exc:
            if "already" not in str(exc) and not isinstance(exc, ObjectAlreadyExists):
                raise
            raise SecretNameTaken(f"a secret named {name!r} exists already") from None

    async def read(self, name: str) -> dict[str, Any] | None:
        """The block's value (None when there is no such block)."""
        entry = await self.entry(name)
        return entry[0] if entry else None

    async def entry(self, name: str) -> tuple[dict[str, Any], dt.datetime | None] | None:
        """(the block's value, when it was created), or None when there is no such block."""
        document = await self._document(name, include_secrets=True)
        if document is None:
            return None
        value = Secret._from_block_document(document).get()
        return (value if isinstance(value, dict) else {}), document.created

    async def created(self, name: str) -> dt.datetime | None:
        document = await self._document(name, include_secrets=False)
        return document.created if document else None

    async def delete(self, name: str) -> bool:
        """Delete the block; False when it was gone already."""
        document = await self._document(name, include_secrets=False)
        if document is None:
            return False
        try:
            await self.client.delete_block_document(document.id)
        except ObjectNotFound:
            return False
        return True

    async def names(self, prefix: str) -> list[str]:
        """Names of the Secret blocks starting with `prefix`, sorted."""

        async def read_page(limit: int, offset: int) -> list[str]:
            body = {
                "block_documents": {"name": {"like_": f"{prefix}%"}},
                "block_types": {"slug": {"any_": [SECRET_BLOCK_TYPE]}},
                "include_secrets": False,
                "limit": limit,
                "offset": offset,
            }
            response = await self.client.request("POST", "/block_documents/filter", json=body)
            return [document["name"] for document in response.json()]

        names = await read_in_pages(read_page, limit=None)
        return sorted(name for name in names if name.startswith(prefix))

    async def _document(self, name: str, *, include_secrets: bool):
        try:
            return await self.client.read_block_document_by_name(
                name, block_type_slug=SECRET_BLOCK_TYPE, include_secrets=include_secrets
            )
        except ObjectNotFound:
            return None


def read_secret_block(name: str) -> dict[str, Any] | None:
    """A Secret block's value through the job's Prefect client (None when it is gone)."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        try:
            document = client.read_block_document_by_name(name, block_type_slug=SECRET_BLOCK_TYPE, include_secrets=True)
        except ObjectNotFound:
            return None
    value = Secret._from_block_document(document).get()
    return value if isinstance(value, dict) else None
