"""The FastAPI application: `uvicorn api.main:app`."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from prefect.client.orchestration import get_client

from api.errors import install_error_handlers
from api.gateway import JobGateway
from api.identity import TokenCache
from api.limits import BodySizeLimit
from api.openapi import install_openapi
from api.routes import (
    credentials,
    jobs,
    program_batch,
    program_serving,
    programs,
    schedules,
    sweeps,
    system,
    users,
    webhooks,
)
from api.run_events import RunReadModel
from api.stuck_jobs import sweep_forever
from api.sweeps import end_sweeps_forever
from api.webhook_sweep import sweep_deliveries_forever
from dspy_service.prefect_http import quick_retry_httpx_settings
from dspy_service.registry import get_registry
from dspy_service.settings import get_settings


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    problem = get_settings().auth_mode_problem()
    if problem:  # uvicorn logs it and exits non-zero
        raise RuntimeError(problem)
    get_registry()  # the plugins
    # POST /run's checks resolve module and optimizer names in DSPy: import it before
    # serving (~0.5 s), not in the first submission, where every concurrent submission
    # waits on the import lock (bench/first_submit.py).
    importlib.import_module("dspy")
    async with get_client(httpx_settings=quick_retry_httpx_settings()) as client:
        app.state.gateway = JobGateway(client, get_settings())
        gateway = app.state.gateway
        app.state.read_model = RunReadModel(gateway, gateway.run_cache, index=gateway.index)
        loops = [
            asyncio.create_task(app.state.read_model.run_forever()),
            asyncio.create_task(gateway.list_index.run_forever()),
            asyncio.create_task(sweep_forever(app.state.gateway)),
            asyncio.create_task(sweep_deliveries_forever(app.state.gateway)),
            asyncio.create_task(end_sweeps_forever(app.state.gateway)),
        ]
        try:
            yield
        finally:
            for loop in loops:
                loop.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await loop


def install_cors(app: FastAPI, origins_setting: str) -> None:
    """CORS only for the origins DSPY_SERVICE_CORS_ORIGINS lists (comma-separated); none
    listed: no CORS headers at all, so no web page can call the API from a browser.
    Bearer tokens travel in a header, never in cookies: credentials stay off."""
    origins = [origin.strip().rstrip("/") for origin in origins_setting.split(",") if origin.strip()]
    if not origins:
        return
    app.add_middleware(
        CORSMiddleware,
        allow_origins=origins,
        allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
        allow_headers=["Authorization", "Content-Type", "Idempotency-Key"],
        expose_headers=["Retry-After", "WWW-Authenticate"],
    )


def create_app() -> FastAPI:
    settings = get_settings()
    app = FastAPI(
        title="dspy-service",
        version="0.1.0",
        description="DSPy optimization jobs over HTTP; every job is a Prefect flow run.",
        lifespan=lifespan,
    )
    install_cors(app, settings.cors_origins)
    app.add_middleware(
        BodySizeLimit, max_bytes=int(settings.max_request_mb * 1024 * 1024), max_mb=settings.max_request_mb
    )

    app.state.tokens = TokenCache(settings.token_cache_seconds)
    install_error_handlers(app)
    app.include_router(jobs.router)
    app.include_router(system.router)
    app.include_router(schedules.router)
    app.include_router(sweeps.router)
    app.include_router(credentials.router)
    app.include_router(users.router)
    app.include_router(webhooks.router)
    app.include_router(programs.router)
    app.include_router(program_batch.router)
    app.include_router(program_serving.router)
    install_openapi(app)
    return app


app = create_app()
