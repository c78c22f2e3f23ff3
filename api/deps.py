"""FastAPI dependencies, as `Annotated` aliases the routes declare."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request
from prefect.client.schemas.objects import FlowRun

from api.gateway import JobGateway
from dspy_service.settings import ServiceSettings, get_settings


def get_gateway(request: Request) -> JobGateway:
    return request.app.state.gateway


GatewayDep = Annotated[JobGateway, Depends(get_gateway)]
SettingsDep = Annotated[ServiceSettings, Depends(get_settings)]


async def get_job_run(job_id: str, gateway: GatewayDep) -> FlowRun:
    flow_run = await gateway.get(job_id)
    if flow_run is None:
        raise HTTPException(status_code=404, detail=f"job {job_id} not found")
    return flow_run


JobRunDep = Annotated[FlowRun, Depends(get_job_run)]
