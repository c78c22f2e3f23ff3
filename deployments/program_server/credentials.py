"""The trusted side's reads for loading a program version: its document from shared
storage and its model's credential from the owner's credential store.

`ProgramLoader(client)` is the pool's `load`: `read_document` (dspy_service/program_store.py:
the file must lie in the registry's storage and match the SHA-256 the API resolved), then
`CredentialReader.model_config` merges the owner's credential named by the document's
`model_config.credential` (the Prefect Secret block `contract.credential_block(owner,
name)`, read with the program server's Prefect access, dspy_service/secret_store.py) into
the config handed to the child. Secrets are never logged or returned.

How it fails: `MissingCredential` (the named credential is gone), `CorruptDocument` /
ValueError (no such or an altered document, a model config that does not validate);
Prefect's transport and HTTP errors propagate.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from deployments.program_server.pool import ProgramKey
from dspy_service.contract import credential_block
from dspy_service.program_store import VersionEntry, read_document
from dspy_service.schemas import ModelConfig
from dspy_service.secret_store import SecretStore
from dspy_service.secrets import merge_model_secrets

if TYPE_CHECKING:
    from prefect.client.orchestration import PrefectClient


class MissingCredential(Exception):
    """The program's model names a credential its owner no longer has."""


class CredentialReader:
    def __init__(self, client: PrefectClient):
        self.store = SecretStore(client)

    async def model_config(self, owner: str, public: dict[str, Any]) -> dict[str, Any]:
        """The document's public model config with the owner's credential merged in."""
        config = ModelConfig.model_validate(public)
        credential = None
        if config.credential:
            credential = await self.store.read(credential_block(owner, config.credential))
            if credential is None:
                raise MissingCredential(
                    f"the program's model uses credential {config.credential!r}, which its owner no longer has"
                )
        return merge_model_secrets(config, credential, None).model_dump(mode="json")


class ProgramLoader:
    """What the pool needs to start a child: (document, model config with secrets)."""

    def __init__(self, client: PrefectClient):
        self.credentials = CredentialReader(client)

    async def __call__(self, key: ProgramKey) -> tuple[dict[str, Any], dict[str, Any]]:
        entry = VersionEntry(key.name, key.version, "", "", key.document_url, key.document_sha256, {})
        document = read_document(entry)
        if document.get("owner") not in (None, key.owner):
            raise ValueError(f"the document of {key.label} belongs to another owner")
        config = await self.credentials.model_config(key.owner, document.get("model_config") or {})
        return document, config
