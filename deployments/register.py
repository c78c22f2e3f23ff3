"""Create/update the work pools, the optimization, batch prediction and webhook delivery
deployments and the automations (idempotent).

The batch prediction deployment (flows/batch_predict.py) shares the optimization pool: its
runs go through the same job runtime, sandbox and job slots.

The delivery flow (api/webhook_flow.py) gets a pool of its own (`notify_work_pool`): the
optimization pool's template runs everything through the sandboxed job runtime, and the
delivery is trusted code that needs Prefect credentials. Its parameter schema is written
here (one string, `job_id`) rather than read from the flow, which lives in `api/`.

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
from deployments.job_template import NOTIFY_COMMAND, base_job_template
from dspy_service.settings import BATCH_FLOW_NAME, FLOW_NAME, NOTIFY_FLOW_NAME, ServiceSettings, get_settings

PREFECT_YAML = Path(__file__).resolve().parent.parent / "prefect.yaml"


OPTIMIZE_ENTRYPOINT = "flows.optimize.optimize_program"
BATCH_ENTRYPOINT = "flows.batch_predict.batch_predict"
NOTIFY_ENTRYPOINT = "api.webhook_flow.deliver_job_event"
NOTIFY_PARAMETERS = {
    "type": "object",
    "title": "Parameters",
    "properties": {"job_id": {"type": "string", "title": "job_id", "position": 0}},
    "required": ["job_id"],
}


def deployment_definition(path: Path = PREFECT_YAML, entrypoint: str = OPTIMIZE_ENTRYPOINT) -> dict[str, Any]:
    """The deployment entry of prefect.yaml with this entrypoint."""
    config = yaml.safe_load(path.read_text())
    (deployment,) = [d for d in config["deployments"] if d["entrypoint"] == entrypoint]
    return deployment


async def ensure_work_pool(client: PrefectClient, settings: ServiceSettings) -> None:
    """A `process` pool whose concurrency limit is the configured number of job slots and
    whose base job template fixes what the worker runs (deployments/job_template.py). An
    existing pool is brought up to date: an older install's pool has Prefect's default
    template, which lets a flow run's `job_variables` choose the command."""
    description = "dspy-service optimization jobs"
    await ensure_pool(client, settings.work_pool, base_job_template(), settings.job_slots, description)


async def ensure_pool(
    client: PrefectClient, name: str, template: dict[str, Any], limit: int | None, description: str
) -> None:
    try:
        pool = await client.read_work_pool(name)
    except ObjectNotFound:
        await client.create_work_pool(
            WorkPoolCreate(
                name=name,
                type=ProcessWorker.type,
                base_job_template=template,
                concurrency_limit=limit,
                description=description,
            )
        )
        return
    changes: dict[str, Any] = {}
    if pool.concurrency_limit != limit:
        changes["concurrency_limit"] = limit
    if pool.base_job_template != template:
        changes["base_job_template"] = template
    if changes:
        await client.update_work_pool(name, WorkPoolUpdate(**changes))


async def ensure_deployment(client: PrefectClient, settings: ServiceSettings) -> UUID:
    from flows.optimize import optimize_program

    schema = parameter_schema(optimize_program).model_dump()
    return await upsert_deployment(
        client, deployment_definition(), FLOW_NAME, settings.deployment, settings.work_pool, schema
    )


async def ensure_batch_deployment(client: PrefectClient, settings: ServiceSettings) -> UUID:
    """The batch prediction deployment, on the optimization pool."""
    from flows.batch_predict import batch_predict

    schema = parameter_schema(batch_predict).model_dump()
    definition = deployment_definition(entrypoint=BATCH_ENTRYPOINT)
    return await upsert_deployment(
        client, definition, BATCH_FLOW_NAME, settings.batch_deployment, settings.work_pool, schema
    )


async def ensure_notify_deployment(client: PrefectClient, settings: ServiceSettings) -> UUID:
    """The webhook delivery deployment on its own pool (no concurrency limit: a delivery
    mostly waits)."""
    await ensure_pool(
        client, settings.notify_work_pool, base_job_template(NOTIFY_COMMAND), None, "dspy-service webhook deliveries"
    )
    definition = deployment_definition(entrypoint=NOTIFY_ENTRYPOINT)
    return await upsert_deployment(
        client, definition, NOTIFY_FLOW_NAME, settings.notify_deployment, settings.notify_work_pool, NOTIFY_PARAMETERS
    )


async def upsert_deployment(
    client: PrefectClient,
    definition: dict[str, Any],
    flow_name: str,
    name: str,
    pool: str,
    schema: dict[str, Any],
) -> UUID:
    fields = {
        "entrypoint": definition["entrypoint"],
        "description": definition.get("description"),
        "tags": definition.get("tags") or [],
        "work_pool_name": pool,
        "work_queue_name": definition["work_pool"].get("work_queue_name", "default"),
        "job_variables": definition["work_pool"].get("job_variables") or {},
        "parameter_openapi_schema": schema,
        "enforce_parameter_schema": False,
    }
    try:
        existing = await client.read_deployment_by_name(f"{flow_name}/{name}")
    except ObjectNotFound:
        flow_id = await client.create_flow_from_name(flow_name)
        return await client.create_deployment(flow_id=flow_id, name=name, **fields)
    # Update in place: re-creating (an upsert) would delete the deployment's schedules,
    # i.e. every /schedules entry, on each `dspy-service up`.
    await client.update_deployment(existing.id, DeploymentUpdate(**fields))
    return existing.id


async def register(settings: ServiceSettings | None = None) -> UUID:
    settings = settings or get_settings()
    async with get_client() as client:
        await ensure_work_pool(client, settings)
        deployment_id = await ensure_deployment(client, settings)
        batch_id = await ensure_batch_deployment(client, settings)
        notify_id = await ensure_notify_deployment(client, settings)
        await ensure_automations(client, deployment_id, settings, notify_id, batch_id)
        return deployment_id


def main() -> None:
    deployment_id = asyncio.run(register())
    print(f"registered deployment {get_settings().deployment_full_name} ({deployment_id})")


if __name__ == "__main__":
    main()
