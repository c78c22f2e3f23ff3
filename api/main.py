"""The FastAPI application: `uvicorn api.main:app`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from prefect.client.orchestration import get_client

from api.errors import install_error_handlers
from api.gateway import JobGateway
from api.routes import jobs, schedules, system
from dspy_service.registry import get_registry
from dspy_service.settings import get_settings


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    get_registry()  # import dspy and the plugins now, not on the first request
    async with get_client() as client:
        app.state.gateway = JobGateway(client, get_settings())
        yield


def create_app() -> FastAPI:
    settings = get_settings()
    app = FastAPI(
        title="dspy-service",
        version="0.1.0",
        description="DSPy optimization jobs over HTTP; every job is a Prefect flow run.",
        lifespan=lifespan,
    )
    app.add_middleware(CORSMiddleware, allow_origins=["*"], allow_methods=["*"], allow_headers=["*"])
    max_bytes = int(settings.max_request_mb * 1024 * 1024)

    @app.middleware("http")
    async def limit_body_size(request: Request, call_next):
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > max_bytes:
            return JSONResponse(
                status_code=413,
                content={"detail": f"request body is {int(length)} bytes; the limit is {max_bytes} bytes "
                         f"({settings.max_request_mb:g} MB, DSPY_SERVICE_MAX_REQUEST_MB)"},
            )
        return await call_next(request)

    install_error_handlers(app)
    app.include_router(jobs.router)
    app.include_router(system.router)
    app.include_router(schedules.router)
    return app


app = create_app()
