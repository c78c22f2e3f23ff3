"""Schedules on Prefect: every read and write of /schedules goes through here.

A schedule is a deployment schedule of the optimization deployment (see
api/schedule_models.py for what is kept where). Its runs are ordinary flow runs of the
deployment: those Prefect's scheduler creates carry `created_by = {type: SCHEDULE, id}`,
those started with POST /schedules/{id}/run a schedule tag; both are found by server-side
filters, before they start. Runs are the Prefect API's JSON, like the job gateway's.

Failures: ScheduleNameTaken for a name in use (the API answers 409); Prefect's errors
propagate, after a half-made schedule is removed again.
"""

from __future__ import annotations

import logging
from typing import Any
from uuid import UUID

import httpx
from prefect.client.schemas.actions import DeploymentScheduleCreate, GlobalConcurrencyLimitCreate
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterCreatedBy,
    FlowRunFilterState,
    FlowRunFilterStateType,
    FlowRunFilterTags,
)
from prefect.client.schemas.objects import DeploymentSchedule, StateType
from prefect.client.schemas.schedules import CronSchedule, IntervalSchedule
from prefect.client.schemas.sorting import FlowRunSort
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

from api.gateway import JobGateway
from api.job_secrets import inline_block_of
from api.prefect_reads import Run
from api.run_pages import RunPage, read_page
from api.status import JobStatus
from dspy_service.contract import champion_lock, champion_variable, schedule_tag
from dspy_service.secret_store import SecretStore
from dspy_service.storage import delete_dataset

logger = logging.getLogger("dspy_service.api")

UNSTARTED_SCAN_LIMIT = 2000  # a guard on one read of a schedule's runs not started yet


class ScheduleNameTaken(ValueError):
    """Schedule names are Prefect schedule slugs: unique within the deployment."""


class ScheduleGateway:
    def __init__(self, jobs: JobGateway):
        self.jobs = jobs
        self.client = jobs.client

    # -- read ---------------------------------------------------------------------------
    async def list(self) -> list[DeploymentSchedule]:
        schedules = await self.client.read_deployment_schedules(await self.jobs.deployment_id())
        return sorted(schedules, key=lambda s: s.created or 0, reverse=True)

    async def get(self, schedule_id: str) -> DeploymentSchedule | None:
        try:
            wanted = UUID(schedule_id)
        except ValueError:
            return None
        return next((s for s in await self.list() if s.id == wanted), None)

    async def champion(self, schedule_id: UUID) -> dict[str, Any] | None:
        """The champion pointer the flow's champion gate keeps (tasks/champion.py)."""
        variable = await self.client.read_variable_by_name(champion_variable(str(schedule_id)))
        value = variable.value if variable else None
        return value if isinstance(value, dict) and value.get("job_id") else None

    def _run_filters(self, schedule_id: UUID) -> list[FlowRunFilter]:
        """Two disjoint sets: runs the scheduler created, and runs started by hand."""
        return [
            FlowRunFilter(created_by=FlowRunFilterCreatedBy(id_=[schedule_id])),
            FlowRunFilter(
                tags=FlowRunFilterTags(all_=[schedule_tag(str(schedule_id))]),
                created_by=FlowRunFilterCreatedBy(is_null_=True),
            ),
        ]

    async def runs(self, schedule_id: UUID, *, status: JobStatus | None, limit: int, offset: int) -> RunPage:
        """A page of the schedule's runs newest first, like GET /jobs."""
        return await read_page(self.jobs, self._run_filters(schedule_id), status, limit=limit, offset=offset)

    async def _scheduled_runs(self, schedule_id: UUID, *, limit: int) -> list[Run]:
        """Runs the scheduler created for this schedule that have not started, soonest first."""
        (created, _) = self._run_filters(schedule_id)
        scheduled = created.model_copy(
            update={"state": FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED]))}
        )
        return await self.jobs.read_runs(scheduled, FlowRunSort.EXPECTED_START_TIME_ASC, limit=limit)

    async def next_run(self, schedule_id: UUID) -> Run | None:
        """The earliest run the scheduler has created ahead of time for this schedule."""
        runs = await self._scheduled_runs(schedule_id, limit=1)
        return runs[0] if runs else None

    # -- write --------------------------------------------------------------------------
    async def create(
        self,
        parameters: dict[str, Any],
        schedule: CronSchedule | IntervalSchedule,
        *,
        name: str | None,
        active: bool,
    ) -> DeploymentSchedule:
        deployment_id = await self.jobs.deployment_id()
        await self._check_name_free(name)
        try:
            # Inactive until its parameters name it: the id exists only once it is created.
            (created,) = await self.client.create_deployment_schedules(
                deployment_id,
                [DeploymentScheduleCreate(schedule=schedule, active=False, parameters=parameters, slug=name)],
            )
        except httpx.HTTPStatusError as exc:
            if exc.response.status_code == 409:  # a concurrent create took the name
                raise ScheduleNameTaken(f"a schedule named {name!r} exists already") from None
            raise
        try:
            await self._ensure_champion_lock(created.id)
            await self.client.update_deployment_schedule(
                deployment_id,
                created.id,
                active=active,
                parameters={**parameters, "schedule_id": str(created.id)},
            )
        except BaseException:
            await self.client.delete_deployment_schedule(deployment_id, created.id)
            raise
        return await self.get(str(created.id)) or created

    async def update(
        self,
        schedule: DeploymentSchedule,
        *,
        active: bool | None = None,
        cadence: CronSchedule | IntervalSchedule | None = None,
        name: str | None = None,
        parameters: dict[str, Any] | None = None,
    ) -> DeploymentSchedule:
        """Change what is given. `parameters` replace the job payload (None: keep it)."""
        # Always send the parameters: Prefect 3.9's server resets a schedule's parameters to
        # {} on any PATCH that leaves them out (its update model defaults them to a dict).
        if parameters is None:
            parameters = dict(schedule.parameters or {})
        if name is not None and name != schedule.slug:
            await self._check_name_free(name)
        await self.client.update_deployment_schedule(
            schedule.deployment_id,
            schedule.id,
            active=active,
            schedule=cadence,
            parameters=parameters,
            slug=name,
        )
        if active is False:
            await self._drop_unstarted_runs(schedule.id)
        return await self.get(str(schedule.id)) or schedule

    async def delete(self, schedule: DeploymentSchedule) -> None:
        """Remove the Prefect schedule (Prefect deletes its not-yet-started runs), its
        champion pointer, gate lock, stored rows and inline secrets. Its finished jobs stay in /jobs."""
        await self.client.delete_deployment_schedule(schedule.deployment_id, schedule.id)
        for cleanup in (
            self.client.delete_variable_by_name(champion_variable(str(schedule.id))),
            self.client.delete_global_concurrency_limit_by_name(champion_lock(str(schedule.id))),
        ):
            try:
                await cleanup
            except ObjectNotFound:
                pass
        url = stored_dataset_url(schedule)
        if url:
            delete_dataset(url)
        block = inline_block_of(schedule.parameters)
        if block:
            await SecretStore(self.client).delete(block)

    async def _drop_unstarted_runs(self, schedule_id: UUID) -> None:
        """Pausing stops new runs: Prefect deletes the runs it created ahead of time, but
        not those already due and not yet picked up (Late); remove those too. Runs handed
        to a worker (Pending) or running finish normally."""
        for run in await self._scheduled_runs(schedule_id, limit=UNSTARTED_SCAN_LIMIT):
            if not run.get("run_count"):
                try:
                    await self.client.delete_flow_run(UUID(run["id"]))
                except ObjectNotFound:
                    pass

    async def _check_name_free(self, name: str | None) -> None:
        if name is not None and any(s.slug == name for s in await self.list()):
            raise ScheduleNameTaken(f"a schedule named {name!r} exists already")

    async def _ensure_champion_lock(self, schedule_id: UUID) -> None:
        try:
            await self.client.create_global_concurrency_limit(
                GlobalConcurrencyLimitCreate(name=champion_lock(str(schedule_id)), limit=1)
            )
        except ObjectAlreadyExists:
            pass


def stored_dataset_url(schedule: DeploymentSchedule) -> str | None:
    ref = (schedule.parameters or {}).get("dataset_ref")
    return ref.get("url") if isinstance(ref, dict) else None
