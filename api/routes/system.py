"""GET /queue (authenticated) and GET /health (open, for load balancers).

/health says whether the service can take jobs (status, a detail on failure) and which
modules, metrics and optimizers it offers; nothing about users, jobs or workers (job
counts and workers are behind authentication, in GET /queue).
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from api.deps import GatewayDep
from api.gateway import DeploymentMissing
from api.identity import CurrentUser
from dspy_service.registry import get_registry

router = APIRouter()


@router.get("/queue")
async def queue(gateway: GatewayDep, _caller: CurrentUser):
    return await gateway.queue_snapshot()


def unavailable(detail: str) -> JSONResponse:
    return JSONResponse(status_code=503, content={"status": "unavailable", "detail": detail})


@router.get("/health", responses={503: {"description": "Prefect or every worker is down"}})
async def health(gateway: GatewayDep):
    problem = await gateway.client.api_healthcheck()
    if problem is not None:
        return unavailable(f"Prefect API unreachable: {problem}")
    try:
        snapshot = await gateway.queue_snapshot()
    except DeploymentMissing as exc:
        return unavailable(str(exc))
    if not snapshot["workers_alive"]:
        return unavailable(f"no worker online in work pool {snapshot['work_pool']!r}")
    return {"status": "ok", "registered_assets": get_registry().asset_names()}
