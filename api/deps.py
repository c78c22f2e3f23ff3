"""FastAPI dependencies, as `Annotated` aliases the routes declare."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request
from prefect.client.schemas.objects import DeploymentSchedule, FlowRun

from api.gateway import JobGateway
from api.schedule_gateway import ScheduleGateway
from dspy_service.settings import ServiceSettings, get_settings


async def get_gateway(request: Request) -> JobGateway:
    # async: FastAPI runs a plain `def` dependency in its thread pool, a thread hop per request
    return request.app.state.gateway


GatewayDep = Annotated[JobGateway, Depends(get_gateway)]
SettingsDep = Annotated[ServiceSettings, Depends(get_settings)]


async def get_job_run(job_id: str, gateway: GatewayDep) -> FlowRun:
    flow_run = await gateway.get(job_id)
    if flow_run is None:
        raise HTTPException(status_code=404, detail=f"job {job_id} not found")
    return flow_run


JobRunDep = Annotated[FlowRun, Depends(get_job_run)]


async def get_schedule_gateway(gateway: GatewayDep) -> ScheduleGateway:
    return ScheduleGateway(gateway)  # stateless; shares the job gateway's client


ScheduleGatewayDep = Annotated[ScheduleGateway, Depends(get_schedule_gateway)]


async def get_schedule(schedule_id: str, schedules: ScheduleGatewayDep) -> DeploymentSchedule:
    schedule = await schedules.get(schedule_id)
    if schedule is None:
        raise HTTPException(status_code=404, detail=f"schedule {schedule_id} not found")
    return schedule


ScheduleDep = Annotated[DeploymentSchedule, Depends(get_schedule)]
