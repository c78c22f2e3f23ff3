"""Schedules on Prefect: every read and write of /schedules goes through here.

A schedule is a deployment schedule of the optimization deployment (see
dspy_service/schedules.py for what is kept where). Its runs are ordinary flow runs of the
deployment: those Prefect's scheduler creates carry `created_by = {type: SCHEDULE, id}`,
those started with POST /schedules/{id}/run a schedule tag; both are found by server-side
filters, before they start.
"""

from __future__ import annotations

import asyncio
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
from prefect.client.schemas.objects import DeploymentSchedule, FlowRun, StateType
from prefect.client.schemas.schedules import CronSchedule, IntervalSchedule
from prefect.client.schemas.sorting import FlowRunSort
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

from api.gateway import JobGateway
from dspy_service.contract import champion_lock, champion_variable, schedule_tag
from dspy_service.schemas import DatasetRef, JobSpec
from dspy_service.status import JobStatus, job_status, state_types_for
from dspy_service.storage import delete_dataset

logger = logging.getLogger("dspy_service.api")

RUNS_SCAN_LIMIT = 2000  # status=running|validating scans, as for /jobs


class ScheduleNameTaken(ValueError):
    """Schedule names are Prefect schedule slugs: unique within the deployment."""


def schedule_timezone(schedule: DeploymentSchedule) -> str | None:
    return getattr(schedule.schedule, "timezone", None)


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

    def _run_filters(self, schedule_id: UUID, state_types: list[StateType] | None) -> list[FlowRunFilter]:
        """Two disjoint sets: runs the scheduler created, and runs started by hand."""
        state = FlowRunFilterState(type=FlowRunFilterStateType(any_=state_types)) if state_types else None
        return [
            FlowRunFilter(created_by=FlowRunFilterCreatedBy(id_=[schedule_id]), state=state),
            FlowRunFilter(
                tags=FlowRunFilterTags(all_=[schedule_tag(str(schedule_id))]),
                created_by=FlowRunFilterCreatedBy(is_null_=True),
                state=state,
            ),
        ]

    async def runs(
        self, schedule_id: UUID, *, status: JobStatus | None, limit: int, offset: int
    ) -> tuple[list[FlowRun], set[UUID], int]:
        """A page of the schedule's runs newest first (like /jobs), which passed validation, total."""
        filters = [
            await self.jobs._runs_filter(flow_run_filter=f)
            for f in self._run_filters(schedule_id, state_types_for(status) if status else None)
        ]
        sort = FlowRunSort.EXPECTED_START_TIME_DESC

        def newest_first(runs: list[FlowRun]) -> list[FlowRun]:
            return sorted(runs, key=lambda r: (r.expected_start_time is not None, r.expected_start_time), reverse=True)

        if status in (JobStatus.running, JobStatus.validating):
            pages = await asyncio.gather(*(self.jobs.read_runs(f, sort, limit=RUNS_SCAN_LIMIT) for f in filters))
            runs = newest_first([run for page in pages for run in page])
            started = await self.jobs.compile_started(runs)
            wanted = [r for r in runs if job_status(r.state_type, r.id in started) is status]
            return wanted[offset : offset + limit], started, len(wanted)
        # The page of the union is within the first offset+limit runs of each set.
        pages, counts = await asyncio.gather(
            asyncio.gather(*(self.jobs.read_runs(f, sort, limit=offset + limit) for f in filters)),
            asyncio.gather(*(self.client.count_flow_runs(**f) for f in filters)),
        )
        runs = newest_first([run for page in pages for run in page])[offset : offset + limit]
        return runs, await self.jobs.compile_started(runs), sum(counts)

    async def next_run(self, schedule_id: UUID) -> FlowRun | None:
        """The earliest run the scheduler has created ahead of time for this schedule."""
        (scheduled, _) = self._run_filters(schedule_id, [StateType.SCHEDULED])
        filters = await self.jobs._runs_filter(flow_run_filter=scheduled)
        runs = await self.client.read_flow_runs(**filters, sort=FlowRunSort.EXPECTED_START_TIME_ASC, limit=1)
        return runs[0] if runs else None

    # -- write --------------------------------------------------------------------------
    async def create(
        self,
        spec: JobSpec,
        dataset_ref: DatasetRef | None,
        schedule: CronSchedule | IntervalSchedule,
        *,
        name: str | None,
        active: bool,
    ) -> DeploymentSchedule:
        deployment_id = await self.jobs.deployment_id()
        await self._check_name_free(name)
        parameters = job_parameters(spec, dataset_ref)
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
        spec: JobSpec | None = None,
        dataset_ref: DatasetRef | None = None,
    ) -> DeploymentSchedule:
        # Always send the parameters: Prefect 3.9's server resets a schedule's parameters to
        # {} on any PATCH that leaves them out (its update model defaults them to a dict).
        parameters = dict(schedule.parameters or {})
        if spec is not None:
            parameters = {**job_parameters(spec, dataset_ref), "schedule_id": str(schedule.id)}
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
        if spec is not None:
            old = stored_dataset_url(schedule)
            if old and old != (dataset_ref.url if dataset_ref else None):
                delete_dataset(old)
        return await self.get(str(schedule.id)) or schedule

    async def delete(self, schedule: DeploymentSchedule) -> None:
        """Remove the Prefect schedule (Prefect deletes its not-yet-started runs), its
        champion pointer, gate lock and stored rows. Its finished jobs stay in /jobs."""
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

    async def run_now(self, schedule: DeploymentSchedule) -> FlowRun:
        spec = JobSpec.model_validate(schedule.parameters["job"])
        ref = schedule.parameters.get("dataset_ref")
        return await self.jobs.submit(
            spec, DatasetRef.model_validate(ref) if ref else None, schedule_id=str(schedule.id)
        )

    async def _drop_unstarted_runs(self, schedule_id: UUID) -> None:
        """Pausing stops new runs: Prefect deletes the runs it created ahead of time, but
        not those already due and not yet picked up (Late); remove those too. Runs handed
        to a worker (Pending) or running finish normally."""
        (scheduled, _) = self._run_filters(schedule_id, [StateType.SCHEDULED])
        filters = await self.jobs._runs_filter(flow_run_filter=scheduled)
        for run in await self.jobs.read_runs(filters, FlowRunSort.EXPECTED_START_TIME_ASC, limit=RUNS_SCAN_LIMIT):
            if run.run_count == 0:
                try:
                    await self.client.delete_flow_run(run.id)
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


def job_parameters(spec: JobSpec, dataset_ref: DatasetRef | None) -> dict[str, Any]:
    parameters: dict[str, Any] = {"job": spec.wire()}
    if dataset_ref is not None:
        parameters["dataset_ref"] = dataset_ref.model_dump(mode="json")
    return parameters


def stored_dataset_url(schedule: DeploymentSchedule) -> str | None:
    ref = (schedule.parameters or {}).get("dataset_ref")
    return ref.get("url") if isinstance(ref, dict) else None
