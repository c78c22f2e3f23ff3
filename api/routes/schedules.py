"""/schedules: recurring optimizations, each a Prefect deployment schedule."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from prefect.client.schemas.objects import DeploymentSchedule
from prefect.client.schemas.schedules import CronSchedule, IntervalSchedule
from pydantic import ValidationError

from api import schedule_views, views
from api.deps import GatewayDep, ScheduleDep, ScheduleGatewayDep
from api.schedule_gateway import ScheduleNameTaken
from dspy_service.preflight import preflight
from dspy_service.schedules import SchedulePatch, ScheduleRequest, merge_job
from dspy_service.schemas import DatasetRef, JobRequest
from dspy_service.status import JobStatus
from dspy_service.storage import delete_dataset, load_dataset, save_dataset

router = APIRouter(tags=["schedules"])


@router.post("/schedules", status_code=201)
async def create_schedule(request: ScheduleRequest, schedules: ScheduleGatewayDep):
    """Validate the job exactly like POST /run, store inline rows once, create the Prefect schedule."""
    spec = request.spec()
    await run_in_threadpool(preflight, spec, request.dataset)
    dataset_ref = await run_in_threadpool(save_dataset, request.dataset) if request.dataset is not None else None
    try:
        created = await schedules.create(
            spec, dataset_ref, request.prefect_schedule(), name=request.name, active=request.active
        )
    except BaseException as exc:
        if dataset_ref is not None:
            delete_dataset(dataset_ref.url)
        if isinstance(exc, ScheduleNameTaken):
            raise HTTPException(status_code=409, detail=str(exc)) from None
        raise
    return schedule_views.schedule_detail(created, champion=None, next_run=None)


@router.get("/schedules")
async def list_schedules(schedules: ScheduleGatewayDep):
    items = [schedule_views.schedule_view(s) for s in await schedules.list()]
    return {"items": items, "total": len(items)}


@router.get("/schedules/{schedule_id}")
async def get_schedule(schedule: ScheduleDep, schedules: ScheduleGatewayDep):
    champion, next_run = await asyncio.gather(schedules.champion(schedule.id), schedules.next_run(schedule.id))
    return schedule_views.schedule_detail(schedule, champion, next_run)


def _new_cadence(schedule: DeploymentSchedule, patch: SchedulePatch) -> CronSchedule | IntervalSchedule | None:
    current = schedule.schedule
    timezone = getattr(current, "timezone", None)
    if patch.cron is not None or patch.interval_seconds is not None:
        return patch.prefect_schedule(timezone=timezone)
    if patch.timezone is None:
        return None
    if isinstance(current, CronSchedule):
        return CronSchedule(cron=current.cron, timezone=patch.timezone, day_or=current.day_or)
    if isinstance(current, IntervalSchedule):
        return IntervalSchedule(interval=current.interval, timezone=patch.timezone)
    raise HTTPException(status_code=400, detail="this schedule's cadence is not cron or interval; give `cron` or "
                        "`interval_seconds` with the timezone")


@router.patch("/schedules/{schedule_id}")
async def update_schedule(patch: SchedulePatch, schedule: ScheduleDep, schedules: ScheduleGatewayDep):
    """Pause/resume (`active`), rename, change the cadence or job fields; the merged job is
    validated like POST /run (422/400) before anything changes."""
    cadence = _new_cadence(schedule, patch)
    spec, dataset_ref, new_ref = None, None, None
    changes = patch.job_fields()
    if changes:
        stored_ref = (schedule.parameters or {}).get("dataset_ref")
        merged, keep_rows = merge_job((schedule.parameters or {}).get("job") or {}, stored_ref, changes)
        if keep_rows:
            dataset_ref = DatasetRef.model_validate(stored_ref)
            merged["dataset"] = await run_in_threadpool(load_dataset, dataset_ref)  # to validate the merge
        try:
            request = JobRequest.model_validate(merged)
        except ValidationError as exc:
            raise RequestValidationError(exc.errors()) from None
        spec = request.spec()
        await run_in_threadpool(preflight, spec, request.dataset)
        if request.dataset is not None and not keep_rows:
            dataset_ref = new_ref = await run_in_threadpool(save_dataset, request.dataset)
    try:
        updated = await schedules.update(
            schedule, active=patch.active, cadence=cadence, name=patch.name, spec=spec, dataset_ref=dataset_ref
        )
    except BaseException as exc:
        if new_ref is not None:
            delete_dataset(new_ref.url)
        if isinstance(exc, ScheduleNameTaken):
            raise HTTPException(status_code=409, detail=str(exc)) from None
        raise
    champion, next_run = await asyncio.gather(schedules.champion(updated.id), schedules.next_run(updated.id))
    return schedule_views.schedule_detail(updated, champion, next_run)


@router.delete("/schedules/{schedule_id}")
async def delete_schedule(schedule: ScheduleDep, schedules: ScheduleGatewayDep):
    """Remove the schedule; its past jobs stay in /jobs (with their schedule_id)."""
    await schedules.delete(schedule)
    return {"schedule_id": str(schedule.id), "deleted": True}


@router.get("/schedules/{schedule_id}/runs")
async def list_schedule_runs(
    schedule: ScheduleDep,
    schedules: ScheduleGatewayDep,
    status: JobStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
):
    """The schedule's jobs, newest first, paginated like GET /jobs (includes runs the
    scheduler has created ahead of time, as `pending`)."""
    runs, compile_started, total = await schedules.runs(schedule.id, status=status, limit=limit, offset=offset)
    items = [views.summary(run, views.list_status(run, compile_started)) for run in runs]
    return {"items": items, "total": total, "limit": limit, "offset": offset}


@router.post("/schedules/{schedule_id}/run", status_code=201)
async def run_schedule_now(schedule: ScheduleDep, schedules: ScheduleGatewayDep, gateway: GatewayDep):
    """Start a run of the schedule now (paused schedules too): an ordinary job with its schedule_id."""
    if not (schedule.parameters or {}).get("job"):
        raise HTTPException(status_code=400, detail="this schedule has no job payload (made outside dspy-service?)")
    flow_run = await schedules.run_now(schedule)
    status = await gateway.status_of(flow_run)
    spec = views.job_spec_of(flow_run)
    return {
        "job_id": str(flow_run.id),
        "status": status.value,
        "created_at": flow_run.created.isoformat() if flow_run.created else None,
        "username": spec.username if spec else None,
        "module_name": spec.module_name if spec else None,
        "optimizer_name": spec.optimizer_name if spec else None,
        "schedule_id": str(schedule.id),
    }


@router.get("/schedules/{schedule_id}/champion")
async def get_schedule_champion(schedule: ScheduleDep, schedules: ScheduleGatewayDep, gateway: GatewayDep):
    """The schedule's champion job (best run so far, by the champion gate) and its artifact."""
    pointer = await schedules.champion(schedule.id)
    if pointer is None:
        raise HTTPException(status_code=404, detail=f"schedule {schedule.id} has no champion yet")
    flow_run = await gateway.get(pointer["job_id"])
    if flow_run is None:
        raise HTTPException(status_code=404, detail=f"the champion job {pointer['job_id']} was deleted")
    status, result = await asyncio.gather(gateway.status_of(flow_run), gateway.result(flow_run))
    return {
        "schedule_id": str(schedule.id),
        "champion": pointer,
        "job": views.summary(flow_run, status),
        "program_artifact": (result or {}).get("program_artifact"),
    }
