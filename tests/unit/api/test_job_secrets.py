"""Secrets of a submitted job or schedule: moved into a block at once, referenced only,
taken back when the create fails, replaced when a PATCH changes them.

The gateways and the Secret store are in-memory stand-ins (tests/unit/api/test_submission.py);
the real blocks on a real Prefect server are covered by tests/integration/test_secrets.py.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import uuid

import pytest
from prefect.client.schemas.objects import DeploymentSchedule
from prefect.client.schemas.schedules import IntervalSchedule

from api.job_secrets import inline_block_of, restored_job
from api.schedule_models import SchedulePatch, ScheduleRequest
from api.schedule_views import public_job, schedule_spec
from dspy_service.contract import INLINE_SECRET_BLOCK_PREFIX, credential_block
from dspy_service.errors import JobError
from dspy_service.schemas import JobRequest
from tests.unit.api.test_submission import (  # noqa: F401 - uncalled_lm_allowed: an autouse fixture
    ADMIN,
    Jobs,
    Refused,
    Schedules,
    Secrets,
    body,
    service,
    uncalled_lm_allowed,
)

KEY, BEARER = "sk-inline-canary-1", "Bearer sk-header-canary-2"


def secret_body(**overrides) -> dict:
    payload = body(**overrides)
    payload["model_config"]["extra"] = {"api_key": KEY, "headers": {"Authorization": BEARER}, "num_retries": 2}
    return payload


def submit(secrets: Secrets, jobs: Jobs | None = None, payload: dict | None = None) -> dict:
    jobs = jobs if jobs is not None else Jobs()
    request = JobRequest.model_validate(payload or secret_body())
    asyncio.run(service(jobs, Schedules(), secrets).submit_job(request, None, ADMIN))
    return jobs.created[-1] if jobs.created else {}


def test_inline_secrets_move_into_one_block_and_the_run_holds_its_name_only():
    secrets = Secrets()
    run = submit(secrets)
    stored = json.dumps(run["parameters"])
    assert KEY not in stored and "sk-header-canary-2" not in stored
    block = inline_block_of(run["parameters"])
    assert block.startswith(INLINE_SECRET_BLOCK_PREFIX)
    assert secrets.blocks == {block: {"main": {"api_key": KEY, "headers": {"Authorization": BEARER}}}}
    assert run["parameters"]["job"]["model_config"]["extra"] == {"num_retries": 2}


def test_a_job_without_inline_secrets_makes_no_block():
    payload = body()
    payload["model_config"]["extra"] = {}
    secrets = Secrets()
    run = submit(secrets, payload=payload)
    assert secrets.blocks == {} and run["parameters"]["job"]["secret_refs"] is None


def test_a_failed_create_deletes_the_new_block():
    secrets = Secrets()
    with pytest.raises(Refused):
        submit(secrets, jobs=Jobs(fail=True))
    assert secrets.blocks == {}


def test_an_idempotency_key_naming_an_existing_job_keeps_only_its_block():
    secrets = Secrets({"dspy-secret-existing": {"main": {"api_key": "old"}}})
    parameters = {"job": {"secret_refs": {"inline_block": "dspy-secret-existing"}}}
    existing = {"id": str(uuid.uuid4()), "parameters": parameters}
    request = JobRequest.model_validate(secret_body())
    asyncio.run(service(Jobs(existing=existing), Schedules(), secrets).submit_job(request, "key-1", ADMIN))
    assert list(secrets.blocks) == ["dspy-secret-existing"]


def test_a_credential_becomes_a_block_reference_of_the_owner():
    payload = body()
    payload["model_config"]["extra"] = {}
    payload["model_config"]["credential"] = "prod"
    secrets = Secrets({credential_block("tester", "prod"): {"api_key": "sk-cred"}})
    run = submit(secrets, payload=payload)
    assert run["parameters"]["job"]["secret_refs"] == {
        "inline_block": None,
        "credential_blocks": {"main": credential_block("tester", "prod")},
    }
    assert run["parameters"]["job"]["model_config"]["credential"] == "prod"


def test_an_unknown_credential_is_a_400_naming_the_field_and_nothing_is_made():
    payload = secret_body()
    payload["model_config"]["credential"] = "nope"
    secrets, jobs = Secrets({credential_block("someone-else", "nope"): {"api_key": "x"}}), Jobs()
    with pytest.raises(JobError) as failure:
        submit(secrets, jobs=jobs, payload=payload)
    assert failure.value.field == "model_config.credential" and "'nope'" in failure.value.message
    assert jobs.created == [] and len(secrets.blocks) == 1, "another owner's credential is not found"


def secured_schedule(secrets: Secrets) -> DeploymentSchedule:
    schedules = Schedules()
    request = ScheduleRequest.model_validate({**secret_body(), "interval_seconds": 3600})
    asyncio.run(service(Jobs(), schedules, secrets).create_schedule(request, ADMIN))
    schedule_id = uuid.uuid4()
    return DeploymentSchedule(
        id=schedule_id,
        schedule=IntervalSchedule(interval=dt.timedelta(hours=1)),
        parameters={**schedules.saved[-1], "schedule_id": str(schedule_id)},
    )


def patch_schedule(secrets: Secrets, schedule: DeploymentSchedule, changes: dict, fail: bool = False) -> dict:
    schedules = Schedules(fail=fail)
    patch = SchedulePatch.model_validate(changes)
    asyncio.run(service(Jobs(), schedules, secrets).update_schedule(schedule, patch, ADMIN))
    return schedules.saved[-1]


def test_a_patch_that_keeps_the_secrets_keeps_the_block():
    secrets = Secrets()
    schedule = secured_schedule(secrets)
    (block,) = secrets.blocks
    saved = patch_schedule(secrets, schedule, {"optimizer_kwargs": {"max_bootstrapped_demos": 2}})
    assert inline_block_of(saved) == block and list(secrets.blocks) == [block]


def test_a_patch_with_a_new_key_replaces_the_block_once_the_schedule_changed():
    secrets = Secrets()
    schedule = secured_schedule(secrets)
    (old,) = secrets.blocks
    new_config = {"name": "openai/local-arithmetic", "base_url": "http://127.0.0.1:1", "extra": {"api_key": "sk-new"}}
    with pytest.raises(Refused):
        patch_schedule(secrets, schedule, {"model_config": new_config}, fail=True)
    assert list(secrets.blocks) == [old], "the new block is taken back, the schedule's own kept"
    saved = patch_schedule(secrets, schedule, {"model_config": new_config})
    new = inline_block_of(saved)
    assert new != old and secrets.blocks == {new: {"main": {"api_key": "sk-new"}}}


def test_a_patch_may_not_set_references():
    secrets = Secrets()
    schedule = secured_schedule(secrets)
    with pytest.raises(Exception, match="secret_refs"):
        patch_schedule(secrets, schedule, {"secret_refs": {"inline_block": "dspy-secret-other"}})


def test_a_stored_job_restores_to_what_its_client_sent():
    secrets = Secrets()
    schedule = secured_schedule(secrets)
    restored, current = asyncio.run(restored_job(schedule.parameters["job"], secrets))
    assert restored["model_config"]["extra"] == {"num_retries": 2, "api_key": KEY, "headers": {"Authorization": BEARER}}
    assert "secret_refs" not in restored
    assert current == (inline_block_of(schedule.parameters), secrets.blocks[inline_block_of(schedule.parameters)])


def test_the_schedule_view_shows_no_secret_and_no_reference():
    secrets = Secrets()
    job = public_job(schedule_spec(secured_schedule(secrets)))
    assert "secret_refs" not in job and KEY not in json.dumps(job) and "dspy-secret" not in json.dumps(job)
    assert job["model_config"]["extra"] == {"num_retries": 2} and job["reflection_model_config"] is None
