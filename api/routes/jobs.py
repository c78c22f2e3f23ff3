"""POST /run and the /jobs endpoints of the contract."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Header, HTTPException, Query, Request
from fastapi.responses import Response, StreamingResponse

from api import views
from api.deps import GatewayDep, JobRunDep, JobViewDep, SecretStoreDep, SubmissionDep, found
from api.estimates import estimate_request
from api.event_cursor import CursorError, decode_cursor
from api.identity import CurrentUser
from api.job_events import EventFollower, event_stream
from api.ownership import listed_username
from api.responses import FastJSONResponse
from api.status import JobStatus
from dspy_service.batch_spec import is_batch_job, results_jsonl
from dspy_service.errors import JobError
from dspy_service.schemas import JobRequest

router = APIRouter()


@router.post("/run", status_code=201)
async def submit_job(
    request: JobRequest,
    submission: SubmissionDep,
    caller: CurrentUser,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key", max_length=200)] = None,
):
    """Validate without running user code, store the dataset, create the flow run. The job
    is the caller's (an admin may name another user in `username`)."""
    return await submission.submit_job(request, idempotency_key, caller)


@router.post("/run/estimate")
async def estimate_job(request: JobRequest, caller: CurrentUser, secrets: SecretStoreDep):
    """What the POST /run body would cost: LM calls, tokens and dollars (low / typical /
    ceiling) for compile and the two test evaluations, each with its assumptions. Validated
    like POST /run; runs nothing, stores nothing, calls no LM."""
    return await estimate_request(request, caller, secrets)


@router.get("/jobs")
async def list_jobs(
    gateway: GatewayDep,
    caller: CurrentUser,
    status: JobStatus | None = None,
    username: str | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
):
    """The caller's jobs newest first (an admin's: everyone's, `username` filters)."""
    owner = listed_username(caller, username)
    page = await gateway.list(status=status, username=owner, limit=limit, offset=offset)
    return FastJSONResponse(views.page(page, limit, offset))


@router.get("/jobs/{job_id}")
async def get_job(run: JobViewDep, gateway: GatewayDep):
    outcome, logs = await asyncio.gather(gateway.outcome(run), gateway.job_logs(run))
    return FastJSONResponse(views.detail(run, outcome.status, logs, outcome.result, outcome.message))


@router.get("/jobs/{job_id}/summary")
async def get_job_summary(run: JobViewDep, gateway: GatewayDep):
    outcome = await gateway.outcome(run)
    return FastJSONResponse(views.summary(run, outcome.status, outcome.message))


@router.get("/jobs/{job_id}/logs")
async def get_job_logs(run: JobRunDep, gateway: GatewayDep):
    entries, _ = await gateway.job_logs(run)
    return FastJSONResponse(entries)


@router.get(
    "/jobs/{job_id}/events",
    response_class=StreamingResponse,
    responses={
        200: {"description": "Server-Sent Events until `result`/`error`", "content": {"text/event-stream": {}}},
        400: {
            "description": "Last-Event-ID is not an event id of this stream",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorDetail"}}},
        },
    },
)
async def get_job_events(
    request: Request,
    run: JobRunDep,
    gateway: GatewayDep,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID", max_length=200)] = None,
    last_event_id_param: Annotated[str | None, Query(alias="last_event_id", max_length=200)] = None,
):
    """The job's status changes, progress, logs and usage as they happen, then its summary
    as `result` or `error` (README "Event stream"); resume with `Last-Event-ID`."""
    try:
        after = decode_cursor(last_event_id if last_event_id is not None else last_event_id_param)
    except CursorError as exc:
        raise JobError(str(exc), field="Last-Event-ID") from None
    follower = EventFollower(gateway, run, after)
    return StreamingResponse(
        event_stream(request, follower, gateway.settings.events_heartbeat_seconds),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@router.get(
    "/jobs/{job_id}/artifact",
    responses={200: {"description": "An optimization job's program artifact (JSON); a batch prediction job's "
                     "results, one JSON line per input row", "content": {"application/x-ndjson": {}}}},
)
async def get_job_artifact(run: JobRunDep, gateway: GatewayDep):
    outcome = await gateway.outcome(run)
    if outcome.status.active:
        raise HTTPException(status_code=409, detail=f"job is {outcome.status.value}; the artifact exists after success")
    result = outcome.result
    if is_batch_job((run.get("parameters") or {}).get("job")):
        if not result or not isinstance(result.get("results"), list):
            why = f": {outcome.message}" if outcome.message else ""
            raise HTTPException(
                status_code=404, detail=f"job {run['id']} has no results (status {outcome.status.value}{why})"
            )
        return Response(results_jsonl(result["results"]), media_type="application/x-ndjson")
    kept = None
    if not result and outcome.status in (JobStatus.failed, JobStatus.cancelled):
        result = kept = await gateway.kept_result(run)
    if not result or not result.get("program_artifact"):
        why = f": {outcome.message}" if outcome.message else ""
        raise HTTPException(
            status_code=404, detail=f"job {run['id']} has no artifact (status {outcome.status.value}{why})"
        )
    body = {"program_artifact": result["program_artifact"], "program_source": views.program_source(run)}
    if kept is not None:  # a failed or cancelled job keeps what it compiled, and says why it ended
        flag = "kept_after_cancel" if outcome.status is JobStatus.cancelled else "kept_after_failure"
        body[flag] = {
            "message": views.status_message(run, outcome.status),
            "details": {k: v for k, v in (kept.get("details") or {}).items() if k != "failed"},
        }
    return body


@router.post("/jobs/{job_id}/cancel")
async def cancel_job(run: JobRunDep, gateway: GatewayDep):
    status = await gateway.status_of(run)
    if status.terminal:
        raise HTTPException(status_code=409, detail=f"job is already {status.value}")
    if not await gateway.cancel(run):  # it ended between our read and the cancel
        ended = found(await gateway.get(run["id"]), f"job {run['id']}")
        raise HTTPException(status_code=409, detail=f"job is already {(await gateway.status_of(ended)).value}")
    return {"job_id": run["id"], "status": JobStatus.cancelled.value}


@router.delete("/jobs/{job_id}")
async def delete_job(run: JobRunDep, gateway: GatewayDep):
    status = await gateway.status_of(run)
    if status.active or run.get("state_name") == "Cancelling":
        raise HTTPException(status_code=409, detail=f"job is still {run.get('state_name')}; cancel it first")
    await gateway.delete(run)
    return {"job_id": run["id"], "deleted": True}
