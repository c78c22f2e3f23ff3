"""FastAPI dependencies, as `Annotated` aliases the routes declare.

A job or schedule id that names nothing, not one of this deployment's, or an object of
another user (the caller is no admin) answers 404: an id does not reveal that it exists.
"""

from __future__ import annotations

from typing import Annotated, TypeVar

from fastapi import Depends, HTTPException, Request
from prefect.client.schemas.objects import DeploymentSchedule

from api.gateway import JobGateway
from api.identity import Caller, CurrentUser
from api.ownership import run_owner, schedule_owner
from api.prefect_reads import Run
from api.schedule_gateway import ScheduleGateway
from api.submission import Submission
from dspy_service.secret_store import SecretStore
from dspy_service.webhook_store import WebhookStore

Found = TypeVar("Found")


def found(value: Found | None, what: str) -> Found:
    if value is None:
        raise HTTPException(status_code=404, detail=f"{what} not found")
    return value


async def get_gateway(request: Request) -> JobGateway:
    # async: FastAPI runs a plain `def` dependency in its thread pool, a thread hop per request
    return request.app.state.gateway


GatewayDep = Annotated[JobGateway, Depends(get_gateway)]


def owned_job(run: Run | None, caller: Caller, job_id: str) -> Run:
    """The one ownership check of a job id, whether the run was read or kept."""
    return found(run if run is not None and caller.owns(run_owner(run)) else None, f"job {job_id}")


async def get_job_run(job_id: str, gateway: GatewayDep, caller: CurrentUser) -> Run:
    """The run read from Prefect now: for writes, which decide on its current state."""
    return owned_job(await gateway.get(job_id), caller, job_id)


JobRunDep = Annotated[Run, Depends(get_job_run)]


async def get_job_view(job_id: str, request: Request, gateway: GatewayDep, caller: CurrentUser) -> Run:
    """The run from the read model (api/run_events.py): at most read_model_max_age_seconds
    old; for reads only. An app without one reads Prefect."""
    reader = getattr(request.app.state, "read_model", None) or gateway
    return owned_job(await reader.get(job_id), caller, job_id)


JobViewDep = Annotated[Run, Depends(get_job_view)]


async def get_schedule_gateway(gateway: GatewayDep) -> ScheduleGateway:
    return ScheduleGateway(gateway)  # stateless; shares the job gateway's client


ScheduleGatewayDep = Annotated[ScheduleGateway, Depends(get_schedule_gateway)]


async def get_schedule(schedule_id: str, schedules: ScheduleGatewayDep, caller: CurrentUser) -> DeploymentSchedule:
    schedule = await schedules.get(schedule_id)
    owned = schedule is not None and caller.owns(schedule_owner(schedule))
    return found(schedule if owned else None, f"schedule {schedule_id}")


ScheduleDep = Annotated[DeploymentSchedule, Depends(get_schedule)]


async def get_secret_store(gateway: GatewayDep) -> SecretStore:
    return SecretStore(gateway.client)


SecretStoreDep = Annotated[SecretStore, Depends(get_secret_store)]


async def get_submission(gateway: GatewayDep, schedules: ScheduleGatewayDep, secrets: SecretStoreDep) -> Submission:
    return Submission(gateway, schedules, secrets, WebhookStore(gateway.client))


SubmissionDep = Annotated[Submission, Depends(get_submission)]
