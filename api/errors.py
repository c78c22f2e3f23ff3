"""Error responses in the contract's shapes: each exception the API lets escape a route
is answered with its documented status and body, never a bare 500."""

from __future__ import annotations

import httpx
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prefect.exceptions import PrefectHTTPStatusError

from api.credentials import CredentialError
from api.gateway import DeploymentMissing
from api.schedule_gateway import ScheduleNameTaken
from dspy_service.errors import JobError
from dspy_service.program_store import AliasInUse, CorruptDocument, ProgramNotFound


def _field_path(loc: tuple) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or "body"


async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
    detail = [
        {"field": _field_path(tuple(error.get("loc", ()))), "message": error.get("msg", ""), "type": error.get("type")}
        for error in exc.errors()
    ]
    return JSONResponse(status_code=422, content={"error": "invalid_request", "detail": detail})


async def job_error(_: Request, exc: JobError) -> JSONResponse:
    content = {"detail": exc.message}
    if exc.field:
        content["field"] = exc.field
    return JSONResponse(status_code=400, content=content)


async def deployment_missing(_: Request, exc: DeploymentMissing) -> JSONResponse:
    return JSONResponse(status_code=503, content={"detail": str(exc)})


async def name_taken(_: Request, exc: ScheduleNameTaken) -> JSONResponse:
    return JSONResponse(status_code=409, content={"detail": str(exc)})


async def credential_error(_: Request, exc: CredentialError) -> JSONResponse:
    return JSONResponse(status_code=exc.status_code, content={"detail": exc.message})


async def program_error(_: Request, exc: Exception) -> JSONResponse:
    """The registry's refusals: 404 (no such program/version/alias/job of yours), 409 (an
    alias points to it), 500 for a stored document that is gone or altered."""
    status = 404 if isinstance(exc, ProgramNotFound) else 409 if isinstance(exc, AliasInUse) else 500
    return JSONResponse(status_code=status, content={"detail": str(exc)})


async def prefect_unreachable(_: Request, exc: Exception) -> JSONResponse:
    """Prefect restarting or down: a temporary 503, not a 500."""
    if isinstance(exc, PrefectHTTPStatusError) and exc.response.status_code < 500:
        return JSONResponse(status_code=500, content={"detail": "internal error talking to the Prefect API"})
    return JSONResponse(
        status_code=503,
        content={"detail": f"the Prefect API is unreachable right now ({type(exc).__name__}); try again shortly"},
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(JobError, job_error)
    app.add_exception_handler(DeploymentMissing, deployment_missing)
    app.add_exception_handler(ScheduleNameTaken, name_taken)
    app.add_exception_handler(CredentialError, credential_error)
    for program_exception in (ProgramNotFound, AliasInUse, CorruptDocument):
        app.add_exception_handler(program_exception, program_error)
    app.add_exception_handler(httpx.TransportError, prefect_unreachable)
    app.add_exception_handler(PrefectHTTPStatusError, prefect_unreachable)
