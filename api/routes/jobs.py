"""POST /run and the /jobs endpoints of the contract."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Header, HTTPException, Query
from fastapi.concurrency import run_in_threadpool

from api import views
from api.deps import GatewayDep, JobRunDep
from api.responses import FastJSONResponse
from dspy_service.preflight import preflight
from dspy_service.schemas import JobRequest
from dspy_service.status import JobStatus
from dspy_service.storage import delete_dataset, save_dataset

router = APIRouter()


@router.post("/run", status_code=201)
async def submit_job(
    request: JobRequest,
    gateway: GatewayDep,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key", max_length=200)] = None,
):
    """Validate without running user code, store the dataset, create the flow run."""
    spec = request.spec()
    await run_in_threadpool(preflight, spec, request.dataset)
    # A dataset_source is read by the job itself at run time; inline rows are stored now.
    dataset_ref = await run_in_threadpool(save_dataset, request.dataset) if request.dataset is not None else None
    try:
        flow_run = await gateway.submit(spec, dataset_ref, idempotency_key)
    except BaseException:
        if dataset_ref is not None:
            delete_dataset(dataset_ref.url)
        raise
    status = await gateway.status_of(flow_run)
    return {
        "job_id": str(flow_run.id),
        "status": status.value,
        "created_at": flow_run.created.isoformat() if flow_run.created else None,
        "username": spec.username,
        "module_name": spec.module_name,
        "optimizer_name": spec.optimizer_name,
    }


@router.get("/jobs")
async def list_jobs(
    gateway: GatewayDep,
    status: JobStatus | None = None,
    username: str | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
):
    runs, compile_started, total = await gateway.list(status=status, username=username, limit=limit, offset=offset)
    items = [views.summary(run, views.list_status(run, compile_started)) for run in runs]
    return FastJSONResponse({"items": items, "total": total, "limit": limit, "offset": offset})


@router.get("/jobs/{job_id}")
async def get_job(flow_run: JobRunDep, gateway: GatewayDep):
    status, logs, result = await asyncio.gather(
        gateway.status_of(flow_run), gateway.job_logs(flow_run), gateway.result(flow_run)
    )
    return FastJSONResponse(views.detail(flow_run, status, logs, result))


@router.get("/jobs/{job_id}/summary")
async def get_job_summary(flow_run: JobRunDep, gateway: GatewayDep):
    return views.summary(flow_run, await gateway.status_of(flow_run))


@router.get("/jobs/{job_id}/logs")
async def get_job_logs(flow_run: JobRunDep, gateway: GatewayDep):
    entries, _ = await gateway.job_logs(flow_run)
    return FastJSONResponse(entries)


@router.get("/jobs/{job_id}/artifact")
async def get_job_artifact(flow_run: JobRunDep, gateway: GatewayDep):
    status = await gateway.status_of(flow_run)
    if status.active:
        raise HTTPException(status_code=409, detail=f"job is {status.value}; the artifact exists after success")
    result = await gateway.result(flow_run)
    if not result or not result.get("program_artifact"):
        raise HTTPException(status_code=404, detail=f"job {flow_run.id} has no artifact (status {status.value})")
    return {"program_artifact": result["program_artifact"]}


@router.post("/jobs/{job_id}/cancel")
async def cancel_job(flow_run: JobRunDep, gateway: GatewayDep):
    status = await gateway.status_of(flow_run)
    if status.terminal:
        raise HTTPException(status_code=409, detail=f"job is already {status.value}")
    await gateway.cancel(flow_run)
    return {"job_id": str(flow_run.id), "status": JobStatus.cancelled.value}


@router.delete("/jobs/{job_id}")
async def delete_job(flow_run: JobRunDep, gateway: GatewayDep):
    status = await gateway.status_of(flow_run)
    if status.active or flow_run.state_name == "Cancelling":
        raise HTTPException(status_code=409, detail=f"job is still {flow_run.state_name}; cancel it first")
    await gateway.delete(flow_run)
    return {"job_id": str(flow_run.id), "deleted": True}
