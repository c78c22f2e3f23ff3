"""GET /queue (authenticated) and GET /health (open, for load balancers).

/health says whether the service can take jobs (status, a detail on failure), which
modules, metrics and optimizers it offers, and whether jobs run sandboxed (`sandbox`: on,
off or unavailable, with `warnings`); nothing about users, jobs or workers (job counts and
workers are behind authentication, in GET /queue).
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from api.deps import GatewayDep
from api.gateway import DeploymentMissing
from api.identity import CurrentUser
from api.pool_status import queue_snapshot
from dspy_service.registry import get_registry
from dspy_service.sandbox_check import SANDBOX_OFF_WARNING, cached_bubblewrap_problem
from dspy_service.settings import ServiceSettings

router = APIRouter()


@router.get("/queue")
async def queue(gateway: GatewayDep, _caller: CurrentUser):
    return await queue_snapshot(gateway)


def unavailable(detail: str) -> JSONResponse:
    return JSONResponse(status_code=503, content={"status": "unavailable", "detail": detail})


@router.get("/health", responses={503: {"description": "Prefect or every worker is down"}})
async def health(gateway: GatewayDep):
    problem = await gateway.client.api_healthcheck()
    if problem is not None:
        return unavailable(f"Prefect API unreachable: {problem}")
    try:
        snapshot = await queue_snapshot(gateway)
    except DeploymentMissing as exc:
        return unavailable(str(exc))
    if not snapshot["workers_alive"]:
        return unavailable(f"no worker online in work pool {snapshot['work_pool']!r}")
    return {"status": "ok", "registered_assets": get_registry().asset_names(), **await sandbox_status(gateway.settings)}


async def sandbox_status(settings: ServiceSettings) -> dict[str, Any]:
    """The configured sandbox mode, and a warning when it is off or bubblewrap does not work
    on this host (workers check it for themselves at start and before every job)."""
    if settings.sandbox == "off":
        return {"sandbox": "off", "warnings": [SANDBOX_OFF_WARNING]}
    problem = await asyncio.to_thread(cached_bubblewrap_problem, settings.sandbox_uid)
    if problem is not None:
        return {"sandbox": "unavailable", "warnings": [f"on the API host: {problem}"]}
    return {"sandbox": "on"}
