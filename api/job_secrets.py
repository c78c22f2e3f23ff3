"""A submitted job's secrets, before its run or schedule is created: references only.

A model config's `credential` must name a credential of the job's owner and becomes the
block name of that credential; inline secrets (`extra.api_key`, `extra.headers`,
secret-looking `extra` keys) move into one new Secret block owned by the job or schedule
(`contract.inline_secret_block`). What reaches Prefect as parameters is `JobSpec.secret_refs`
and configs without secrets.

Lifetime of an inline block: deleted with its job (JobGateway.delete), or with its schedule
(ScheduleGateway.delete; runs of a schedule share it, so deleting such a run keeps it),
replaced when a PATCH changes the schedule's inline secrets. `secured` deletes a block it
made when the create it guards fails.

Failures: JobError (400, naming `<field>.credential`) for a credential the owner does not
have; Prefect's errors propagate.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

from dspy_service.contract import credential_block, inline_secret_block
from dspy_service.errors import JobError
from dspy_service.schemas import SERVICE_SET_FIELDS, JobSpec, SecretRefs
from dspy_service.secret_store import SecretStore
from dspy_service.secrets import merge_model_secrets, split_model_secrets


def split_job_secrets(spec: JobSpec) -> tuple[JobSpec, dict[str, dict[str, Any]]]:
    """(the spec without inline secrets, {role: its inline secrets}) for roles that have some."""
    updates, secrets = {}, {}
    for role, config in spec.lm_configs().items():
        updates[role], role_secrets = split_model_secrets(config)
        if role_secrets:
            secrets[role] = role_secrets
    return spec.with_configs(updates), secrets


async def credential_blocks(spec: JobSpec, store: SecretStore) -> dict[str, str]:
    """{role: block of its credential}; 400 naming the field when the owner has no such credential."""
    blocks = {}
    for role, config in spec.lm_configs().items():
        if config.credential is None:
            continue
        block = credential_block(spec.username, config.credential)
        if await store.created(block) is None:
            field = f"{JobSpec.role_field(role)}.credential"
            raise JobError(
                f"{field}: you have no credential named {config.credential!r} (create it with POST /credentials)",
                field=field,
            )
        blocks[role] = block
    return blocks


@asynccontextmanager
async def secured(
    spec: JobSpec, store: SecretStore, current: tuple[str, dict[str, Any]] | None = None
) -> AsyncIterator[JobSpec]:
    """The spec holding references only, for the block that creates the run or schedule.

    `current` is the (block, value) of inline secrets the schedule has now: kept when the
    new inline secrets are the same. A block made here is deleted if the block fails."""
    blocks = await credential_blocks(spec, store)
    stripped, inline = split_job_secrets(spec)
    made = None
    if not inline:
        inline_block = None
    elif current is not None and current[1] == inline:
        inline_block = current[0]
    else:
        inline_block = made = inline_secret_block(uuid.uuid4().hex)
        await store.store(made, inline)
    refs = SecretRefs(inline_block=inline_block, credential_blocks=blocks) if inline_block or blocks else None
    try:
        yield stripped.model_copy(update={"secret_refs": refs})
    except BaseException:
        if made is not None:
            await store.delete(made)
        raise


def _refs_of(parameters: Mapping[str, Any] | None) -> Mapping[str, Any]:
    job = (parameters or {}).get("job")
    refs = job.get("secret_refs") if isinstance(job, Mapping) else None
    return refs if isinstance(refs, Mapping) else {}


def inline_block_of(parameters: Mapping[str, Any] | None) -> str | None:
    """The inline Secret block a run's or schedule's parameters refer to."""
    block = _refs_of(parameters).get("inline_block")
    return block if isinstance(block, str) else None


def credential_blocks_of(parameters: Mapping[str, Any] | None) -> set[str]:
    """The credential blocks a run's or schedule's parameters refer to."""
    blocks = _refs_of(parameters).get("credential_blocks")
    return {b for b in blocks.values() if isinstance(b, str)} if isinstance(blocks, Mapping) else set()


async def restored_job(job: Mapping[str, Any], store: SecretStore) -> tuple[dict[str, Any], tuple[str, dict] | None]:
    """A stored job payload as its client would send it (inline secrets back in `extra`,
    no references), and its current (inline block, value), to merge a PATCH into. A
    payload that no longer validates is returned as it is, without references."""
    try:
        spec = JobSpec.model_validate(job)
    except ValueError:
        return {key: value for key, value in job.items() if key not in SERVICE_SET_FIELDS}, None
    block = spec.secret_refs.inline_block if spec.secret_refs else None
    inline = (await store.read(block) or {}) if block else {}
    configs = {role: merge_model_secrets(config, None, inline.get(role)) for role, config in spec.lm_configs().items()}
    restored = spec.with_configs(configs).wire()
    for key in SERVICE_SET_FIELDS:  # a request may not set them
        restored.pop(key, None)
    return restored, ((block, inline) if block else None)
