"""Provider secrets: kept in Prefect Secret blocks, referenced from jobs by block name only.

Prefect encrypts block data at rest and shows string Secret values obfuscated unless a
reader asks for `include_secrets`; values are therefore stored as JSON strings. Two kinds
of blocks hold a job's secrets (names in dspy_service/contract.py):

- a credential of an owner (`credential_block`): {"api_key": str, "headers": {name: value}};
- the inline secrets of one job or schedule (`inline_secret_block`): {role: {extra key: value}},
  what `split_model_secrets` took out of each model config.

The blocks themselves are read and written in dspy_service/secret_store.py; this module
imports no Prefect, so the job supervisor can use it without Prefect's import cost.
`resolve_model_secrets` is the one place a job turns references back into secrets, merged
in this order: the config's own `extra`, then its credential, then its inline secrets
(headers merge per header name, an inline header wins).

Failures: a block that is gone at run time raises JobError naming the credential or the
job's inline secrets; Prefect's transport and HTTP errors propagate.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from dspy_service.contract import JOB_SECRETS_FILE_ENV
from dspy_service.errors import JobError
from dspy_service.schemas import PUBLIC_EXTRA_KEYS, JobSpec, ModelConfig

SECRET_WORDS = ("key", "secret", "token", "password", "authorization", "credential")
HEADER_KEYS = ("headers", "extra_headers")  # LiteLLM's request header arguments


def looks_secret(key: str, value: Any = None) -> bool:
    """An `extra` entry kept out of parameters and views: a secret-looking name, or a
    nested object holding one (e.g. `{"vertex": {"api_key": ...}}`). Allow-listed public
    settings never are."""
    if key in HEADER_KEYS:
        return True
    if key in PUBLIC_EXTRA_KEYS:
        return False
    lowered = key.lower()
    return any(word in lowered for word in SECRET_WORDS) or _holds_secret_key(value)


def _holds_secret_key(value: Any) -> bool:
    if isinstance(value, Mapping):
        return any(looks_secret(str(k), v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return any(_holds_secret_key(item) for item in value)
    return False


def split_model_secrets(config: ModelConfig) -> tuple[ModelConfig, dict[str, Any]]:
    """(the config without secrets, its secret `extra` entries). Secret-looking unknown
    top-level keys are dropped: they never reach an LM, and must not reach storage."""
    secrets = {key: value for key, value in config.extra.items() if looks_secret(key, value)}
    kept_extra = {key: value for key, value in config.extra.items() if key not in secrets}
    data = config.model_dump(exclude={"extra"})
    data = {k: v for k, v in data.items() if k in ModelConfig.model_fields or not looks_secret(k, v)}
    return ModelConfig.model_validate({**data, "extra": kept_extra}), secrets


def credential_extra(credential: Mapping[str, Any]) -> dict[str, Any]:
    """A credential's value as `extra` entries of a model config."""
    extra: dict[str, Any] = {"api_key": credential["api_key"]}
    if credential.get("headers"):
        extra["headers"] = dict(credential["headers"])
    return extra


def merge_model_secrets(
    config: ModelConfig, credential: Mapping[str, Any] | None, inline: Mapping[str, Any] | None
) -> ModelConfig:
    """`config` with its credential's entries, then its inline ones, merged into `extra`."""
    extra = dict(config.extra)
    for layer in (credential_extra(credential) if credential else {}, inline or {}):
        for key, value in layer.items():
            if key in HEADER_KEYS and isinstance(value, Mapping) and isinstance(extra.get(key), Mapping):
                extra[key] = {**extra[key], **value}
            else:
                extra[key] = value
    return config.model_copy(update={"extra": extra})


def secret_values(config: ModelConfig) -> list[str]:
    """The secret strings a config's `extra` holds (api key, header values, nested values),
    to keep out of artifacts."""
    return [value for key, entry in config.extra.items() if looks_secret(key, entry) for value in _leaves(entry)]


def _leaves(value: Any) -> list[str]:
    if isinstance(value, Mapping):
        return [leaf for item in value.values() for leaf in _leaves(item)]
    if isinstance(value, (list, tuple)):
        return [leaf for item in value for leaf in _leaves(item)]
    return [] if value in (None, "") else [str(value)]


# -- resolution: the one place a job reads its secrets ----------------------------------------

BlockReader = Callable[[str], "dict[str, Any] | None"]


def referenced_blocks(spec: JobSpec) -> list[str]:
    """The Secret blocks `spec`'s references name (what its engine may be handed)."""
    refs = spec.secret_refs
    if refs is None:
        return []
    names = [refs.inline_block] if refs.inline_block else []
    return names + sorted(set(refs.credential_blocks.values()) - set(names))


def handed_blocks(spec: JobSpec, read: BlockReader) -> dict[str, Any]:
    """The values of the blocks `spec` names (None for a deleted one), read by the trusted
    job supervisor to hand a sandboxed engine only its own job's secrets."""
    return {name: read(name) for name in referenced_blocks(spec)}


def job_block_reader(environ: Mapping[str, str]) -> BlockReader:
    """Where this engine reads its job's Secret blocks: the file its supervisor handed it in a
    sandbox (JOB_SECRETS_FILE_ENV), else the Prefect API."""
    path = environ.get(JOB_SECRETS_FILE_ENV)
    if not path:
        from dspy_service.secret_store import read_secret_block  # imports Prefect (seconds)

        return read_secret_block
    try:
        with open(path, encoding="utf-8") as handle:
            handed = json.load(handle)
    except FileNotFoundError:
        handed = {}

    def read(name: str) -> dict[str, Any] | None:
        value = handed.get(name)
        return value if isinstance(value, dict) else None

    return read


def resolve_model_secrets(spec: JobSpec, read: BlockReader) -> JobSpec:
    """`spec` with the secrets its references name merged into its model configs."""
    refs = spec.secret_refs
    if refs is None:
        return spec
    inline: dict[str, Any] = {}
    if refs.inline_block:
        inline = read(refs.inline_block) or {}
        if not inline:
            raise JobError(
                "the job's inline secrets (api keys, headers) were deleted; submit the job again "
                "or, for a schedule, PATCH its model config with the key",
                field="model_config",
            )
    updates: dict[str, ModelConfig] = {}
    for role, config in spec.lm_configs().items():
        credential = None
        block = refs.credential_blocks.get(role)
        if block:
            credential = read(block)
            if credential is None:
                field = JobSpec.role_field(role)
                raise JobError(
                    f"{field}.credential: credential {config.credential!r} was deleted; create it again "
                    "(POST /credentials) or change the model config",
                    field=f"{field}.credential",
                )
        updates[role] = merge_model_secrets(config, credential, inline.get(role))
    return spec.with_configs(updates)
