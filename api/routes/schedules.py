"""/schedules: recurring optimizations, each a Prefect deployment schedule."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query
from prefect.client.schemas.objects import DeploymentSchedule

from api import schedule_views, views
from api.deps import GatewayDep, ScheduleDep, ScheduleGatewayDep, SubmissionDep
from api.identity import CurrentUser
from api.ownership import listed_username, schedule_owner
from api.responses import FastJSONResponse
from api.schedule_gateway import ScheduleGateway
from api.schedule_models import SchedulePatch, ScheduleRequest
from api.status import JobStatus

router = APIRouter(tags=["schedules"])


async def _detail(schedule: DeploymentSchedule, schedules: ScheduleGateway) -> dict[str, Any]:
    champion, next_run = await asyncio.gather(schedules.champion(schedule.id), schedules.next_run(schedule.id))
    return schedule_views.schedule_detail(schedule, champion, next_run)


@router.post("/schedules", status_code=201)
async def create_schedule(request: ScheduleRequest, submission: SubmissionDep, caller: CurrentUser):
    """Validate the job exactly like POST /run, store inline rows once, create the Prefect schedule."""
    created = await submission.create_schedule(request, caller)
    return schedule_views.schedule_detail(created, champion=None, next_run=None)


@router.get("/schedules")
async def list_schedules(schedules: ScheduleGatewayDep, caller: CurrentUser, username: str | None = None):
    """The caller's schedules newest first (an admin's: everyone's, `username` filters)."""
    owner = listed_username(caller, username)
    found = [s for s in await schedules.list() if owner is None or schedule_owner(s) == owner]
    items = [schedule_views.schedule_view(s) for s in found]
    return {"items": items, "total": len(items)}


@router.get("/schedules/{schedule_id}")
async def get_schedule(schedule: ScheduleDep, schedules: ScheduleGatewayDep):
    return await _detail(schedule, schedules)


@router.patch("/schedules/{schedule_id}")
async def update_schedule(
    patch: SchedulePatch,
    schedule: ScheduleDep,
    schedules: ScheduleGatewayDep,
    submission: SubmissionDep,
    caller: CurrentUser,
):
    """Pause/resume (`active`), rename, change the cadence or job fields; the merged job is
    validated like POST /run (422/400) before anything changes. The owner never changes."""
    return await _detail(await submission.update_schedule(schedule, patch, caller), schedules)


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
    page = await schedules.runs(schedule.id, status=status, limit=limit, offset=offset)
    return FastJSONResponse(views.page(page, limit, offset))


@router.post("/schedules/{schedule_id}/run", status_code=201)
async def run_schedule_now(schedule: ScheduleDep, submission: SubmissionDep, caller: CurrentUser):
    """Start a run of the schedule now (paused schedules too): an ordinary job with its schedule_id."""
    return await submission.run_schedule(schedule, caller)


@router.get("/schedules/{schedule_id}/champion")
async def get_schedule_champion(schedule: ScheduleDep, schedules: ScheduleGatewayDep, gateway: GatewayDep):
    """The schedule's champion job (best run so far, by the champion gate) and its artifact."""
    pointer = await schedules.champion(schedule.id)
    if pointer is None:
        raise HTTPException(status_code=404, detail=f"schedule {schedule.id} has no champion yet")
    run = await gateway.get(pointer["job_id"])
    if run is None:
        raise HTTPException(status_code=404, detail=f"the champion job {pointer['job_id']} was deleted")
    outcome = await gateway.outcome(run)
    return {
        "schedule_id": str(schedule.id),
        "champion": pointer,
        "job": views.summary(run, outcome.status, outcome.message),
        "program_artifact": (outcome.result or {}).get("program_artifact"),
    }
