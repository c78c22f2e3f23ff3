"""GET /queue and GET /health."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from api.deps import GatewayDep
from api.gateway import DeploymentMissing
from dspy_service.registry import get_registry

router = APIRouter()


@router.get("/queue")
async def queue(gateway: GatewayDep):
    return await gateway.queue_snapshot()


@router.get("/health", responses={503: {"description": "Prefect or every worker is down"}})
async def health(gateway: GatewayDep):
    problem = await gateway.client.api_healthcheck()
    if problem is not None:
        return JSONResponse(
            status_code=503, content={"status": "unavailable", "detail": f"Prefect API unreachable: {problem}"}
        )
    try:
        snapshot = await gateway.queue_snapshot()
    except DeploymentMissing as exc:
        return JSONResponse(status_code=503, content={"status": "unavailable", "detail": str(exc)})
    if not snapshot["workers_alive"]:
        return JSONResponse(
            status_code=503,
            content={"status": "unavailable", "detail": f"no worker online in work pool {snapshot['work_pool']!r}"},
        )
    return {"status": "ok", "registered_assets": get_registry().asset_names(), "queue": snapshot}
