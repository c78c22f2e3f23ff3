"""The submission service: what is validated, stored, created, and taken back on failure.

The gateways are in-memory stand-ins of our own classes (no Prefect here: what Prefect
does with a created run is covered end to end in tests/integration); the dataset
storage and the preflight checks are the real ones.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import uuid

import pytest
from fastapi import HTTPException
from prefect.client.schemas.objects import DeploymentSchedule
from prefect.client.schemas.schedules import IntervalSchedule

from api.identity import Caller
from api.schedule_models import SchedulePatch, ScheduleRequest
from api.status import JobStatus
from api.submission import Submission, job_parameters
from dspy_service.budget import Budget
from dspy_service.budget_defaults import set_default_budget
from dspy_service.errors import JobError
from dspy_service.schemas import JobRequest
from dspy_service.settings import get_settings
from dspy_service.storage import save_dataset
from tests.support.memory_prefect import Prefect
from tests.support.payloads import job_payload


class Refused(RuntimeError):
    """What the stand-in gateways raise when told to fail."""


ADMIN = Caller("root", admin=True)


class Jobs:
    def __init__(self, fail: bool = False, existing: dict | None = None, active: int = 0):
        self.fail, self.existing, self.created = fail, existing, []
        self.settings = get_settings()
        self.active, self.keys, self.counted = active, [], []
        self.client = Prefect()  # Variables: the owners' default budgets

    async def count_runs(self, run_filter):
        self.counted.append(run_filter)
        return self.active

    async def create_run(self, parameters, *, name, tags, labels, idempotency_key):
        self.keys.append(idempotency_key)
        if self.fail:
            raise Refused("the Prefect API is down")
        if self.existing is not None:  # the idempotency key named this run
            return self.existing
        run = {"id": str(uuid.uuid4()), "parameters": parameters, "tags": tags, "labels": labels}
        self.created.append(run)
        return run

    async def status_of(self, run):
        return JobStatus.pending


class Schedules:
    def __init__(self, fail: bool = False, existing: list | None = None):
        self.fail, self.saved, self.existing = fail, [], existing or []

    async def list(self):
        return self.existing

    async def create(self, parameters, schedule, *, name, active):
        return await self.update(None, parameters=parameters)

    async def update(self, schedule, *, active=None, cadence=None, name=None, parameters=None):
        if self.fail:
            raise Refused("the Prefect API is down")
        self.saved.append(parameters)
        return schedule


class Secrets:
    """An in-memory stand-in of dspy_service.secret_store.SecretStore."""

    def __init__(self, blocks: dict | None = None):
        self.blocks: dict[str, dict] = dict(blocks or {})

    async def store(self, name, value):
        from dspy_service.secret_store import SecretNameTaken

        if name in self.blocks:
            raise SecretNameTaken(name)
        self.blocks[name] = value

    async def read(self, name):
        return self.blocks.get(name)

    async def entry(self, name):
        return (self.blocks[name], dt.datetime.now(dt.UTC)) if name in self.blocks else None

    async def created(self, name):
        return dt.datetime.now(dt.UTC) if name in self.blocks else None

    async def delete(self, name):
        return self.blocks.pop(name, None) is not None

    async def names(self, prefix):
        return sorted(name for name in self.blocks if name.startswith(prefix))


def service(jobs: Jobs, schedules: Schedules, secrets: Secrets | None = None) -> Submission:
    return Submission(jobs, schedules, secrets if secrets is not None else Secrets())


def stored_files() -> set[str]:
    directory = os.path.join(get_settings().resolved_storage_url, "datasets")
    return set(os.listdir(directory)) if os.path.isdir(directory) else set()


UNCALLED_LM = "127.0.0.1:1"  # the jobs' LM: nothing here calls it


@pytest.fixture(autouse=True)
def uncalled_lm_allowed(egress_allow):
    """The operator allow-lists the jobs' loopback LM, as `dspy-service up` does its demo LM."""
    egress_allow(UNCALLED_LM)


def body(rows: int = 20, **overrides) -> dict:
    return job_payload(f"http://{UNCALLED_LM}", rows=rows, **overrides)


def submit(submission: Submission, caller: Caller = ADMIN, key: str | None = None, **overrides) -> dict:
    return asyncio.run(submission.submit_job(JobRequest.model_validate(body(**overrides)), key, caller))


def stored_schedule(rows: int = 20) -> DeploymentSchedule:
    request = JobRequest.model_validate(body())
    ref = save_dataset(request.dataset[:rows])
    schedule_id = uuid.uuid4()
    return DeploymentSchedule(
        id=schedule_id,
        schedule=IntervalSchedule(interval=dt.timedelta(hours=1)),
        parameters=job_parameters(request.spec(), ref, str(schedule_id)),
    )


def test_a_job_is_created_with_its_stored_rows():
    jobs = Jobs()
    before = stored_files()
    answer = submit(service(jobs, Schedules()))
    (run,) = jobs.created
    assert answer["job_id"] == run["id"] and answer["status"] == "pending" and answer["username"] == "tester"
    assert run["parameters"]["dataset_ref"]["rows"] == 20 and len(stored_files() - before) == 1


def test_the_stored_rows_are_deleted_when_the_run_cannot_be_created():
    before = stored_files()
    with pytest.raises(Refused):
        submit(service(Jobs(fail=True), Schedules()))
    assert stored_files() == before


def test_a_job_that_fails_preflight_stores_nothing_and_creates_nothing():
    jobs, before = Jobs(), stored_files()
    with pytest.raises(JobError, match="unknown optimizer"):
        submit(service(jobs, Schedules()), optimizer_name="nope")
    assert jobs.created == [] and stored_files() == before


def test_an_idempotency_key_naming_an_existing_job_keeps_only_its_rows():
    existing = {"id": str(uuid.uuid4()), "parameters": stored_schedule().parameters}
    before = stored_files()
    answer = submit(service(Jobs(existing=existing), Schedules()))
    assert answer["job_id"] == existing["id"] and stored_files() == before


def test_a_schedule_that_cannot_be_created_leaves_no_rows():
    request = ScheduleRequest.model_validate(body(interval_seconds=60))
    before = stored_files()
    with pytest.raises(Refused):
        asyncio.run(service(Jobs(), Schedules(fail=True)).create_schedule(request, ADMIN))
    assert stored_files() == before


def test_new_rows_replace_the_stored_ones_only_once_the_schedule_changed():
    schedule, new_rows = stored_schedule(), body(rows=30)["dataset"]
    before = stored_files()
    with pytest.raises(Refused):
        submission = service(Jobs(), Schedules(fail=True))
        asyncio.run(submission.update_schedule(schedule, SchedulePatch(dataset=new_rows), ADMIN))
    assert stored_files() == before, "the new rows are taken back, the schedule's own rows kept"

    schedules = Schedules()
    asyncio.run(service(Jobs(), schedules).update_schedule(schedule, SchedulePatch(dataset=new_rows), ADMIN))
    (saved,) = schedules.saved
    assert saved["dataset_ref"]["rows"] == 30 and saved["schedule_id"] == str(schedule.id)
    after = stored_files()
    assert len(after) == len(before) and saved["dataset_ref"]["url"].rsplit("/", 1)[1] in after


def test_a_job_field_change_keeps_the_stored_rows_and_validates_against_them():
    schedule, schedules = stored_schedule(), Schedules()
    before = stored_files()
    patch = SchedulePatch.model_validate({"optimizer_kwargs": {"max_bootstrapped_demos": 2}})
    asyncio.run(service(Jobs(), schedules).update_schedule(schedule, patch, ADMIN))
    assert schedules.saved[0]["dataset_ref"] == schedule.parameters["dataset_ref"] and stored_files() == before
    misspelt = SchedulePatch.model_validate({"optimizer_kwargs": {"max_bootstrapped_demos": 2, "bogus": 1}})
    with pytest.raises(JobError, match="bogus"):
        asyncio.run(service(Jobs(), schedules).update_schedule(schedule, misspelt, ADMIN))


def test_a_run_of_a_schedule_names_its_schedule():
    schedule, jobs = stored_schedule(), Jobs()
    answer = asyncio.run(service(jobs, Schedules()).run_schedule(schedule, ADMIN))
    (run,) = jobs.created
    assert answer["schedule_id"] == str(schedule.id) and run["parameters"] == schedule.parameters
    assert f"dspy-schedule:{schedule.id}" in run["tags"]
    with pytest.raises(JobError, match="no job payload"):
        asyncio.run(service(jobs, Schedules()).run_schedule(schedule.model_copy(update={"parameters": {}}), ADMIN))


# -- owners and quotas --------------------------------------------------------------------
ALICE = Caller("alice")


def test_a_job_without_username_is_the_callers_and_tagged_so():
    jobs = Jobs()
    payload = body()
    del payload["username"]
    asyncio.run(service(jobs, Schedules()).submit_job(JobRequest.model_validate(payload), None, ALICE))
    (run,) = jobs.created
    assert "user:alice" in run["tags"] and run["parameters"]["job"]["username"] == "alice"


def test_naming_another_user_is_403_for_a_user_and_allowed_for_an_admin():
    with pytest.raises(HTTPException) as refused:
        submit(service(Jobs(), Schedules()), caller=ALICE, username="bob")
    assert refused.value.status_code == 403 and "bob" in refused.value.detail
    jobs = Jobs()
    submit(service(jobs, Schedules()), caller=ADMIN, username="bob")
    assert "user:bob" in jobs.created[0]["tags"]


def test_idempotency_keys_are_scoped_per_owner():
    jobs = Jobs()
    submit(service(jobs, Schedules()), caller=ALICE, key="k1", username="alice")
    submit(service(jobs, Schedules()), caller=Caller("mallory"), key="k1", username="mallory")
    alice_key, mallory_key = jobs.keys
    assert alice_key.endswith(":k1") and mallory_key.endswith(":k1") and alice_key != mallory_key


def test_a_user_at_the_active_job_quota_gets_429_and_an_admin_does_not():
    limit = get_settings().max_active_jobs_per_user
    with pytest.raises(HTTPException) as refused:
        submit(service(Jobs(active=limit), Schedules()), caller=ALICE, username="alice")
    assert refused.value.status_code == 429 and refused.value.headers["Retry-After"]
    admin_jobs = Jobs(active=limit)
    submit(service(admin_jobs, Schedules()), caller=ADMIN)
    assert admin_jobs.created and not admin_jobs.counted


def test_a_users_fast_schedule_is_400_naming_the_field():
    request = ScheduleRequest.model_validate({**body(), "username": "alice", "interval_seconds": 5})
    with pytest.raises(JobError) as refused:
        asyncio.run(service(Jobs(), Schedules()).create_schedule(request, ALICE))
    assert refused.value.field == "interval_seconds"
    every_minute = ScheduleRequest.model_validate({**body(), "username": "alice", "cron": "* * * * *"})
    asyncio.run(service(Jobs(), Schedules()).create_schedule(every_minute, ALICE))  # 60 s: the minimum


def test_a_user_at_the_schedule_quota_gets_429():
    limit = get_settings().max_schedules_per_user
    owned = [stored_schedule().model_copy(update={"parameters": {"job": {"username": "alice"}}})] * limit
    request = ScheduleRequest.model_validate({**body(), "username": "alice", "interval_seconds": 3600})
    with pytest.raises(HTTPException) as refused:
        asyncio.run(service(Jobs(), Schedules(existing=owned)).create_schedule(request, ALICE))
    assert refused.value.status_code == 429


def test_a_patch_keeps_the_schedule_owner():
    schedule = stored_schedule()  # owned by the payload's user, "tester"
    schedules = Schedules()
    with pytest.raises(HTTPException) as refused:
        asyncio.run(service(Jobs(), schedules).update_schedule(schedule, SchedulePatch(username="mallory"),
                                                                  Caller("tester")))
    assert refused.value.status_code == 403 and not schedules.saved
    asyncio.run(service(Jobs(), schedules).update_schedule(schedule, SchedulePatch(seed=3), ADMIN))
    assert schedules.saved[-1]["job"]["username"] == "tester"


# -- register_as (a schedule's promoted runs become registry versions) --------------------
TARGET = {"program": "nightly-qa", "alias": "production"}


def test_register_as_is_kept_by_every_patch_that_does_not_change_it():
    """Prefect 3.9 resets a schedule's parameters a PATCH leaves out: a PATCH of other
    fields sends them whole (None: the gateway re-sends the stored ones), a job change
    keeps register_as next to the new job, null removes it; run-now passes it on."""
    schedules, jobs = Schedules(), Jobs()
    request = ScheduleRequest.model_validate({**body(), "interval_seconds": 3600, "register_as": TARGET})
    asyncio.run(service(jobs, schedules).create_schedule(request, ADMIN))
    assert schedules.saved[-1]["register_as"] == TARGET
    schedule = stored_schedule().model_copy()
    schedule.parameters = {**schedule.parameters, "register_as": TARGET}
    submission = service(jobs, schedules)
    asyncio.run(submission.update_schedule(schedule, SchedulePatch(active=False), ADMIN))
    assert schedules.saved[-1] is None  # the gateway re-sends the stored parameters, register_as included
    asyncio.run(submission.update_schedule(schedule, SchedulePatch.model_validate({"seed": 5}), ADMIN))
    assert schedules.saved[-1]["register_as"] == TARGET and schedules.saved[-1]["job"]["seed"] == 5
    moved = {"program": "nightly-qa", "alias": "staging"}
    asyncio.run(submission.update_schedule(schedule, SchedulePatch.model_validate({"register_as": moved}), ADMIN))
    assert schedules.saved[-1] == {**schedule.parameters, "register_as": moved}
    asyncio.run(submission.update_schedule(schedule, SchedulePatch.model_validate({"register_as": None}), ADMIN))
    assert "register_as" not in schedules.saved[-1] and schedules.saved[-1]["job"] == schedule.parameters["job"]
    asyncio.run(submission.run_schedule(schedule, ADMIN))
    assert jobs.created[-1]["parameters"]["register_as"] == TARGET


# -- default budgets (dspy_service/budget_defaults.py) ----------------------------------
def with_default(jobs: Jobs, owner: str = "tester", **limits) -> Jobs:
    asyncio.run(set_default_budget(jobs.client, owner, Budget(**limits)))
    return jobs


def test_a_job_without_budget_gets_its_owners_default_and_says_so():
    jobs = with_default(Jobs(), max_lm_calls=40)
    submit(service(jobs, Schedules()))
    job = jobs.created[-1]["parameters"]["job"]
    assert job["budget"]["max_lm_calls"] == 40 and job["budget_source"] == "user_default"
    submit(service(jobs, Schedules()), budget={"max_tokens": 90_000})  # the body's own wins, whole
    job = jobs.created[-1]["parameters"]["job"]
    assert job["budget"] == {"max_lm_calls": None, "max_tokens": 90_000, "max_cost_usd": None}
    assert job["budget_source"] == "job"
    submit(service(jobs, Schedules()), budget=None)  # null: no budget at all
    job = jobs.created[-1]["parameters"]["job"]
    assert job["budget"] is None and job["budget_source"] is None
    others = with_default(Jobs(), owner="someone-else", max_lm_calls=40)
    submit(service(others, Schedules()))
    assert others.created[-1]["parameters"]["job"]["budget"] is None


def test_a_default_too_small_for_the_job_is_a_400_naming_the_limit_and_the_default():
    jobs = with_default(Jobs(), max_lm_calls=10)  # the 6 test rows need 12 calls
    with pytest.raises(JobError, match=r"^the default budget of tester \(PUT /users/me/budget\) does not fit") as e:
        submit(service(jobs, Schedules()))
    assert e.value.field == "budget.max_lm_calls" and not jobs.created
    request = ScheduleRequest.model_validate({**body(), "interval_seconds": 3600})
    schedules = Schedules()
    with pytest.raises(JobError, match="default budget"):
        asyncio.run(service(jobs, schedules).create_schedule(request, ADMIN))
    assert not schedules.saved


def test_a_schedule_keeps_its_default_budget_until_a_patch_gives_its_own():
    jobs, schedules = with_default(Jobs(), max_lm_calls=40), Schedules()
    request = ScheduleRequest.model_validate({**body(), "interval_seconds": 3600})
    asyncio.run(service(jobs, schedules).create_schedule(request, ADMIN))
    stored = schedules.saved[-1]
    assert stored["job"]["budget_source"] == "user_default"
    schedule = stored_schedule().model_copy(update={"parameters": {**stored, "schedule_id": "s"}})
    submission = service(jobs, schedules)
    asyncio.run(submission.update_schedule(schedule, SchedulePatch.model_validate({"seed": 5}), ADMIN))
    assert schedules.saved[-1]["job"]["budget_source"] == "user_default"
    assert schedules.saved[-1]["job"]["budget"]["max_lm_calls"] == 40
    patch = SchedulePatch.model_validate({"budget": {"max_lm_calls": 60}})
    asyncio.run(submission.update_schedule(schedule, patch, ADMIN))
    assert schedules.saved[-1]["job"]["budget_source"] == "job"


def test_budget_source_is_the_service_s():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="budget_source is set by the service"):
        JobRequest.model_validate(body(budget_source="job"))
