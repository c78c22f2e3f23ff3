"""Which model settings are secrets, how they are split off, and how a job gets them back."""

from __future__ import annotations

import json

import pytest

from dspy_service.contract import JOB_SECRETS_FILE_ENV, credential_block, inline_secret_block
from dspy_service.errors import JobError
from dspy_service.schemas import JobSpec, ModelConfig, SecretRefs
from dspy_service.secret_store import read_secret_block
from dspy_service.secrets import (
    handed_blocks,
    job_block_reader,
    looks_secret,
    merge_model_secrets,
    resolve_model_secrets,
    secret_values,
    split_model_secrets,
)
from tests.support.payloads import job_payload


@pytest.mark.parametrize(
    "key",
    [
        "api_key",
        "headers",
        "extra_headers",
        "x-api-key",
        "AWS_SECRET_ACCESS_KEY",
        "vertex_credentials",
        "access_token",
        "Authorization",
        "db_password",
    ],
)
def test_secret_looking_keys(key):
    assert looks_secret(key)


@pytest.mark.parametrize(
    "key", ["num_retries", "input_cost_per_token", "output_cost_per_token", "max_completion_tokens", "timeout", "stop"]
)
def test_allow_listed_and_plain_keys_are_not_secrets(key):
    assert not looks_secret(key), "allow-listed settings (even with `token` in the name) stay public"


def test_an_object_holding_a_secret_looking_key_is_a_secret():
    assert looks_secret("vertex", {"project": "p", "auth": [{"Password": "x"}]})
    assert not looks_secret("vertex", {"project": "p"})
    assert not looks_secret("response_format", {"properties": {"token": {}}}), "allow-listed"


def test_split_moves_keys_headers_and_secret_looking_entries_out():
    config = ModelConfig.model_validate(
        {
            "name": "openai/x",
            "base_url": "http://lm",
            "model_type": "chat",
            "api_key": "sk-top-level",
            "extra": {
                "api_key": "sk-1",
                "headers": {"Authorization": "Bearer sk-2"},
                "extra_headers": {"X-Org": "acme"},
                "vertex_credentials": "{...}",
                "num_retries": 2,
                "input_cost_per_token": 1e-6,
            },
        }
    )
    public, secrets = split_model_secrets(config)
    assert secrets == {
        "api_key": "sk-1",
        "headers": {"Authorization": "Bearer sk-2"},
        "extra_headers": {"X-Org": "acme"},
        "vertex_credentials": "{...}",
    }
    assert public.extra == {"num_retries": 2, "input_cost_per_token": 1e-6}
    assert public.base_url == "http://lm" and (public.model_extra or {}) == {"model_type": "chat"}
    assert "sk-" not in public.model_dump_json(), "a secret-looking top-level key is dropped, not stored"


def test_merge_order_config_then_credential_then_inline():
    config = ModelConfig(name="openai/x", extra={"num_retries": 1, "headers": {"X-Trace": "on"}})
    credential = {"api_key": "sk-cred", "headers": {"Authorization": "Bearer sk-cred", "X-Org": "cred"}}
    inline = {"api_key": "sk-inline", "headers": {"X-Org": "inline"}}
    merged = merge_model_secrets(config, credential, inline)
    assert merged.extra == {
        "num_retries": 1,
        "api_key": "sk-inline",
        "headers": {"X-Trace": "on", "Authorization": "Bearer sk-cred", "X-Org": "inline"},
    }
    assert config.extra == {"num_retries": 1, "headers": {"X-Trace": "on"}}, "the input is not changed"
    assert merge_model_secrets(config, credential, None).extra["api_key"] == "sk-cred"


def test_secret_values_include_header_values():
    config = ModelConfig(
        name="openai/x", extra={"api_key": "sk-1", "headers": {"Authorization": "Bearer sk-2"}, "num_retries": 3}
    )
    assert sorted(secret_values(config)) == ["Bearer sk-2", "sk-1"]


def spec_with_refs(credential: str | None = "prod", inline: bool = True) -> JobSpec:
    payload = job_payload("http://127.0.0.1:1")
    payload.pop("dataset")
    payload["model_config"]["extra"] = {"num_retries": 1}
    payload["model_config"]["credential"] = credential
    payload["reflection_model_config"] = {"name": "openai/reflect", "extra": {}}
    refs = SecretRefs(
        inline_block=inline_secret_block("abc") if inline else None,
        credential_blocks={"main": credential_block("tester", credential)} if credential else {},
    )
    return JobSpec.model_validate({**payload, "secret_refs": refs.model_dump()})


def test_resolve_merges_each_role_s_blocks():
    blocks = {
        credential_block("tester", "prod"): {"api_key": "sk-cred", "headers": {}},
        inline_secret_block("abc"): {
            "main": {"headers": {"Authorization": "Bearer sk-2"}},
            "reflection": {"api_key": "sk-r"},
        },
    }
    resolved = resolve_model_secrets(spec_with_refs(), read=blocks.get)
    assert resolved.main_model.extra == {
        "num_retries": 1,
        "api_key": "sk-cred",
        "headers": {"Authorization": "Bearer sk-2"},
    }
    assert resolved.reflection_model.extra == {"api_key": "sk-r"}


def test_resolve_leaves_a_spec_without_references_alone():
    spec = JobSpec.model_validate({**job_payload("http://127.0.0.1:1"), "dataset": None})
    assert resolve_model_secrets(spec, read=lambda name: pytest.fail("nothing to read")) is spec


def test_a_deleted_credential_fails_the_job_naming_it():
    blocks = {inline_secret_block("abc"): {"main": {}}}
    with pytest.raises(JobError, match=r"model_config.credential: credential 'prod' was deleted") as failure:
        resolve_model_secrets(spec_with_refs(), read=blocks.get)
    assert failure.value.field == "model_config.credential"


def test_deleted_inline_secrets_fail_the_job():
    with pytest.raises(JobError, match="inline secrets .* were deleted"):
        resolve_model_secrets(spec_with_refs(credential=None), read=lambda name: None)


def test_a_sandboxed_engine_resolves_exactly_the_blocks_its_supervisor_handed_it(tmp_path):
    blocks = {
        credential_block("tester", "prod"): {"api_key": "sk-cred", "headers": {}},
        inline_secret_block("abc"): {"main": {}, "reflection": {"api_key": "sk-r"}},
        credential_block("victim", "prod"): {"api_key": "sk-victim", "headers": {}},
    }
    spec = spec_with_refs()
    handed = handed_blocks(spec, read=blocks.get)
    assert set(handed) == {credential_block("tester", "prod"), inline_secret_block("abc")}
    path = tmp_path / "secrets.json"
    path.write_text(json.dumps(handed))
    reader = job_block_reader({JOB_SECRETS_FILE_ENV: str(path)})
    assert reader(credential_block("victim", "prod")) is None
    resolved = resolve_model_secrets(spec, read=reader)
    assert resolved == resolve_model_secrets(spec, read=blocks.get)
    assert resolved.main_model.extra["api_key"] == "sk-cred"


def test_an_engine_without_a_handed_file_reads_blocks_through_prefect():
    assert job_block_reader({}) is read_secret_block
