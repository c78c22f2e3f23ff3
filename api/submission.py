"""Submitting work: validate the job, store its rows, build the run's parameters, create
the run or schedule, and take the stored rows back when that fails.

One service for POST /run, POST /schedules, PATCH /schedules/{id} and
POST /schedules/{id}/run, so every path validates the same way (`preflight`, nothing of
the user's code runs) and stores inline rows the same way (a `dataset_source` is read by
the job itself at run time).

Every path acts for a `Caller` (api/identity.py): the owner a body may name and the
per-user quotas are checked here (api/ownership.py, api/quotas.py) before anything is
stored. Secrets are moved out of the job before anything is created (api/job_secrets.py):
the run's or schedule's parameters hold references only.

Failures: JobError (400), RequestValidationError (422), HTTPException (403 for a foreign
`username`, 429 over a quota) before anything is stored; anything the gateways raise
after the rows (or a new inline Secret block) were stored deletes those again and
propagates. Rows and blocks an existing run or schedule already uses are never deleted on
failure.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from prefect.client.schemas.objects import DeploymentSchedule
from pydantic import ValidationError

from api import views
from api.default_budgets import patched_budget_source, with_default_budget
from api.gateway import JobGateway
from api.identity import Caller
from api.job_secrets import inline_block_of, restored_job, secured
from api.ownership import owned_request, patched_username, schedule_owner, scoped_idempotency_key
from api.prefect_reads import Run
from api.preflight import check_notify_url, preflight
from api.quotas import check_active_jobs, check_cadence, check_schedule_count
from api.schedule_gateway import ScheduleGateway, stored_dataset_url
from api.schedule_models import SchedulePatch, ScheduleRequest, merge_job, patched_cadence
from dspy_service.contract import (
    NOTIFY_TAG,
    SCHEDULE_ID,
    SERVICE_TAG,
    SWEEP_CELL,
    SWEEP_ID,
    schedule_tag,
    sweep_tag,
    user_tag,
)
from dspy_service.errors import JobError
from dspy_service.schedule_registration import REGISTER_AS, RegisterAs, register_as_of
from dspy_service.schemas import DatasetRef, JobRequest, JobSpec
from dspy_service.secret_store import SecretStore
from dspy_service.storage import delete_dataset, load_dataset, save_dataset
from dspy_service.webhook_store import WebhookStore


def job_parameters(
    spec: JobSpec,
    dataset_ref: DatasetRef | None,
    schedule_id: str | None = None,
    register_as: RegisterAs | None = None,
) -> dict[str, Any]:
    """The flow-run parameters of a job (those of a schedule's runs name the schedule, and
    say where its promoted runs are registered)."""
    parameters: dict[str, Any] = {"job": spec.wire()}
    if dataset_ref is not None:
        parameters["dataset_ref"] = dataset_ref.model_dump(mode="json")
    if schedule_id:
        parameters["schedule_id"] = schedule_id
    if register_as is not None:
        parameters[REGISTER_AS] = register_as.model_dump(mode="json")
    return parameters


async def validated(request: JobRequest) -> JobSpec:
    """The request's job spec, once it passed every check that runs no user code."""
    spec = request.spec()
    await run_in_threadpool(preflight, spec, request.dataset)
    return spec


@asynccontextmanager
async def stored_rows(rows: list[dict[str, Any]] | None) -> AsyncIterator[DatasetRef | None]:
    """Store inline rows for the block; delete them again if the block fails."""
    ref = await run_in_threadpool(save_dataset, rows) if rows is not None else None
    try:
        yield ref
    except BaseException:
        if ref is not None:
            delete_dataset(ref.url)
        raise


class Submission:
    """Creates jobs, schedules and schedule runs on the gateways."""

    def __init__(
        self, jobs: JobGateway, schedules: ScheduleGateway, secrets: SecretStore, webhooks: WebhookStore | None = None
    ):
        self.jobs = jobs
        self.schedules = schedules
        self.secrets = secrets
        self.webhooks = webhooks  # the owners' default notify_url; None: no defaults

    async def submit_job(self, request: JobRequest, idempotency_key: str | None, caller: Caller) -> dict[str, Any]:
        """POST /run: the new job (or the one the owner's `idempotency_key` named already)."""
        request = owned_request(caller, request)
        spec = await self.with_defaults(request, await validated(request))  # 400s before the quota
        await check_active_jobs(self.jobs, caller, request.username)
        key = scoped_idempotency_key(request.username, idempotency_key)
        async with secured(spec, self.secrets) as spec, stored_rows(request.dataset) as ref:
            run = await self._create_run(spec, job_parameters(spec, ref), idempotency_key=key)
        parameters = run.get("parameters") or {}
        used = (parameters.get("dataset_ref") or {}).get("url")
        if ref is not None and used != ref.url:
            delete_dataset(ref.url)  # the key named an existing job: keep its data only
        made = spec.secret_refs.inline_block if spec.secret_refs else None
        if made and inline_block_of(parameters) != made:
            await self.secrets.delete(made)  # ... and its secrets only
        return {**views.submitted(run, await self.jobs.status_of(run)), "ignored_fields": request.ignored_fields}

    async def submit_cell(
        self, request: JobRequest, spec: JobSpec, *, sweep_id: str, cell: int, parent_task_run_id: Any
    ) -> Run:
        """A sweep's cell: an ordinary job (validated `spec`, owned, quota checked by the
        caller), created as POST /run creates one, tagged and labelled with its sweep and
        nested under the sweep's task run `parent_task_run_id`."""
        async with secured(spec, self.secrets) as spec, stored_rows(request.dataset) as ref:
            return await self._create_run(
                spec,
                job_parameters(spec, ref),
                tags=[sweep_tag(sweep_id)],
                labels={SWEEP_ID: sweep_id, SWEEP_CELL: cell},
                parent_task_run_id=parent_task_run_id,
            )

    async def with_defaults(self, request: JobRequest, spec: JobSpec) -> JobSpec:
        """`spec` with the owner's defaults for what the body does not name: notify_url and
        budget, each checked as the body's own would be."""
        spec = await self.with_default_notify(request, spec)
        return await with_default_budget(self.jobs.client, request, spec)

    async def with_default_notify(self, request: JobRequest, spec: JobSpec) -> JobSpec:
        """`spec` with the owner's default notify_url (PUT /users/me/notify), checked again,
        unless the body names one (or null)."""
        if "notify_url" in request.model_fields_set or self.webhooks is None:
            return spec
        url = await self.webhooks.default_url(spec.username)
        if not url:
            return spec
        await run_in_threadpool(check_notify_url, url)
        return spec.model_copy(update={"notify_url": url})

    async def run_schedule(self, schedule: DeploymentSchedule, caller: Caller) -> dict[str, Any]:
        """POST /schedules/{id}/run: a job from the schedule's stored payload, now (its owner's)."""
        parameters = schedule.parameters or {}
        if not parameters.get("job"):
            raise JobError("this schedule has no job payload (made outside dspy-service?)")
        spec = JobSpec.model_validate(parameters["job"])
        await check_active_jobs(self.jobs, caller, spec.username)
        ref = parameters.get("dataset_ref")
        dataset_ref = DatasetRef.model_validate(ref) if ref else None
        schedule_id = str(schedule.id)
        parameters = job_parameters(spec, dataset_ref, schedule_id, register_as_of(parameters))
        run = await self._create_run(spec, parameters, schedule_id=schedule_id)
        return views.submitted(run, await self.jobs.status_of(run))

    async def create_schedule(self, request: ScheduleRequest, caller: Caller) -> DeploymentSchedule:
        """POST /schedules: validated like POST /run; inline rows are stored once for all runs."""
        request = owned_request(caller, request)
        settings = self.jobs.settings
        check_cadence(caller, request.prefect_schedule(), settings.min_schedule_interval_seconds)
        spec = await self.with_defaults(request, await validated(request))
        owned = sum(schedule_owner(s) == request.username for s in await self.schedules.list())
        check_schedule_count(caller, owned, settings.max_schedules_per_user)
        async with secured(spec, self.secrets) as spec, stored_rows(request.dataset) as ref:
            return await self.schedules.create(
                job_parameters(spec, ref, register_as=request.register_as),
                request.prefect_schedule(),
                name=request.name,
                active=request.active,
            )

    async def update_schedule(
        self, schedule: DeploymentSchedule, patch: SchedulePatch, caller: Caller
    ) -> DeploymentSchedule:
        """PATCH /schedules/{id}: the merged job (still the schedule owner's) is validated
        before anything changes; rows the schedule no longer uses are deleted once the change
        is made."""
        cadence = patched_cadence(schedule.schedule, patch)
        check_cadence(caller, cadence, self.jobs.settings.min_schedule_interval_seconds)
        changes = patched_username(caller, schedule_owner(schedule), patch.job_fields())
        register_as = patch.register_as if patch.changes_register_as else register_as_of(schedule.parameters)
        if not changes:
            kept = {k: v for k, v in (schedule.parameters or {}).items() if k != REGISTER_AS}
            parameters = {**kept, REGISTER_AS: register_as.model_dump(mode="json")} if register_as else kept
            return await self.schedules.update(
                schedule, active=patch.active, cadence=cadence, name=patch.name,
                parameters=parameters if patch.changes_register_as else None,
            )
        stored_job, inline = await restored_job((schedule.parameters or {}).get("job") or {}, self.secrets)
        request, kept_ref = await merged_request(schedule, stored_job, changes)
        spec = patched_budget_source(await validated(request), (schedule.parameters or {}).get("job") or {}, changes)
        async with (
            secured(spec, self.secrets, current=inline) as spec,
            stored_rows(None if kept_ref else request.dataset) as new_ref,
        ):
            ref = kept_ref or new_ref
            updated = await self.schedules.update(
                schedule,
                active=patch.active,
                cadence=cadence,
                name=patch.name,
                parameters=job_parameters(spec, ref, str(schedule.id), register_as),
            )
        old = stored_dataset_url(schedule)
        if old and old != (ref.url if ref else None):
            delete_dataset(old)
        old_block = inline[0] if inline else None
        if old_block and old_block != (spec.secret_refs.inline_block if spec.secret_refs else None):
            await self.secrets.delete(old_block)
        return updated

    async def _create_run(
        self,
        spec: JobSpec,
        parameters: dict[str, Any],
        *,
        schedule_id: str | None = None,
        idempotency_key: str | None = None,
        tags: list[str] | None = None,
        labels: dict[str, Any] | None = None,
        parent_task_run_id: Any = None,
    ) -> Run:
        tags, labels = [SERVICE_TAG, user_tag(spec.username), *(tags or [])], dict(labels or {})
        if spec.notify_url:  # its end is delivered (deployments/automations.py)
            tags.append(NOTIFY_TAG)
        if schedule_id:  # a run of a schedule started by hand
            tags.append(schedule_tag(schedule_id))
            labels[SCHEDULE_ID] = schedule_id
        return await self.jobs.create_run(
            parameters,
            name=f"{spec.username}-{spec.optimizer_name}-{spec.module_name}".lower()[:100],
            tags=tags,
            labels=labels or None,
            idempotency_key=idempotency_key,
            **({"parent_task_run_id": parent_task_run_id} if parent_task_run_id else {}),
        )


async def merged_request(
    schedule: DeploymentSchedule, stored_job: dict[str, Any], changes: dict[str, Any]
) -> tuple[JobRequest, DatasetRef | None]:
    """The schedule's job (`stored_job`, as its client sent it) with `changes` applied, as
    a request (422 when it no longer validates), and the stored rows' ref when those still
    apply (loaded to validate)."""
    stored = schedule.parameters or {}
    merged, keep_rows = merge_job(stored_job, stored.get("dataset_ref"), changes)
    kept_ref = DatasetRef.model_validate(stored["dataset_ref"]) if keep_rows else None
    if kept_ref is not None:
        merged["dataset"] = await run_in_threadpool(load_dataset, kept_ref)
    try:
        return JobRequest.model_validate(merged), kept_ref
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from None
