"""Where webhook facts live on Prefect (no store of our own):

- a user's signing secret: the Secret block `contract.webhook_secret_block(owner)`
  holding `{"secret": "whsec_..."}`, made on first use, replaced on rotation;
- a user's default notify_url: the Variable `contract.webhook_default_variable(owner)`;
- a job's delivery log: the Variable `contract.webhook_log_variable(job_id)`,
  `{"deliveries": [{event_id, event, url, delivered, attempts: [...]}]}`, written by the
  delivery flow only (a job's sandbox may not write Variables), deleted with the job.
  Prefect caps a Variable's value at 5000 characters: a log keeps the last
  `MAX_EVENTS` events and of each the first and the last attempts (`MAX_ATTEMPTS` in all,
  fewer when their errors are long), counting the ones it dropped.

How it fails: Prefect's transport and HTTP errors propagate; a missing block or Variable
reads as None (the secret is then made).
"""

from __future__ import annotations

import json
import secrets
from typing import TYPE_CHECKING, Any

from prefect.client.schemas.actions import VariableCreate, VariableUpdate
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

from dspy_service.contract import webhook_default_variable, webhook_log_variable, webhook_secret_block
from dspy_service.secret_store import SecretNameTaken, SecretStore

if TYPE_CHECKING:
    from prefect.client.orchestration import PrefectClient

MAX_EVENTS = 3
MAX_ATTEMPTS = 24
MAX_CHARS = 4500  # Prefect's limit is 5000 characters of JSON
WEBHOOK_TAG = "dspy-service-webhook"


def new_secret() -> str:
    return "whsec_" + secrets.token_urlsafe(32)


class WebhookStore:
    def __init__(self, client: PrefectClient):
        self.client = client
        self.secrets = SecretStore(client)

    # -- signing secrets --------------------------------------------------------------
    async def secret(self, owner: str) -> tuple[str, Any]:
        """(the owner's signing secret, when it was made); made on first use."""
        name = webhook_secret_block(owner)
        entry = await self.secrets.entry(name)
        if entry is None or not isinstance(entry[0].get("secret"), str):
            try:
                await self.secrets.store(name, {"secret": new_secret()})
            except SecretNameTaken:  # made meanwhile by another request or a delivery
                pass
            entry = await self.secrets.entry(name)
        assert entry is not None
        return entry[0]["secret"], entry[1]

    async def rotate_secret(self, owner: str) -> tuple[str, Any]:
        """A new signing secret; the old one stops signing at once."""
        name = webhook_secret_block(owner)
        await self.secrets.delete(name)
        return await self.secret(owner)

    # -- default notify_url -------------------------------------------------------------
    async def default_url(self, owner: str) -> str | None:
        variable = await self.client.read_variable_by_name(webhook_default_variable(owner))
        value = variable.value if variable is not None else None
        return value if isinstance(value, str) and value else None

    async def set_default_url(self, owner: str, url: str | None) -> None:
        name = webhook_default_variable(owner)
        if url is None:
            try:
                await self.client.delete_variable_by_name(name)
            except ObjectNotFound:
                pass
            return
        await self._put(name, url)

    # -- delivery logs --------------------------------------------------------------------
    async def log(self, job_id: str) -> list[dict[str, Any]]:
        variable = await self.client.read_variable_by_name(webhook_log_variable(job_id))
        value = variable.value if variable is not None else None
        deliveries = value.get("deliveries") if isinstance(value, dict) else None
        return deliveries if isinstance(deliveries, list) else []

    async def save_log(self, job_id: str, deliveries: list[dict[str, Any]]) -> None:
        await self._put(webhook_log_variable(job_id), {"deliveries": trimmed(deliveries)})

    async def delete_log(self, job_id: str) -> None:
        try:
            await self.client.delete_variable_by_name(webhook_log_variable(job_id))
        except ObjectNotFound:
            pass

    async def _put(self, name: str, value: Any) -> None:
        if await self.client.read_variable_by_name(name) is None:
            try:
                await self.client.create_variable(VariableCreate(name=name, value=value, tags=[WEBHOOK_TAG]))
                return
            except ObjectAlreadyExists:
                pass
        await self.client.update_variable(VariableUpdate(name=name, value=value))


def trimmed(deliveries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The last MAX_EVENTS events, each with its first and last attempts (MAX_ATTEMPTS)."""
    kept = []
    for delivery in deliveries[-MAX_EVENTS:]:
        attempts = list(delivery.get("attempts") or [])
        dropped = int(delivery.get("attempts_dropped") or 0)
        if len(attempts) > MAX_ATTEMPTS:
            head = MAX_ATTEMPTS // 4
            dropped += len(attempts) - MAX_ATTEMPTS
            attempts = attempts[:head] + attempts[len(attempts) - (MAX_ATTEMPTS - head) :]
        kept.append({**delivery, "attempts": attempts, "attempts_dropped": dropped})
    while len(json.dumps({"deliveries": kept})) > MAX_CHARS:
        if len(kept) > 1:
            kept = kept[1:]
            continue
        attempts = kept[0]["attempts"]
        if len(attempts) <= 2:
            break
        middle = len(attempts) // 4
        kept[0] = {**kept[0], "attempts": attempts[:middle] + attempts[middle + 1 :]}
        kept[0]["attempts_dropped"] += 1
    return kept
