"""Create/update the work pool, the optimization deployment and its automations (idempotent).

    python -m deployments.register     # against PREFECT_API_URL
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any
from uuid import UUID

import yaml
from prefect.client.orchestration import PrefectClient, get_client
from prefect.client.schemas.actions import DeploymentUpdate, WorkPoolCreate, WorkPoolUpdate
from prefect.exceptions import ObjectNotFound
from prefect.utilities.callables import parameter_schema
from prefect.workers.process import ProcessWorker

from deployments.automations import ensure_automations
from deployments.job_template import base_job_template
from dspy_service.settings import FLOW_NAME, ServiceSettings, get_settings

PREFECT_YAML = Path(__file__).resolve().parent.parent / "prefect.yaml"


def deployment_definition(path: Path = PREFECT_YAML) -> dict[str, Any]:
    """The single deployment entry of prefect.yaml."""
    config = yaml.safe_load(path.read_text())
    (deployment,) = config["deployments"]
    return deployment


async def ensure_work_pool(client: PrefectClient, settings: ServiceSettings) -> None:
    """A `process` pool whose concurrency limit is the configured number of job slots and
    whose base job template fixes what the worker runs (deployments/job_template.py). An
    existing pool is brought up to date: an older install's pool has Prefect's default
    template, which lets a flow run's `job_variables` choose the command."""
    template = base_job_template()
    try:
        pool = await client.read_work_pool(settings.work_pool)
    except ObjectNotFound:
        await client.create_work_pool(
            WorkPoolCreate(
                name=settings.work_pool,
                type=ProcessWorker.type,
                base_job_template=template,
                concurrency_limit=settings.job_slots,
                description="dspy-service optimization jobs",
            )
        )
        return
    changes: dict[str, Any] = {}
    if pool.concurrency_limit != settings.job_slots:
        changes["concurrency_limit"] = settings.job_slots
    if pool.base_job_template != template:
        changes["base_job_template"] = template
    if changes:
        await client.update_work_pool(settings.work_pool, WorkPoolUpdate(**changes))


async def ensure_deployment(client: PrefectClient, settings: ServiceSettings) -> UUID:
    from flows.optimize import optimize_program

    definition = deployment_definition()
    fields = {
        "entrypoint": definition["entrypoint"],
        "description": definition.get("description"),
        "tags": definition.get("tags") or [],
        "work_pool_name": settings.work_pool,
        "work_queue_name": definition["work_pool"].get("work_queue_name", "default"),
        "job_variables": definition["work_pool"].get("job_variables") or {},
        "parameter_openapi_schema": parameter_schema(optimize_program).model_dump(),
        "enforce_parameter_schema": False,
    }
    try:
        existing = await client.read_deployment_by_name(settings.deployment_full_name)
    except ObjectNotFound:
        flow_id = await client.create_flow_from_name(FLOW_NAME)
        return await client.create_deployment(flow_id=flow_id, name=settings.deployment, **fields)
    # Update in place: re-creating (an upsert) would delete the deployment's schedules,
    # i.e. every /schedules entry, on each `dspy-service up`.
    await client.update_deployment(existing.id, DeploymentUpdate(**fields))
    return existing.id


async def register(settings: ServiceSettings | None = None) -> UUID:
    settings = settings or get_settings()
    async with get_client() as client:
        await ensure_work_pool(client, settings)
        deployment_id = await ensure_deployment(client, settings)
        await ensure_automations(client, deployment_id, settings)
        return deployment_id


def main() -> None:
    deployment_id = asyncio.run(register())
    print(f"registered deployment {get_settings().deployment_full_name} ({deployment_id})")


if __name__ == "__main__":
    main()
