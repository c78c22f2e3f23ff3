"""Who owns what, and what a caller may name: the ownership rules of jobs and schedules.

The owner of a job is the user it was submitted as: the run's user tag, which the API
sets (runs Prefect's scheduler creates get theirs when they start, so until then the
job payload's `username` says it, a payload only the API writes). The owner of a schedule
is its stored job's `username`. A body's `username` defaults to the caller; naming
someone else is 403 unless the caller is an admin. Idempotency keys are scoped per owner.

Failures are HTTPException (403) and JobError (400), raised before anything changes.
"""

from __future__ import annotations

from typing import Any

from fastapi import HTTPException
from prefect.client.schemas.objects import DeploymentSchedule

from api.identity import Caller
from api.prefect_reads import Run
from dspy_service.contract import USER_TAG_PREFIX, owner_digest
from dspy_service.errors import JobError
from dspy_service.schemas import JobSpec


def run_owner(run: Run) -> str | None:
    for tag in run.get("tags") or ():
        if isinstance(tag, str) and tag.startswith(USER_TAG_PREFIX):
            return tag[len(USER_TAG_PREFIX) :]
    job = (run.get("parameters") or {}).get("job")
    owner = job.get("username") if isinstance(job, dict) else None
    return owner if isinstance(owner, str) else None


def schedule_owner(schedule: DeploymentSchedule) -> str | None:
    job = (schedule.parameters or {}).get("job")
    owner = job.get("username") if isinstance(job, dict) else None
    return owner if isinstance(owner, str) else None


def forbidden_name(name: str) -> HTTPException:
    return HTTPException(
        status_code=403,
        detail=f"`username` {name!r} is not you: leave it out (it defaults to you); only an admin may act for "
        "another user",
    )


def request_owner(caller: Caller, request: JobSpec) -> str:
    """The owner a POST body asks for: the caller when `username` is left out."""
    if "username" not in request.model_fields_set:
        return caller.username
    if request.username != caller.username and not caller.admin:
        raise forbidden_name(request.username)
    return request.username


def owned_request(caller: Caller, request: Any) -> Any:
    """`request` (a JobRequest or ScheduleRequest) with `username` set to its owner."""
    return request.model_copy(update={"username": request_owner(caller, request)})


def patched_username(caller: Caller, owner: str | None, changes: dict[str, Any]) -> dict[str, Any]:
    """The job fields of a schedule PATCH with `username` pinned to the schedule's owner."""
    wanted = changes.get("username")
    if wanted is not None and wanted != owner:
        if not caller.admin:
            raise forbidden_name(str(wanted))
        raise JobError("a schedule's owner cannot change; create a schedule for that user", field="username")
    if not changes or owner is None:
        return changes
    return {**changes, "username": owner}


def listed_username(caller: Caller, username: str | None) -> str | None:
    """The owner a list request is filtered by: a non-admin sees only their own."""
    if caller.admin:
        return username
    if username is not None and username != caller.username:
        raise forbidden_name(username)
    return caller.username


def scoped_idempotency_key(owner: str, key: str | None) -> str | None:
    """The key Prefect sees: one user's key never names another user's job."""
    return f"{owner_digest(owner)}:{key}" if key else None
